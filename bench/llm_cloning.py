"""Output cloning of a language model through its completions API, from scratch and from the
public base model that a private fine-tune started from.

    python bench/llm_cloning.py [--seed 0] [--budgets 4000 16000 64000]

Victim: lm-tuned (lm-h128 fine-tuned on the private corpus: the email, http and json
packages), behind the Shield. The attacker prompts with 16-token windows of the public
corpus and samples 32-token completions at temperature 1, then trains a student on the
completions:
- from scratch: a fresh model of the same public architecture;
- from the public base: lm-h128's weights.
Fidelity is measured by the defender on 64 windows of 48 tokens of the held-out corpus:
next-token top-1 agreement with the victim, and KL(victim || student) per token.
Writes bench/results/llm_cloning.json.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from harness import arguments, console, show, write

from modelshield.attacks.lm_cloning import clone_lm, fidelity
from modelshield.oracle.lm import ShieldLMOracle
from modelshield.serve.factory import build_shield
from modelshield.victims.lm import LM_ZOO, corpus, lm_config, load_lm, token_stream


def windows(stream: np.ndarray, n: int, length: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(stream) - length, n)
    return [stream[s:s + length].tolist() for s in starts]


def main() -> None:
    parser = arguments(__doc__, seed=0)
    parser.add_argument("--budgets", type=int, nargs="*", default=[4000, 16000, 64000])
    args = parser.parse_args()
    from transformers import GPT2LMHeadModel

    base = load_lm("lm-h128", args.seed)
    tok = base.tokenizer
    public = token_stream(tok, corpus("public"))
    held = token_stream(tok, corpus("held-out"))
    prompts = windows(public, max(args.budgets) // 32 + 1, 16, args.seed + 1)
    texts = windows(held, 64, 48, args.seed + 2)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        shield = build_shield({"model": {"lm": "lm-tuned", "seed": args.seed},
                                     "audit_url": f"sqlite:///{tmp}/a.db",
                                     "tiers": {"pro": {"limits": {}}}})
        victim = shield.lm

        def evaluate(student: Any) -> tuple[float, float]:
            return fidelity(victim.sequence_logits, student, texts)

        import torch

        torch.manual_seed(args.seed)
        starts = {"scratch": GPT2LMHeadModel(lm_config(LM_ZOO["lm-h128"], tok)),
                  "public base": base.model}
        for label, student in starts.items():
            a0, k0 = evaluate(student)
            rows.append({"start": label, "tokens": 0, "queries": 0, "cost": 0.0,
                         "agreement": a0, "kl": k0})
            console.print(f"{label}: {a0:.4f} agreement before any query")
            oracle = ShieldLMOracle(shield, shield.store.create_key("pro")[0],
                                    price_per_1k_tokens=0.002)
            clone = clone_lm(oracle, student, prompts, args.budgets, 32, evaluate,
                             seed=args.seed)
            for c in clone.checkpoints:
                rows.append({"start": label, "tokens": c.tokens, "queries": c.queries,
                             "cost": c.cost, "agreement": c.agreement, "kl": c.kl})
                console.print(f"{label}: {c.tokens} tokens -> {c.agreement:.4f} ({c.kl:.3f})")
        shield.close()
    show("output cloning of lm-tuned (agreement and KL on held-out text)",
         ["student starts from", "completion tokens", "queries", "$ at $0.002/1k tokens",
          "top-1 agreement", "KL(victim||student)"],
         [[r["start"], r["tokens"], r["queries"], r["cost"], r["agreement"], r["kl"]]
          for r in rows])
    write("llm_cloning", {"seed": args.seed, "rows": rows})


if __name__ == "__main__":
    main()
