"""Bias-search's tolerance chosen from the spectrum, on a model with weak directions.

    python bench/llm_bias_tolerance.py [--scale 1e-3]

lm-tiny with the last four singular values of its output projection W set to ``scale``
times the first (a trained model's weakest directions), behind a tier with no logprobs:
only logit bias and the argmax. Reported: how far below the largest the weakest signal
direction lies in the logits themselves, the hidden size the attack read at its starting
tolerance (1e-3) and after narrowing, and the queries each took. Writes
bench/results/llm_bias_tolerance.json.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
from harness import show, write

from modelshield.attacks.logit_stealing import HiddenSize, singular_values
from modelshield.oracle.lm import ShieldLMOracle
from modelshield.serve.factory import build_shield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1e-3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shield = build_shield({"model": {"lm": "lm-tiny"}, "audit_url": f"sqlite:///{tmp}/a.db",
                               "tiers": {"nolp": {"llm": {"max_top_logprobs": 0}}}})
        weight = shield.lm.model.get_output_embeddings().weight
        with torch.no_grad():
            u, sv, vt = torch.linalg.svd(weight, full_matrices=False)
            sv[-4:] = sv[0] * args.scale
            weight.copy_(u @ torch.diag(sv) @ vt)
        hidden = shield.lm.hidden
        rng = np.random.default_rng(0)
        prompts = [list(map(int, rng.integers(0, shield.lm.vocab, 8))) for _ in range(80)]
        tokens = np.sort(rng.choice(shield.lm.vocab, 48, replace=False))
        z = shield.lm.next_logits(prompts).astype(np.float64)[:, tokens]
        s = singular_values(list(z))
        weakest = float(s[hidden - 1] / s[0])
        oracle = ShieldLMOracle(shield, shield.store.create_key("nolp")[0])
        e = HiddenSize(variant="bias-search", n_tokens=48, prompts_per_round=16).run(
            oracle, 200_000)
        shield.close()
    row = {"scale": args.scale, "true_hidden": hidden, "weakest_over_largest_in_logits": weakest,
           "hidden_at_1e-3": e.info["hidden_at_start_tolerance"],
           "queries_at_1e-3": e.info["queries_at_start_tolerance"],
           "hidden_found": e.hidden_size, "queries": e.queries,
           "final_tolerance": e.info["tolerance"], "refinements": e.info["tolerance_refinements"]}
    show("bias-search on lm-tiny with weak directions",
         ["W's last values / first", "weakest in logits / largest", "true hidden",
          "hidden at 1e-3", "queries", "hidden after narrowing", "queries", "tolerance"],
         [[args.scale, weakest, hidden, row["hidden_at_1e-3"], row["queries_at_1e-3"],
           e.hidden_size, e.queries, e.info["tolerance"]]])
    write("llm_bias_tolerance", row)


if __name__ == "__main__":
    main()
