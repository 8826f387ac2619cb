"""The sequential test's grid (how far a suspect must lean toward the watermark's label to
be bet on, and how much is bet), chosen on the thieves' seeds that the reported tables do
not use.

    python bench/watermark_sequential_tune.py               # seeds 3-5: about 5 minutes
    python bench/watermark_sequential_tune.py --seeds 3 --victims breast-cancer-lr

The cells are ``watermark_scores.py``'s (victims, attackers, rates 0.5% and 2%, 1,000
queries, key ids seeded by the cell), run for seeds 3-5; ``watermark_sequential.py`` and
``audit_tracing.py`` report on seeds 0-2 and 0. Each clone's scores are asked on every
cell the key sent, and ``modelshield.defenses.watermark.sequential_p`` is computed with
each candidate grid in ``GRIDS``; so are six of ``watermark_dawn.py``'s independent models
against every cell's key (any fixed grid is an exact test; their rate at p <= 0.05 is a
check, not a criterion). A grid's figure of merit: the clones traced (1e-6) and named
(1e-3), and the sum of log10 p over the clones of the attackers that do not expect a
watermark. Writes bench/results/watermark_sequential_tune.json.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import seeds_and_rates
from harness import report, run_cells, show
from watermark_dawn import independent_models
from watermark_scores import ATTACKERS, theft

TRACED = 1e-6
ALPHA = 1e-3
SMALL = (0.05, 0.1, 0.2, 0.4, 0.8)
GRIDS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {  # name: (shifts, bets)
    "before (shifts to 4)": ((0.25, 0.5, 1, 2, 4), SMALL),
    "shifts to 8": ((0.25, 0.5, 1, 2, 4, 8), SMALL),
    "shifts to 16": ((0.25, 0.5, 1, 2, 4, 8, 16), SMALL),
    "shifts to 16, bet 0.95": ((0.25, 0.5, 1, 2, 4, 8, 16), (*SMALL, 0.95)),
    "shifts to 16 by 4, bet 0.95": ((0.25, 0.5, 1, 2, 4, 8, 12, 16), (*SMALL, 0.95)),
    "shifts to 24 by 4, bet 0.95": ((0.25, 0.5, 1, 2, 4, 8, 12, 16, 20, 24), (*SMALL, 0.95)),
}


def cell(job: tuple[str, str, float, int]) -> dict[str, Any]:
    """One key's clone and six independent models, each tested with every grid."""
    name, attacker, rate, seed = job
    from modelshield.audit.ownership import estimator_answer
    from modelshield.defenses.watermark import sequential_cuts, sequential_p, watermark_set

    v, wm, rec, rows, given, e = theft(job)
    k = v.spec.n_classes
    ws = watermark_set(wm, rec.key_id, rows, v.model, answered=given)

    def grids(model: Any) -> dict[str, float] | None:
        got = estimator_answer(model, k, np.concatenate([ws.x, ws.control_x]))
        if not hasattr(got, "probabilities"):
            return None  # labels only: one cut, the same for every grid
        probs = np.asarray(got.probabilities)
        return {g: sequential_p(sequential_cuts(probs[:len(ws.x)], probs[len(ws.x):], ws, True,
                                                shifts), ws.rate, bets)
                for g, (shifts, bets) in GRIDS.items()}

    null = [p for _, m in independent_models(name)[:6] if (p := grids(m)) is not None]
    return {"victim": name, "attacker": attacker, "rate": rate, "seed": seed,
            "watermarks": len(ws.x), "cells": len(ws.x) + len(ws.control_x),
            "complete": ws.complete, "p": grids(e.clone), "null": null}


def main() -> None:
    ap = seeds_and_rates(__doc__.split("\n")[0], list(ATTACKERS))
    ap.set_defaults(seeds=[3, 4, 5])
    args = ap.parse_args()
    jobs = [(v, a, r, s) for v in args.victims for a in ATTACKERS[v] for r in args.rates
            for s in args.seeds]
    rows = run_cells(cell, jobs, args.workers, spawn=True, progress=lambda r: (
        f"{r['victim']} {r['attacker']} rate {r['rate']} seed {r['seed']}: "
        f"{r['watermarks']} marks"))
    show("sequential p of each clone, per grid", ["victim", "attacker", "rate", "seed", "marks",
                                                   *GRIDS],
         [[r["victim"], r["attacker"], f"{r['rate']:.1%}", r["seed"], r["watermarks"],
           *(r["p"][g] for g in GRIDS)] for r in rows])
    summary = []
    for g in GRIDS:
        ps = [r["p"][g] for r in rows]
        plain = [r["p"][g] for r in rows if r["attacker"] != "vote5"]
        null = [n[g] for r in rows for n in r["null"]]
        summary.append({"grid": g, "shifts": list(GRIDS[g][0]), "bets": list(GRIDS[g][1]),
                        "clones": len(ps), "traced": sum(p <= TRACED for p in ps),
                        "named": sum(p <= ALPHA for p in ps),
                        "sum_log10_p": float(sum(np.log10(max(p, 1e-300)) for p in plain)),
                        "null_tests": len(null), "null_named": sum(p <= ALPHA for p in null),
                        "null_005": float(np.mean([p <= 0.05 for p in null])),
                        "null_min": min(null)})
    show("per grid: clones traced (1e-6) and named (1e-3); sum of log10 p (attackers that do "
         "not expect a watermark); independent models",
         ["grid", "clones", "traced", "named", "sum log10 p", "null tests", "null named",
          "null <= 0.05", "smallest null p"],
         [[s["grid"], s["clones"], s["traced"], s["named"], s["sum_log10_p"], s["null_tests"],
           s["null_named"], s["null_005"], s["null_min"]] for s in summary])
    report("watermark_sequential_tune", {"seeds": args.seeds, "rates": args.rates,
                                         "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
