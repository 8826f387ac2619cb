"""The text watermark on served completions (Kirchenbauer et al., ICML 2023): how soon it
shows, how often text written without it is flagged, what it costs honest users, and
whether it shows in a model fine-tuned on watermarked completions (radioactivity, Sander
et al., NeurIPS 2024).

    python bench/text_watermark.py            # about 25 minutes on 2 cores
    python bench/text_watermark.py --radioactivity-only --clone-tokens 16000

Victim: lm-tuned behind a Shield with two tiers, one watermarking (gamma 0.25, delta 2)
and one not. Prompts are 16-token windows of the public corpus; completions are sampled.

* **Detection.** z and p of each text at 50, 100 and 200 tokens (two completions of 100).
* **False positives.** Every 200-token window of the three corpora (text nobody generated)
  and the plain tier's completions: the share at p <= 1e-4 and at z >= 4.
* **Cost.** Perplexity of each tier's completions under the unwatermarked model.
* **Radioactivity.** The project's output-cloning attack (public base student, 2,000
  queries of 32 tokens) through each tier. Each clone is then tested two ways, on the
  distinct token pairs it produces: writing (64 sampled tokens after each of 400 held-out
  prompts) and reading (its most likely next token at every position of 1,000 held-out
  windows, paired with the token before; Sander et al.'s open-model test). Controls: the
  clone of the plain tier, and the public base untouched.

Writes bench/results/text_watermark.json.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from harness import arguments, console, show, write

sys.path.insert(0, str(Path(__file__).parent.parent))

from modelshield.answer import LMRequest
from modelshield.attacks.lm_cloning import clone_lm
from modelshield.defenses.textmark import TextWatermark
from modelshield.oracle.lm import ShieldLMOracle
from modelshield.serve.factory import build_shield
from modelshield.victims.lm import corpus, load_lm, token_stream

SECRET = "bench-text-watermark-secret-0123"
GAMMA, DELTA = 0.25, 2.0


def windows(stream: np.ndarray, n: int, length: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(stream) - length, n)
    return [stream[s:s + length].tolist() for s in starts]


def complete(shield: Any, key: str, prompts: list[list[int]], tokens: int, n: int,
             temperature: float, seed: int) -> list[list[list[int]]]:
    """For each prompt, ``n`` completions of ``tokens`` tokens."""
    out = []
    for start in range(0, len(prompts), 16):
        chunk = prompts[start:start + 16]
        choices, _ = shield.handle_completion(key, LMRequest(
            prompts=chunk, max_tokens=tokens, temperature=temperature, n=n, seed=seed + start))
        per: list[list[list[int]]] = [[] for _ in chunk]
        for c in choices:
            per[c.prompt_index].append(c.tokens)
        out.extend(per)
    return out


def perplexity(lm: Any, prompts: list[list[int]], completions: list[list[int]]) -> float:
    nll, n = 0.0, 0
    for p, c in zip(prompts, completions, strict=True):
        seq = p + c
        z = lm.sequence_logits(seq).astype(np.float64)
        m = z.max(axis=1, keepdims=True)
        lp = z - (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))
        for i in range(len(p), len(seq)):
            nll -= lp[i - 1, seq[i]]
            n += 1
    return float(np.exp(nll / max(n, 1)))


def student_pairs(student: Any, prompts: list[list[int]], tokens: int, seed: int
                  ) -> set[tuple[int, int]]:
    """The distinct (previous, next) token pairs a model writes after each prompt."""
    import torch

    torch.manual_seed(seed)
    pairs: set[tuple[int, int]] = set()
    with torch.no_grad():
        for start in range(0, len(prompts), 32):
            ids = torch.tensor(prompts[start:start + 32])
            out = student.generate(ids, do_sample=True, temperature=1.0, top_k=0,
                                   max_new_tokens=tokens, pad_token_id=0,
                                   attention_mask=torch.ones_like(ids))
            for row in out.tolist():
                gen = row[ids.shape[1] - 1:]
                pairs.update(itertools.pairwise(gen))
    return pairs


def reading_pairs(student: Any, texts: list[list[int]]) -> set[tuple[int, int]]:
    """Reading mode: the model reads texts written without the key, and at every position
    its most likely next token is paired with the token before it."""
    import torch

    pairs: set[tuple[int, int]] = set()
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            ids = torch.tensor(texts[start:start + 32])
            top = student(input_ids=ids).logits.argmax(-1)
            for row, pred in zip(ids.tolist(), top.tolist(), strict=True):
                pairs.update(zip(row, pred, strict=True))
    return pairs


def main() -> None:
    ap = arguments(__doc__.split("\n")[0], seed=0)
    ap.add_argument("--texts", type=int, default=64, help="texts per tier and temperature")
    ap.add_argument("--clone-tokens", type=int, default=64000)
    ap.add_argument("--radioactivity-only", action="store_true",
                    help="only the clones (for another --clone-tokens); writes "
                         "text_watermark_radioactivity_TOKENS.json")
    args = ap.parse_args()
    base = load_lm("lm-h128", args.seed)
    tok = base.tokenizer
    public = token_stream(tok, corpus("public"))
    prompts = windows(public, args.texts, 16, args.seed + 1)
    out: dict[str, Any] = {"seed": args.seed, "gamma": GAMMA, "delta": DELTA}
    temperatures = () if args.radioactivity_only else (1.0, 0.7)
    with tempfile.TemporaryDirectory() as tmp:
        shield = build_shield({"model": {"lm": "lm-tuned", "seed": args.seed},
                               "audit_url": f"sqlite:///{tmp}/a.db", "watermark_secret": SECRET,
                               "tiers": {"marked": {"llm": {"watermark_delta": DELTA,
                                                            "watermark_gamma": GAMMA}},
                                         "plain": {}}})
        mark = TextWatermark(SECRET, shield.lm.vocab, GAMMA, DELTA)
        keys = {t: shield.store.create_key(t)[0] for t in ("marked", "plain")}
        out["detection"], texts = detection(shield, keys, mark, prompts, temperatures,
                                            args.seed)
        out["false_positives"] = false_positives(
            tok, mark, () if args.radioactivity_only else ("public", "held-out", "private"))
        out["perplexity"] = honest_cost(shield.lm, prompts, texts, temperatures)
        out["radioactivity"] = radioactivity(shield, base, mark, public,
                                             token_stream(tok, corpus("held-out")), args)
        out["clone_tokens"] = args.clone_tokens
        shield.close()
    write(f"text_watermark_radioactivity_{args.clone_tokens}" if args.radioactivity_only
          else "text_watermark", out)


def detection(shield: Any, keys: dict[str, str], mark: Any, prompts: list[list[int]],
              temperatures: tuple[float, ...],
              seed: int) -> tuple[list[dict[str, Any]], dict[Any, Any]]:
    """Each tier's completions scored at 50, 100 and 200 tokens (the plain tier's are the
    negatives); returns the rows and the completions."""
    rows, texts = [], {}
    for temperature in temperatures:
        for tier in ("marked", "plain"):
            gens = complete(shield, keys[tier], prompts, 100, 2, temperature, seed)
            texts[(tier, temperature)] = gens
            for length in (50, 100, 200):
                scores = []
                for p, (a, b) in zip(prompts, gens, strict=True):
                    toks = (a + b)[:length] if length > 100 else a[:length]
                    scores.append(mark.score(toks, p[-1:]))
                z = np.array([s.z for s in scores])
                rows.append({
                    "tier": tier, "temperature": temperature, "tokens": length,
                    "median_z": float(np.median(z)), "min_z": float(z.min()),
                    "share_z_ge_4": float(np.mean(z >= 4)),
                    "share_p_le_1e-4": float(np.mean([s.p_value <= 1e-4 for s in scores])),
                    "median_pairs": float(np.median([s.scored for s in scores]))})
    show("detection (two completions of 100 tokens per text; gamma 0.25, delta 2)",
         ["tier", "temperature", "tokens", "median z", "min z", "z >= 4", "p <= 1e-4",
          "pairs scored"],
         [[d["tier"], d["temperature"], d["tokens"], d["median_z"], d["min_z"],
           d["share_z_ge_4"], d["share_p_le_1e-4"], d["median_pairs"]] for d in rows])
    return rows, texts


def false_positives(tok: Any, mark: Any, corpora: tuple[str, ...]) -> dict[str, int]:
    """200-token windows of text nobody generated, scored against the key."""
    fp = {"windows": 0, "p_le_1e-4": 0, "z_ge_4": 0}
    for name in corpora:
        stream = token_stream(tok, corpus(name))
        for s in range(0, len(stream) - 200, 200):
            score = mark.score(stream[s:s + 200].tolist())
            fp["windows"] += 1
            fp["p_le_1e-4"] += score.p_value <= 1e-4
            fp["z_ge_4"] += score.z >= 4
    show("text written without the key: 200-token windows of the three corpora",
         ["windows", "p <= 1e-4", "z >= 4"], [[fp["windows"], fp["p_le_1e-4"], fp["z_ge_4"]]])
    return fp


def honest_cost(lm: Any, prompts: list[list[int]], texts: dict[Any, Any],
                temperatures: tuple[float, ...]) -> list[dict[str, Any]]:
    """What honest users pay: the completions' perplexity under the unwatermarked model."""
    cost = []
    for temperature in temperatures:
        ppl = {tier: perplexity(lm, prompts, [g[0] for g in texts[(tier, temperature)]])
               for tier in ("marked", "plain")}
        cost.append({"temperature": temperature, "ppl_marked": ppl["marked"],
                     "ppl_plain": ppl["plain"], "ratio": ppl["marked"] / ppl["plain"]})
    show("perplexity of the completions under the unwatermarked model",
         ["temperature", "watermarked", "plain", "ratio"],
         [[c["temperature"], c["ppl_marked"], c["ppl_plain"], c["ratio"]] for c in cost])
    return cost


