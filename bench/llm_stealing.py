"""Logit and projection stealing (Carlini et al. 2024) against the built-in language models,
through the Shield with the OpenAI-style tier policies.

    python bench/llm_stealing.py [--sizes 64 128 256 512] [--seed 0] [--skip-bias-search]
                                 [--skip-precision] [--vectors 512] [--name llm_stealing]

1. Hidden size of every model, from full logprobs and from top-5 logprobs + logit bias;
   queries per logit vector beside the paper's method (one reference query, then k-1
   logits per query: 1 + ceil((V-1)/(k-1)) queries for a full vector).
2. The output projection W from full logprobs: RMS error after the best hidden x hidden
   alignment, against the true W, with no policy and under each rounding / noise policy.
   Then a control on what limits that error: the same attack with the victim computing in
   float64, and in float64 plus noise as large as float32's rounding of the logprobs.
3. The vendors' March 2024 fix (logit bias does not change logprobs): the top-k + bias
   variant fails and says so. With logprobs off: the logprob-free bisection, its cost per
   logit, and the hidden size it finds, on lm-tiny (hidden 32): at about 31 queries a logit
   it takes minutes even there.

Writes bench/results/llm_stealing.json.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from harness import arguments, console, show, write

from modelshield.attacks.logit_stealing import (
    HiddenSize,
    Projection,
    VariantBlocked,
    alignment_error,
    bisection_steps,
)
from modelshield.defenses.shield import Shield
from modelshield.oracle.lm import ShieldLMOracle
from modelshield.serve.factory import build_shield

POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("none", {}), ("round:6", {"logprob_decimals": 6}), ("round:4", {"logprob_decimals": 4}),
    ("round:3", {"logprob_decimals": 3}), ("round:2", {"logprob_decimals": 2}),
    ("round:1", {"logprob_decimals": 1}), ("noise:1e-4", {"logprob_noise": 1e-4}),
    ("noise:1e-3", {"logprob_noise": 1e-3}), ("noise:1e-2", {"logprob_noise": 1e-2}),
]


def shield_for(name: str, tmp: str, noise: float | None = None) -> Shield:
    full = {"max_top_logprobs": 1 << 20}
    tiers: dict[str, Any] = {"top5": {}, "fixed": {"llm": {"bias_affects_logprobs": False}},
                             "nolp": {"llm": {"logprobs": False}}}
    for label, knobs in POLICIES:
        tiers[label] = {"llm": {**full, **knobs}}
    if noise is not None:
        tiers["matched"] = {"llm": {**full, "logprob_noise": noise}}
    db = f"sqlite:///{tmp}/{name}{'' if noise is None else '-matched'}.db"
    return build_shield({"model": {"lm": name}, "audit_url": db, "tiers": tiers})


def oracle(shield: Shield, tier: str) -> ShieldLMOracle:
    return ShieldLMOracle(shield, shield.store.create_key(tier)[0])


def hidden_rows(shield: Shield, seed: int) -> list[dict[str, Any]]:
    h, v = shield.lm.hidden, shield.lm.vocab
    rows = []
    for variant, tier in (("full", "none"), ("topk-bias", "top5")):
        start = time.perf_counter()
        e = HiddenSize(variant=variant, random_state=seed).run(oracle(shield, tier), 10_000_000)
        rows.append({"model": shield.spec.name, "hidden": h, "variant": variant,
                     "found": e.hidden_size, "exact": e.hidden_size == h,
                     "vectors": e.info["vectors"], "tokens_read": e.info["tokens_read"],
                     "queries": e.queries, "requests": e.requests,
                     "queries_per_vector": e.info["queries_per_vector"],
                     "paper_queries_per_full_vector": 1 if variant == "full"
                     else 1 + math.ceil((v - 1) / 4),
                     "drop": e.info["drop"], "seconds": time.perf_counter() - start})
    return rows


def projection_rows(shield: Shield, seed: int, vectors: int) -> list[dict[str, Any]]:
    h = shield.lm.hidden
    rows = []
    for label, _ in POLICIES:
        found = Projection(variant="full", random_state=seed, vectors=vectors)
        try:
            e = found.run(oracle(shield, label), 1_000_000)
            detected: int | None = e.hidden_size
        except Exception:  # the hidden size is not visible under this policy
            detected = None
        given = Projection(variant="full", random_state=seed, hidden=h, vectors=vectors).run(
            oracle(shield, label), 1_000_000)
        assert given.W is not None
        err = alignment_error(given.W, shield.lm.W)
        rows.append({"model": shield.spec.name, "policy": label, "hidden_found": detected,
                     "vectors": given.info["vectors"], "rms": err["rms"],
                     "relative_rms": err["relative_rms"]})
    return rows


def precision_rows(name: str, tmp: str, seed: int, vectors: int) -> list[dict[str, Any]]:
    """What limits W's error from full logprobs: the victim's own float32 arithmetic.

    The same attack on the same victim three ways: as built (float32); computing in
    float64; and in float64 with Gaussian noise on the logprobs as large as float32's
    rounding of them (measured here on random prompts). If the float64 run is exact and the
    matched-noise run lands where float32 does, the float32 error is that rounding,
    amplified by how unevenly the hidden states fill their space.
    """
    shield = shield_for(name, tmp)
    lm, h = shield.lm, shield.lm.hidden
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, lm.vocab, size=(128, 8)).tolist()

    def centred(z: np.ndarray) -> np.ndarray:
        lp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) \
            - z.max(1, keepdims=True)
        return lp - lp.mean(1, keepdims=True)

    used: list[int] = []

    def run(s: Shield, tier: str) -> float:
        e = Projection(variant="full", random_state=seed, hidden=h, vectors=vectors).run(
            oracle(s, tier), 1_000_000)
        assert e.W is not None
        used.append(int(e.info["vectors"]))
        return alignment_error(e.W, lm.W)["relative_rms"]

    err32 = run(shield, "none")
    lp32 = centred(lm.next_logits(prompts).astype(np.float64))
    lm.set_precision("float64")
    lp64 = centred(lm.next_logits(prompts))
    sigma = float(np.sqrt(np.mean((lp32 - lp64) ** 2)))
    err64 = run(shield, "none")
    shield.close()
    matched = shield_for(name, tmp, noise=sigma)
    matched.lm.set_precision("float64")
    err_matched = run(matched, "matched")
    matched.close()
    return [{"model": name, "vectors": max(used), "float32_rounding_rms": sigma,
             "relative_rms_float32": err32, "relative_rms_float64": err64,
             "relative_rms_float64_matched_noise": err_matched}]


def defended_rows(shield: Shield, seed: int) -> list[dict[str, Any]]:
    try:
        HiddenSize(variant="topk-bias", random_state=seed).run(oracle(shield, "fixed"), 10**6)
        return [{"case": "bias does not change logprobs", "model": shield.spec.name,
                 "outcome": "NOT blocked"}]
    except VariantBlocked as exc:
        return [{"case": "bias does not change logprobs", "model": shield.spec.name,
                 "outcome": str(exc)}]


def bias_search_rows(shield: Shield, seed: int) -> list[dict[str, Any]]:
    tol, tokens = 1e-7, 48
    start = time.perf_counter()
    o = oracle(shield, "nolp")
    vectors = 0
    try:
        e = HiddenSize(variant="auto", n_tokens=tokens, prompts_per_round=16, tolerance=tol,
                       random_state=seed).run(o, 10**7)
        found: int | None = e.hidden_size
        blocked = e.info["blocked_variants"]
        vectors = e.info["vectors"]
    except VariantBlocked as exc:
        found, blocked = None, {"all": str(exc)}
    return [{"case": "logprobs off: logprob-free bisection", "model": shield.spec.name,
             "hidden": shield.lm.hidden, "found": found, "queries": o.used, "vectors": vectors,
             "tokens_read": tokens,
             "queries_per_logit": o.used / (vectors * tokens) if vectors else None,
             "bisection_steps_per_logit": bisection_steps(100, tol),
             "blocked_variants": blocked, "seconds": time.perf_counter() - start}]


def main() -> None:
    parser = arguments(__doc__, seed=0)
    parser.add_argument("--sizes", type=int, nargs="*", default=[64, 128, 256, 512])
    parser.add_argument("--vectors", type=int, default=512,
                        help="full-logprob vectors stacked to recover W")
    parser.add_argument("--skip-bias-search", action="store_true")
    parser.add_argument("--skip-precision", action="store_true",
                        help="skip the float32 / float64 / matched-noise control on W")
    parser.add_argument("--name", default="llm_stealing",
                        help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    hidden, proj, defended, precision = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            name = f"lm-h{size}"
            console.print(f"building / loading {name} …")
            shield = shield_for(name, tmp)
            hidden += hidden_rows(shield, args.seed)
            proj += projection_rows(shield, args.seed, args.vectors)
            if size == args.sizes[0]:
                defended = defended_rows(shield, args.seed)
            shield.close()
            if not args.skip_precision:
                precision += precision_rows(name, tmp, args.seed, args.vectors)
        if not args.skip_bias_search:
            console.print("logprob-free bisection on lm-tiny …")
            shield = shield_for("lm-tiny", tmp)
            defended += bias_search_rows(shield, args.seed)
            shield.close()
    show("hidden size", ["model", "variant", "found", "exact", "vectors", "tokens read",
                         "queries", "requests", "queries / vector", "paper: / full vector",
                         "drop", "s"],
         [[r["model"], r["variant"], r["found"], r["exact"], r["vectors"], r["tokens_read"],
           r["queries"], r["requests"], r["queries_per_vector"],
           r["paper_queries_per_full_vector"], r["drop"], r["seconds"]] for r in hidden])
    show("output projection W from full logprobs (hidden size given for the error)",
         ["model", "policy", "hidden found", "vectors", "RMS", "relative RMS"],
         [[r["model"], r["policy"], r["hidden_found"], r["vectors"], r["rms"],
           r["relative_rms"]] for r in proj])
    if precision:
        show("what limits W's error: the victim's arithmetic (relative RMS after alignment)",
             ["model", "vectors", "float32 rounding of logprobs (RMS)", "victim in float32",
              "victim in float64", "float64 + noise of that RMS"],
             [[r["model"], r["vectors"], r["float32_rounding_rms"], r["relative_rms_float32"],
               r["relative_rms_float64"], r["relative_rms_float64_matched_noise"]]
              for r in precision])
    for d in defended:
        console.print(d, highlight=False)
    write(args.name, {"seed": args.seed, "args": vars(args), "hidden": hidden, "projection": proj,
                      "precision": precision, "defended": defended})


if __name__ == "__main__":
    main()
