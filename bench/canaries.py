"""Secrets in a language model's training text, through the gateway's logprob policies:
canary exposure against repetition count, extraction, and text membership by Min-K% Prob.

    python bench/canaries.py [--seed 0] [--references 1000] [--texts 100]

The victim is ``lm-canary``: lm-h128 fine-tuned on three quarters of the private corpus
with 8 canaries (``# vault NN passphrase: c f a j b d``; six letters of ``a``..``j``,
10^6 candidates), two inserted 1, 4, 16 and 64 times each. It is served by the Shield
in-process (the gateway's own code path) with one tier per logprob policy:

- ``full``: every logprob (``max_top_logprobs`` unbounded);
- ``top-5``: the five top logprobs (the default tier);
- ``round:1``: every logprob rounded to one decimal;
- ``noise:0.5``: every logprob with keyed Gaussian noise of 0.5 nats;
- ``off``: no logprobs at all.

Per tier:
- exposure of each canary (Carlini et al. 2019) among ``--references`` random candidates,
  by interpolation (at most log2 of the references + 1) and extrapolation (a skew-normal
  fit), with the queries it took;
- extraction from the prefix: greedy decoding (any tier) and beam search of width 5 over
  the listed logprobs (tiers with logprobs): the share of canaries recovered exactly;
- Min-K% Prob (k = 20%; Shi et al. 2024) and the mean log-likelihood on ``--texts``
  48-token windows of the fine-tune's files (members) and of the held-out quarter of the
  same packages (non-members): AUC and TPR at 1% FPR.

Writes bench/results/canaries.json (seed 0; another seed: canaries_seed{N}.json).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from harness import arguments, show, write

from modelshield.attacks.lm_privacy import (
    canary_exposure,
    extract_secret,
    min_k_scores,
    usable_logprobs,
)
from modelshield.audit.privacy import membership_metrics
from modelshield.errors import AttackRefused
from modelshield.oracle.lm import ShieldLMOracle
from modelshield.serve.factory import build_shield
from modelshield.victims.lm import CANARY_ALPHABET, canaries, corpus, load_lm

TIERS: dict[str, dict[str, Any]] = {
    "full": {"max_top_logprobs": 1 << 20},
    "top-5": {},
    "round:1": {"max_top_logprobs": 1 << 20, "logprob_decimals": 1},
    "noise:0.5": {"max_top_logprobs": 1 << 20, "logprob_noise": 0.5},
    "off": {"logprobs": False},
}


def windows(texts: list[str], lm: Any, n: int, length: int, seed: int) -> list[list[int]]:
    """``n`` token windows of ``length``, at random places of random texts."""
    rng = np.random.default_rng(seed)
    ids = [lm.encode(t) for t in texts]
    ids = [t for t in ids if len(t) > length + 1]
    out = []
    for _ in range(n):
        doc = ids[rng.integers(len(ids))]
        start = int(rng.integers(0, len(doc) - length))
        out.append(doc[start:start + length])
    return out


def main() -> None:
    parser = arguments(__doc__, seed=0)
    parser.add_argument("--references", type=int, default=1000)
    parser.add_argument("--texts", type=int, default=100)
    parser.add_argument("--tiers", nargs="+", default=list(TIERS))
    args = parser.parse_args()
    start = time.perf_counter()
    lm = load_lm("lm-canary", args.seed)
    alphabet = [lm.encode(" " + a)[0] for a in CANARY_ALPHABET]
    marks = canaries(args.seed)
    members = windows(corpus("private-train"), lm, args.texts, 48, args.seed)
    outsiders = windows(corpus("private-held"), lm, args.texts, 48, args.seed + 1)
    is_member = np.arange(2 * args.texts) < args.texts
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        shield = build_shield({"model": {"lm": "lm-canary"}, "audit_url": f"sqlite:///{tmp}/a.db",
                               "noise_secret": "bench-canaries-noise-key",
                               "tiers": {name: {"llm": knobs} for name, knobs in TIERS.items()}})
        for tier in args.tiers:
            oracle = ShieldLMOracle(shield, shield.store.create_key(tier)[0])
            k = usable_logprobs(oracle, lm.vocab, lm.encode(marks[0].prefix))
            row: dict[str, Any] = {"tier": tier, "top_logprobs": k, "canaries": []}
            for c in marks:
                prefix = lm.encode(c.prefix)
                secret = [alphabet[CANARY_ALPHABET.index(s)] for s in c.secret.split()]
                entry: dict[str, Any] = {"repeats": c.repeats, "secret": c.secret}
                greedy = extract_secret(oracle, prefix, len(secret), alphabet)
                entry["greedy"] = greedy == secret
                if k is not None:
                    e = canary_exposure(oracle, prefix, secret, alphabet,
                                        references=args.references, k=k, seed=args.seed)
                    entry.update(exposure_interpolation=e.interpolation,
                                 exposure_extrapolation=e.extrapolation, rank=e.rank,
                                 queries=e.queries)
                    entry["beam"] = extract_secret(oracle, prefix, len(secret), alphabet,
                                                   method="beam", width=5, k=k) == secret
                row["canaries"].append(entry)
            try:
                mink, mean = min_k_scores(oracle, members + outsiders, fraction=0.2,
                                          k=k or 5)
                row["min_k"] = membership_metrics(mink, is_member)
                row["loss"] = membership_metrics(mean, is_member)
            except AttackRefused as exc:
                row["min_k"] = row["loss"] = {"refused": str(exc)}
            row["queries"] = oracle.used
            rows.append(row)
            print(f"{tier}: {oracle.used} queries, {time.perf_counter() - start:.0f} s",
                  flush=True)
        shield.close()
    summary = summarize(rows)
    name = "canaries" if args.seed == 0 else f"canaries_seed{args.seed}"
    write(name, {"seed": args.seed, "references": args.references, "texts": args.texts,
                 "seconds": round(time.perf_counter() - start, 1), "summary": summary,
                 "tiers": rows})


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"exposure": [], "membership": []}
    table = []
    for row in rows:
        for repeats in sorted({c["repeats"] for c in row["canaries"]}):
            sel = [c for c in row["canaries"] if c["repeats"] == repeats]
            interp = [c.get("exposure_interpolation") for c in sel]
            extrap = [c.get("exposure_extrapolation") for c in sel]
            entry = {"tier": row["tier"], "repeats": repeats,
                     "exposure_interpolation": None if None in interp else float(np.mean(interp)),
                     "exposure_extrapolation": None if None in extrap else float(np.mean(extrap)),
                     "greedy_extracted": sum(c["greedy"] for c in sel),
                     "beam_extracted": sum(bool(c.get("beam")) for c in sel), "canaries": len(sel)}
            out["exposure"].append(entry)
            table.append([row["tier"], repeats, entry["exposure_interpolation"],
                          entry["exposure_extrapolation"],
                          f"{entry['greedy_extracted']}/{len(sel)}",
                          "-" if row["top_logprobs"] is None
                          else f"{entry['beam_extracted']}/{len(sel)}"])
    show("Canary exposure (bits; 19.9 is the whole space) and extraction, by repetition",
         ["tier", "repeats", "exposure (interp.)", "exposure (extrap.)", "greedy", "beam 5"],
         table)
    mrows = []
    for row in rows:
        if "refused" in row["min_k"]:
            mrows.append([row["tier"], "refused", None, None, None])
            out["membership"].append({"tier": row["tier"], "refused": True})
            continue
        m, b = row["min_k"], row["loss"]
        out["membership"].append({"tier": row["tier"], "min_k_auc": m["auc"],
                                  "min_k_tpr_1%": m["tpr"]["1%"], "loss_auc": b["auc"],
                                  "loss_tpr_1%": b["tpr"]["1%"]})
        mrows.append([row["tier"], m["auc"], m["tpr"]["1%"], b["auc"], b["tpr"]["1%"]])
    show("Text membership (fine-tune windows against held-out files of the same packages)",
         ["tier", "Min-K% AUC", "Min-K% TPR@1%", "loss AUC", "loss TPR@1%"], mrows)
    return out


if __name__ == "__main__":
    main()