def radioactivity(shield: Any, base: Any, mark: Any, public: Any, held: Any,
                  args: Any) -> list[dict[str, Any]]:
    """A clone through each tier, and the untouched base: the green share of their pairs."""
    clone_prompts = windows(public, args.clone_tokens // 32 + 1, 16, args.seed + 3)
    probe = windows(held, 400, 16, args.seed + 4)
    radio = []
    students: dict[str, Any] = {"public base, untouched": base.model}
    for tier in ("marked", "plain"):
        oracle = ShieldLMOracle(shield, shield.store.create_key(tier)[0])
        console.print(f"cloning through the {tier} tier ({args.clone_tokens} tokens)...")
        clone = clone_lm(oracle, base.model, clone_prompts, [args.clone_tokens], 32,
                         lambda s: (0.0, 0.0), seed=args.seed)
        students[f"clone of the {tier} tier"] = clone.student
    reading = windows(held, 1000, 64, args.seed + 5)
    for label, student in students.items():
        for mode, pairs in (("writing", student_pairs(student, probe, 64, args.seed)),
                            ("reading", reading_pairs(student, reading))):
            score = mark.score_pairs(pairs)
            radio.append({"model": label, "mode": mode, "pairs": score.scored,
                          "green": score.green,
                          "share_green": score.green / max(score.scored, 1), "z": score.z,
                          "p_value": score.p_value})
    show("radioactivity: distinct token pairs of each model (writing: 64 tokens after each "
         "of 400 held-out prompts; reading: its top next token at every position of 1,000 "
         "held-out windows of 64 tokens)",
         ["model", "mode", "pairs", "green", "share green (chance 0.25)", "z", "p"],
         [[r["model"], r["mode"], r["pairs"], r["green"], r["share_green"], r["z"],
           r["p_value"]] for r in radio])
    return radio

if __name__ == "__main__":
    main()
