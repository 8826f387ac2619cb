"""Defenses that spoil the copy: Adaptive Misinformation (Kariyappa & Qureshi, CVPR 2020)
and Prediction Poisoning, MAD (Orekondy et al., ICLR 2020), as output policies: how much
each spoils the copy, against what it costs honest users.

    python bench/misinformation.py [--seeds 0] [--budgets 1000]

For each victim, ``tau`` is set from the owner's calibration rows (half the test set): the
1st and the 5th percentile of the model's top score there, so that about 1% or 5% of
natural rows would be answered with misinformation. MAD runs at the paper's L1 budgets
(``eps`` 0.5 and 1.0; nothing tuned), and MAD-argmax at 1.0, which keeps every label
and moves only the scores. Honest cost is measured on the other
half of the test set (rows the choice of tau never saw): accuracy lost and expected
calibration error added. Attackers, each at 1,000 queries (--budgets for more):

- knockoff on the attacker's natural pool, trained on the scores (the plain attacker);
- the same, choosing soft or hard labels and the student family on held-out answers
  (``student=auto``, the adaptive attacker of the audit);
- knockoff on synthetic queries (mixtures of pool rows), and Jacobian augmentation on
  labels, which leave the natural data and meet the misinformation.

Writes bench/results/misinformation.json (``--out NAME`` for another name).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from harness import arguments, show, write

from modelshield.audit.evaluate import run_cell
from modelshield.audit.runner import ece
from modelshield.defenses.policies import parse_policy
from modelshield.oracle import LocalOracle
from modelshield.victims import load_victim

VICTIMS = ["digits-mlp", "synth-mlp-d20"]
SECRET = "bench-spoil-key"  # the owner's key for MAD's surrogate (and noise)
ATTACKERS = [  # label, attack, params
    ("knockoff pool (soft)", "knockoff", {"source": "pool", "labels": "soft"}),
    ("knockoff pool (adaptive)", "knockoff", {"source": "pool", "student": "auto"}),
    ("knockoff synthetic", "knockoff", {"source": "synthetic", "student": "auto"}),
    ("jacobian (labels)", "jacobian", {}),
]


def honest_cost(victim: Any, spec: str) -> dict[str, float]:
    X, y = victim.honest, victim.y_test[1::2]
    p = victim.predict(X)
    answer = parse_policy(spec, secret=SECRET).apply(p, X)
    conf = answer.probabilities.max(axis=1) if answer.probabilities is not None \
        else np.ones(len(X))
    return {"accuracy": float(np.mean(answer.labels == y)),
            "model_accuracy": float(np.mean(p.labels == y)),
            "changed": float(np.mean(answer.labels != p.labels)),
            "ece": ece(conf, answer.labels == y),
            "model_ece": ece(p.probabilities.max(axis=1), p.labels == y)}


def main() -> None:
    parser = arguments(__doc__, seeds=[0], out="misinformation")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000])
    parser.add_argument("--victims", nargs="+", default=VICTIMS)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for name in args.victims:
        for seed in args.seeds:
            v = load_victim(name, seed)
            top = v.predict(v.calibration).probabilities.max(axis=1)
            policies = {"full": "full", **{
                f"misinform {q:.0%}": f"misinform:tau={np.quantile(top, q):.4f},nu=50"
                for q in (0.01, 0.05)}, **{f"mad {e}": f"mad:eps={e}" for e in (0.5, 1.0)},
                "mad-argmax 1.0": "mad-argmax:eps=1.0"}
            for tag, spec in policies.items():
                cost = honest_cost(v, spec)
                for label, attack, params in ATTACKERS:
                    for budget in args.budgets:
                        oracle = LocalOracle(v, parse_policy(spec, secret=SECRET),
                                             budget=budget)
                        r = run_cell(v, attack, spec, budget, seed, params=params,
                                     oracle=oracle, label=spec)
                        rows.append({"victim": name, "seed": seed, "policy": spec, "tag": tag,
                                     "attacker": label, "budget": budget, "status": r.status,
                                     "fidelity": r.fidelity_test, "clone_accuracy": r.accuracy,
                                     "chosen": r.info.get("student"), **{
                                         f"honest_{k}": val for k, val in cost.items()}})
                        print(f"{name} seed {seed} {spec:34s} {label:26s} {budget:5d}: "
                              f"fidelity {r.fidelity_test}, status {r.status}", flush=True)
    table = []
    tags = list(dict.fromkeys(r["tag"] for r in rows))
    for name in args.victims:
        for label, _, _ in ATTACKERS:
            for budget in args.budgets:
                def cells(tag: str, name: str = name, label: str = label,
                          budget: int = budget) -> list[dict[str, Any]]:
                    return [r for r in rows if r["victim"] == name and r["attacker"] == label
                            and r["budget"] == budget and r["tag"] == tag]
                base = cells("full")
                for tag in tags:
                    mine = cells(tag)
                    if not mine:
                        continue
                    fid = np.mean([r["fidelity"] or 0 for r in mine])
                    acc = np.mean([r["clone_accuracy"] or 0 for r in mine])
                    lost = np.mean([r["honest_model_accuracy"] - r["honest_accuracy"]
                                    for r in mine])
                    ece_up = np.mean([r["honest_ece"] - r["honest_model_ece"] for r in mine])
                    drop = np.mean([b["clone_accuracy"] or 0 for b in base]) - acc
                    table.append([name, label, budget, tag, fid, acc, drop, lost, ece_up])
    show("spoiling the copy: the clone against honest users (mean over seeds)",
         ["victim", "attacker", "queries", "policy", "clone fidelity", "clone accuracy",
          "clone accuracy drop", "honest accuracy lost", "honest ECE added"], table)
    write(args.out, {"seeds": args.seeds, "budgets": args.budgets, "rows": rows})


if __name__ == "__main__":
    main()
