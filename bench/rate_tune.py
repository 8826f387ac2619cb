"""The cross-entropy student's learning rate, annealed or constant, chosen on held-out scores.

    python bench/rate_tune.py [--seeds 5 6 7] [--budgets 3000]
                              [--families mlp deep-mlp logistic boosting]
                              [--data digits synthetic] [--workers 2]

The victims and candidate rows of bench/knockoff_vs_art.py (``build``, ``candidates``); each
variant runs ``knockoff`` as shipped (the student chosen on a held-out fifth), with full
probabilities, on the same candidates:

- shipped: from ``RATE_CHOICE_FROM`` answers on, the MLP trained by cross-entropy is trained
  on four fifths twice, Adam's rate annealed (cosine) and constant, and keeps the rate whose
  student has the lower cross-entropy to the held-out fifth's scores;
- annealed: always annealed (knockoff before the choice);
- constant: always constant (as ART's PyTorchClassifier trains).

Below ``RATE_CHOICE_FROM`` (2,000 answers) the three are the same run. Seeds 5-7 are for
tuning: not the seeds bench/knockoff_vs_art.py reports. Prints the mean test fidelity per
family and budget with each variant's difference to annealed, and how often each rate was
chosen; writes bench/results/rate_tune.json.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np
from harness import arguments, report, run_cells
from knockoff_vs_art import build, candidates, ours

VARIANTS = {"annealed": ("cosine",), "constant": ("constant",),
            "shipped": ("cosine", "constant")}


def cell(job: tuple[str, str, int, list[int]]) -> list[dict[str, Any]]:
    import torch

    import modelshield.attacks._students as students

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    family, data, seed, budgets = job
    victim = build(family, data, seed)
    rates = students.RATES
    out = []
    for budget in budgets:
        x = candidates(victim, budget, seed)
        row: dict[str, Any] = {"family": family, "data": data, "seed": seed, "budget": budget}
        for name, tried in VARIANTS.items():
            students.RATES = tried
            row[name], facts = ours(victim, x, "knockoff", budget, seed)
            row[f"{name} student"] = facts["student"]
            if name == "shipped":
                row["rate"], row["rate_holdout"] = facts.get("rate"), facts.get("rate_holdout")
        students.RATES = rates
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def main() -> None:
    ap = arguments(__doc__, seeds=[5, 6, 7], workers=min(2, os.cpu_count() or 1))
    ap.add_argument("--budgets", type=int, nargs="+", default=[3000])
    ap.add_argument("--families", nargs="+", default=["mlp", "deep-mlp", "logistic", "boosting"])
    ap.add_argument("--data", nargs="+", default=["digits", "synthetic"])
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    jobs = [(f, d, s, args.budgets) for f in args.families for d in args.data for s in args.seeds]
    runs = run_cells(cell, jobs, args.workers, flat=True)
    summary = []
    for f in args.families:
        for b in args.budgets:
            sel = [r for r in runs if r["family"] == f and r["budget"] == b]
            summary.append({"family": f, "budget": b,
                            **{v: float(np.mean([r[v] for r in sel])) for v in VARIANTS},
                            "constant chosen": sum(r["rate"] == "constant" for r in sel),
                            "runs": len(sel)})
    report("rate_tune", {"seeds": args.seeds, "data": args.data, "budgets": args.budgets,
                         "variants": list(VARIANTS), "runs": runs, "summary": summary},
           [("knockoff's test fidelity by the cross-entropy student's rate (mean over data "
             f"sets {args.data} and seeds {args.seeds}; difference to annealed)",
             ["family", "queries", "annealed", "constant", "shipped (chosen)",
              "constant chosen"],
             [[s["family"], s["budget"], s["annealed"],
               f"{s['constant'] - s['annealed']:+.4f}", f"{s['shipped'] - s['annealed']:+.4f}",
               f"{s['constant chosen']} of {s['runs']}"] for s in summary])])


if __name__ == "__main__":
    main()
