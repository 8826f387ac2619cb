"""A suspect that recognises the rows it was trained on: verifying on moved copies of them.

    python bench/watermark_jitter.py                 # seeds 0-2: about 15 minutes on 2 cores
    python bench/watermark_jitter.py --seeds 0 --victims breast-cancer-lr

Every row ``modelshield verify`` asks is one the thief sent, marked or not. A thief who
serves its clone can keep those rows and answer them from another model: mixing marked and
control rows stops it from singling out the marked ones, not from treating all its old
rows apart. ``verify --jitter S`` asks instead a copy of each row moved by about S of each
feature's range that stays in the row's watermark cell
(``ServeWatermark.same_cell_copies``); marked and control rows are moved alike, by noise
that does not depend on the key, so the test stays exact.

Each cell serves a built-in victim through a tier watermarked at 2% (or 0.5%), lets one key
(seeded by the cell) run knockoff with 1,000 queries, and tests three suspects on scores
with the rows as sent (jitter 0) and moved by each of ``JITTERS``:

- ``clone``: the clone itself;
- ``lookup``: the clone, but a row equal to one the thief sent is answered by a model
  trained without our answers (an independent logistic regression on the victim's
  training rows): it evades a verifier that asks the rows as sent;
- ``nearest``: the clone, but every row within distance r of one the thief sent (each
  feature scaled to its range) is answered by that other model, r the median (or the
  largest) distance of the moved copies at that jitter; its cost is the share of the
  victim's test rows (honest traffic) it answers from the other model, and its fidelity
  there.

No false claims: the 18 independent models of ``watermark_dawn.py`` are tested against
every cell's key at every jitter. Writes bench/results/watermark_jitter.json.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import seeds_and_rates, watermarked_theft
from harness import report, run_cells, show
from watermark_dawn import independent_models

ATTACKERS: dict[str, dict[str, Any]] = {
    "digits-mlp": {"source": "pool"},  # natural rows (synthetic ones fail on this victim)
    "breast-cancer-lr": {"source": "synthetic"},
}
BUDGET = 1000
JITTERS = (0.0025, 0.005, 0.01, 0.02, 0.05)  # a share of each feature's range
TRACED = 1e-6
ALPHA = 1e-3
SECRET = "bench-watermark-secret-0123456789"


class Evader:
    """A clone that answers rows near the ones it was trained on from another model."""

    def __init__(self, clone: Any, other: Any, k: int, seen: np.ndarray, low: np.ndarray,
                 span: np.ndarray, radius: float) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.clone, self.other, self.k, self.radius = clone, other, k, radius
        self.low, self.span = low, span
        self.index = NearestNeighbors(n_neighbors=1).fit((seen - low) / span)

    def diverted(self, x: np.ndarray) -> np.ndarray:
        d, _ = self.index.kneighbors((np.asarray(x) - self.low) / self.span)
        return np.asarray(d[:, 0] <= self.radius + 1e-6)  # a row of its own: about 0

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Every class's score, in class order."""
        from modelshield.audit.ownership import estimator_answer

        out = np.array(estimator_answer(self.clone, self.k, x).probabilities)
        near = self.diverted(x)
        if near.any():
            out[near] = estimator_answer(self.other, self.k, x[near]).probabilities
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(np.argmax(self.predict_proba(x), axis=1))


