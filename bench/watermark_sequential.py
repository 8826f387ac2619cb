"""The sequential test (an e-value) beside the score test: what it costs in power, and
whether it names a model built without our answers, adaptive accounts included.

    python bench/watermark_sequential.py             # seeds 0-2: about 25 minutes on 2 cores
    python bench/watermark_sequential.py --seeds 0 --victims breast-cancer-lr

The score test and the two-class control test compare the watermarked cells with the
account's other cells as if the key's marks were a uniformly random subset of them. That
is exact when the account chose its queries without looking at the answers; an active
learner or label-only retraining looks. ``modelshield.defenses.watermark.sequential_p``
holds whatever the account did: a cell's mark is a fresh keyed draw with chance ``rate``,
made after the account chose the input, so betting on marks in the cells the suspect leans
toward gives a test martingale (Ville's inequality). It needs every cell the account sent,
so ``verify`` reports it (``p_sequential``) only when the control was not cut.

The cells are ``watermark_scores.py``'s: the same victims, attackers, rates (0.5%, 2%),
budget (1,000 queries) and key ids, so its clones are the same and the score test's p
reproduces that benchmark's. Each clone is tested on its scores and on its labels; the 18
independent models of ``watermark_dawn.py`` are tested against every cell's key on their
scores. Writes bench/results/watermark_sequential.json.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import seeds_and_rates
from harness import TableSpec, report, run_cells
from watermark_dawn import independent_models
from watermark_scores import ADAPTIVE, ATTACKERS, BUDGET, theft

TRACED = 1e-6
ALPHA = 1e-3


def cell(job: tuple[str, str, float, int]) -> dict[str, Any]:
    """One key's attack through a watermarked tier; its clone and the independent models
    tested with the score test and the sequential one."""
    name, attacker, rate, seed = job
    from modelshield.audit.ownership import estimator_answer, verify_sets
    from modelshield.defenses.watermark import watermark_set

    v, wm, rec, rows, given, e = theft(job)  # watermark_scores.py's clone of the cell
    k = v.spec.n_classes
    sets = [(rec, watermark_set(wm, rec.key_id, rows, v.model, answered=given))]

    def tests(answer: Any) -> tuple[float, float | None]:
        r = verify_sets(wm, sets, answer, "suspect")
        if not r.accounts:
            return 1.0, 1.0
        return r.accounts[0].result.p_value, r.accounts[0].result.p_sequential

    ws = sets[0][1]
    fidelity = float(np.mean(e.clone.predict(v.X_test) == v.predict_labels(v.X_test)))
    p_scores, seq_scores = tests(lambda x: estimator_answer(e.clone, k, x))
    p_labels, seq_labels = tests(lambda x: np.asarray(e.clone.predict(x)))
    null = []
    for label, model in independent_models(name):
        p, seq = tests(lambda x, m=model: estimator_answer(m, k, x))
        null.append({"model": label, "p_scores": p, "p_sequential": seq})
    return {"victim": name, "attacker": attacker, "rate": rate, "seed": seed,
            "queries": e.queries, "fidelity": fidelity, "watermarks": len(ws.x),
            "cells": len(ws.x) + len(ws.control_x), "complete": ws.complete,
            "p_scores": p_scores, "p_sequential_scores": seq_scores,
            "p_labels": p_labels, "p_sequential_labels": seq_labels, "null": null}


def main() -> None:
    ap = seeds_and_rates(__doc__.split("\n")[0], list(ATTACKERS))
    args = ap.parse_args()
    jobs = [(v, a, r, s) for v in args.victims for a in ATTACKERS[v] for r in args.rates
            for s in args.seeds]
    rows = run_cells(cell, jobs, args.workers, spawn=True, progress=_progress)
    summary = [_summarize(victim, attacker, rate, rows) for victim in args.victims
               for attacker in ATTACKERS[victim] for rate in args.rates]
    report("watermark_sequential", {"seeds": args.seeds, "rates": args.rates,
                                    "budget": BUDGET, "rows": rows, "summary": summary},
           [_clones_table(rows), _summary_table(summary)])


def _progress(r: dict[str, Any]) -> str:
    """One cell's line as it comes."""
    return (f"{r['victim']} {r['attacker']} rate {r['rate']} seed {r['seed']}: "
            f"{r['watermarks']} marks, p scores {r['p_scores']:.2g} "
            f"(sequential {r['p_sequential_scores'] or 1:.2g})")


def _summarize(victim: str, attacker: str, rate: float,
               rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One attacker's runs at one rate: the clones traced (p <= 1e-6) and named (1e-3) by
    each test, and the independent models named by each (a missing sequential p is 1)."""
    at = [r for r in rows if (r["victim"], r["attacker"], r["rate"]) == (victim, attacker, rate)]
    null = [n for r in at for n in r["null"]]
    seq = [r["p_sequential_scores"] or 1 for r in at]
    null_seq = [n["p_sequential"] or 1 for n in null]
    return {"victim": victim, "attacker": attacker, "rate": rate, "runs": len(at),
            "adaptive": attacker in ADAPTIVE,
            "traced_scores": sum(r["p_scores"] <= TRACED for r in at),
            "traced_sequential": sum(p <= TRACED for p in seq),
            "named_scores": sum(r["p_scores"] <= ALPHA for r in at),
            "named_sequential": sum(p <= ALPHA for p in seq),
            "null_tests": len(null),
            "null_named_scores": sum(n["p_scores"] <= ALPHA for n in null),
            "null_named_sequential": sum(p <= ALPHA for p in null_seq),
            "null_min_scores": min(n["p_scores"] for n in null),
            "null_min_sequential": min(null_seq),
            "null_005_scores": float(np.mean([n["p_scores"] <= 0.05 for n in null])),
            "null_005_sequential": float(np.mean([p <= 0.05 for p in null_seq]))}


def _clones_table(rows: list[dict[str, Any]]) -> TableSpec:
    """Each clone's fidelity, marks and p values."""
    return (f"clones of {BUDGET} queries: the score test and the sequential test",
            ["victim", "attacker", "rate", "seed", "fidelity", "marks", "p scores",
             "sequential", "p labels", "sequential"],
            [[r["victim"], r["attacker"], f"{r['rate']:.1%}", r["seed"], r["fidelity"],
              r["watermarks"], r["p_scores"], r["p_sequential_scores"], r["p_labels"],
              r["p_sequential_labels"]] for r in rows])


def _summary_table(summary: list[dict[str, Any]]) -> TableSpec:
    """Per attacker and rate: the clones traced and named, the independent models named."""
    return ("per attacker: clones traced (1e-6) and named (1e-3) by each test, of the runs; "
            "independent models named (1e-3)",
            ["victim", "attacker", "rate", "runs", "traced: score", "sequential",
             "named: score", "sequential", "null tests", "null named: score", "sequential",
             "null <= 0.05: score", "sequential", "smallest null p: score", "sequential"],
            [[s["victim"], s["attacker"] + (" (adaptive)" if s["adaptive"] else ""),
              f"{s['rate']:.1%}", s["runs"], s["traced_scores"], s["traced_sequential"],
              s["named_scores"], s["named_sequential"], s["null_tests"],
              s["null_named_scores"], s["null_named_sequential"], s["null_005_scores"],
              s["null_005_sequential"], s["null_min_scores"], s["null_min_sequential"]]
             for s in summary])


if __name__ == "__main__":
    main()