def cell(job: tuple[str, float, int]) -> dict[str, Any]:
    """One key's knockoff clone, and every suspect tested at every jitter."""
    name, rate, seed = job
    from modelshield.audit.ownership import estimator_answer, verify_sets
    from modelshield.defenses.watermark import watermark_set
    from modelshield.store import seeded_key_id

    v, wm, rec, seen, given, e = watermarked_theft(
        name, "knockoff", ATTACKERS[name], rate, seeded_key_id("jitter", name, rate, seed), seed,
        SECRET, BUDGET)
    k = v.spec.n_classes
    sets = [(rec, watermark_set(wm, rec.key_id, seen, v.model, answered=given))]
    ws = sets[0][1]
    low = np.asarray(v.spec.low, dtype=np.float64)
    span = np.asarray(v.spec.high, dtype=np.float64) - low
    span = np.where(span > 0, span, 1.0)
    models = independent_models(name)
    other = dict(models)["logistic-s1"]

    def p(model: Any, jitter: float) -> tuple[float, int, int]:
        r = verify_sets(wm, sets, lambda x: estimator_answer(model, k, x), "suspect",
                        jitter=jitter, seed=seed)
        return (r.accounts[0].p_adjusted if r.accounts else 1.0), r.suspect_queries, r.unmoved

    rows = np.concatenate([ws.x, ws.control_x])
    truth = v.predict_labels(v.X_test)
    out: dict[str, Any] = {"victim": name, "rate": rate, "seed": seed, "queries": e.queries,
                           "watermarks": len(ws.x), "cells": len(rows),
                           "fidelity": float(np.mean(e.clone.predict(v.X_test) == truth)),
                           "jitters": []}
    lookup = Evader(e.clone, other, k, seen, low, span, 0.0)
    for jitter in (0.0, *JITTERS):
        moved, _ = wm.same_cell_copies(rows, jitter, np.random.default_rng(seed))
        dist = np.linalg.norm((moved - rows) / span, axis=1)
        p_clone, asked, unmoved = p(e.clone, jitter)
        row = {"jitter": jitter, "suspect_queries": asked, "unmoved": unmoved,
               "median_distance": float(np.median(dist)), "max_distance": float(dist.max()),
               "p_clone": p_clone, "p_lookup": p(lookup, jitter)[0],
               "null": [p(model, jitter)[0] for _, model in models]}
        for which, radius in (("median", np.median(dist)), ("max", dist.max())):
            nearest = Evader(e.clone, other, k, seen, low, span, float(radius))
            row[f"p_nearest_{which}"] = p(nearest, jitter)[0]
            row[f"nearest_{which}_diverts"] = float(np.mean(nearest.diverted(v.X_test)))
            row[f"nearest_{which}_fidelity"] = float(np.mean(nearest.predict(v.X_test) == truth))
        out["jitters"].append(row)
    return out


def main() -> None:
    ap = seeds_and_rates(__doc__.split("\n")[0], list(ATTACKERS))
    args = ap.parse_args()
    jobs = [(v, r, s) for v in args.victims for r in args.rates for s in args.seeds]
    cells = run_cells(cell, jobs, args.workers, spawn=True, progress=lambda c: (
        f"{c['victim']} rate {c['rate']} seed {c['seed']}: fidelity {c['fidelity']:.3f}, "
        f"{c['watermarks']} marks, p " + ", ".join(
            f"{j['jitter']}: {j['p_clone']:.2g}/{j['p_lookup']:.2g}" for j in c["jitters"])))
    show(f"knockoff clones of {BUDGET} queries, p on scores (traced: <= {TRACED:g}); "
         "'nearest' diverts rows within the median or the largest move",
         ["victim", "rate", "seed", "marks", "jitter", "unmoved", "median move", "clone",
          "lookup", "nearest median", "diverts", "fidelity", "nearest max", "diverts",
          "fidelity"],
         [[c["victim"], f"{c['rate']:.1%}", c["seed"], c["watermarks"], j["jitter"],
           j["unmoved"], j["median_distance"], j["p_clone"], j["p_lookup"],
           j["p_nearest_median"], j["nearest_median_diverts"], j["nearest_median_fidelity"],
           j["p_nearest_max"], j["nearest_max_diverts"], j["nearest_max_fidelity"]]
          for c in cells for j in c["jitters"]])
    summary = []
    for jitter in (0.0, *JITTERS):
        at = [j for c in cells for j in c["jitters"] if j["jitter"] == jitter]
        null = [p for j in at for p in j["null"]]
        summary.append({"jitter": jitter,
                        "clone_traced": sum(j["p_clone"] <= TRACED for j in at),
                        "lookup_traced": sum(j["p_lookup"] <= TRACED for j in at),
                        "nearest_median_traced": sum(j["p_nearest_median"] <= TRACED
                                                     for j in at),
                        "nearest_max_traced": sum(j["p_nearest_max"] <= TRACED for j in at),
                        "clones": len(at),
                        "null_named": sum(p <= ALPHA for p in null), "null_tests": len(null),
                        "null_min_p": min(null) if null else None})
    show("summary: clones traced at p <= 1e-6, and independent models named at p <= 1e-3",
         ["jitter", "clone", "lookup", "nearest median", "nearest max", "of", "null named",
          "null tests", "smallest null p"],
         [[s["jitter"], s["clone_traced"], s["lookup_traced"], s["nearest_median_traced"],
           s["nearest_max_traced"], s["clones"], s["null_named"], s["null_tests"],
           s["null_min_p"]] for s in summary])
    report("watermark_jitter", {"seeds": args.seeds, "rates": args.rates, "budget": BUDGET,
                                "cells": cells, "summary": summary})


if __name__ == "__main__":
    main()
