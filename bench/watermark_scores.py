"""The serve-time watermark tested on a suspect's scores against its labels: which clones
each test traces, and how often each names a model built without our answers, adaptive
accounts included.

    python bench/watermark_scores.py                 # seeds 0-2: about 100 minutes on 2 cores
    python bench/watermark_scores.py --seeds 3 --victims digits-mlp
    python bench/watermark_scores.py --rerun vote5   # those cells again, the rest reused
    python bench/watermark_scores.py --rerun         # the tables again from the JSON

Each cell serves a built-in victim through a tier watermarked at 0.5% or 2%, lets one
key (seeded by the cell) run an attack of 1,000 queries, rebuilds the key's watermark
set from the audit log and the secret, and tests the clone twice, as ``modelshield
verify`` tests a suspect that answers labels only (the label test with three classes or
more, the control test with two) and one that answers every class's score (the score
test: ``modelshield.defenses.watermark.score_test``). The score test is repeated with
the control cut to 25, 50, 100, 200 and 400 of the key's unmarked cells (``verify
--controls``, a random draw fixed before the suspect is asked), for the fewest suspect
queries that reach p <= 1e-6 and DAWN's 2^-64, and the independent models are tested at
each of those sizes too. Attackers:

- digits-mlp (10 classes): knockoff on the scores and on the labels (natural rows),
  active learning (margin; its queries depend on the answers it got), and ``vote5``, which
  expects a watermark (every natural row sent as 5 jittered copies, majority vote;
  synthetic queries would not do: knockoff on them reaches 0.40 fidelity at 1,000 queries
  on this victim);
- breast-cancer-lr (2 classes): knockoff on synthetic queries, on the scores and on the
  labels, label-only retraining (``method=adaptive``), and ``vote5``.

No false claims: per victim, 18 models built without our answers (9 architectures x 2
seeds on the victim's own training rows and labels, as in ``watermark_dawn.py``) are
tested against every cell's key with both tests; the score test is exact only when the
key's queries did not depend on its answers, so the active learner's keys are the ones
that would show it (and label-only retraining's, whose line searches follow the answers
too). Writes bench/results/watermark_scores.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import seeds_and_rates, watermarked_theft
from harness import RESULTS, report, run_cells
from watermark_dawn import independent_models

ATTACKERS: dict[str, dict[str, dict[str, Any]]] = {
    "digits-mlp": {
        "knockoff": {"attack": "knockoff", "source": "pool"},
        "knockoff, labels": {"attack": "knockoff", "source": "pool", "labels": "hard"},
        "active learning": {"attack": "active", "strategy": "margin"},
        "vote5": {"attack": "knockoff", "source": "pool", "votes": 5},
    },
    "breast-cancer-lr": {
        "knockoff": {"attack": "knockoff", "source": "synthetic"},
        "knockoff, labels": {"attack": "knockoff", "source": "synthetic", "labels": "hard"},
        "label-only": {"attack": "label-only", "method": "adaptive"},
        "vote5": {"attack": "knockoff", "source": "synthetic", "votes": 5},
    },
}
BUDGET = 1000
ADAPTIVE = ("active learning", "label-only")  # their queries depend on the answers they got
TRACED = 1e-6  # the audit's bar for a traced clone
DAWN_BAR = 2.0 ** -64  # DAWN's proof of ownership: confidence above 1 - 2^-64
CONTROLS = (25, 50, 100, 200, 400)  # unmarked cells asked (verify --controls), all last
ALPHA = 1e-3  # verify's bar for naming a key
SECRET = "bench-watermark-secret-0123456789"


def theft(job: tuple[str, str, float, int]) -> tuple[Any, ...]:
    """The cell's key (seeded by the cell) and its attack through the watermarked tier:
    ``_common.watermarked_theft``'s (victim, watermark, record, rows, labels, result)."""
    from modelshield.store import seeded_key_id

    name, attacker, rate, seed = job
    params = dict(ATTACKERS[name][attacker])
    attack = params.pop("attack")
    return watermarked_theft(name, attack, params, rate,
                             seeded_key_id("scores", name, attacker, rate, seed), seed,
                             SECRET, BUDGET)


def cell(job: tuple[str, str, float, int]) -> dict[str, Any]:
    """One key's attack through a watermarked tier; its clone and the independent models
    tested against its watermark on labels and on scores."""
    name, attacker, rate, seed = job
    from modelshield.audit.ownership import estimator_answer, verify_sets
    from modelshield.defenses.watermark import watermark_set

    v, wm, rec, rows, given, e = theft(job)
    k = v.spec.n_classes
    sets = [(rec, watermark_set(wm, rec.key_id, rows, v.model, answered=given))]
    fewer = {n: [(rec, watermark_set(wm, rec.key_id, rows, v.model, answered=given,
                                     max_control=n))] for n in CONTROLS}

    def both(model: Any) -> tuple[float, float, str, int]:
        """p on labels, p on scores, the test scores got, and the queries it asked."""
        labels = verify_sets(wm, sets, lambda x: np.asarray(model.predict(x)), "suspect")
        scores = verify_sets(wm, sets, lambda x: estimator_answer(model, k, x), "suspect")
        p_l = labels.accounts[0].p_adjusted if labels.accounts else 1.0
        p_s = scores.accounts[0].p_adjusted if scores.accounts else 1.0
        return (p_l, p_s, scores.accounts[0].result.test if scores.accounts else "-",
                scores.suspect_queries)

    def sweep(model: Any) -> list[tuple[int, int, float | None]]:
        """(controls, suspect queries, p on scores) with each control size (p None where
        the key has fewer other cells)."""
        out: list[tuple[int, int, float | None]] = []
        for n, few in fewer.items():
            r = verify_sets(wm, few, lambda x: estimator_answer(model, k, x), "suspect")
            full = r.accounts and len(few[0][1].control_x) == n
            out.append((n, r.suspect_queries, r.accounts[0].p_adjusted if full else None))
        return out

    fidelity = float(np.mean(e.clone.predict(v.X_test) == v.predict_labels(v.X_test)))
    p_labels, p_scores, test, asked = both(e.clone)
    null = [(label, *both(model)[:3], sweep(model)) for label, model in independent_models(name)]
    ws = sets[0][1]
    return {"victim": name, "attacker": attacker, "rate": rate, "seed": seed,
            "queries": e.queries, "fidelity": fidelity, "watermarks": len(ws.x),
            "cells": len(ws.x) + len(ws.control_x), "p_labels": p_labels,
            "p_scores": p_scores, "score_test": test,
            "controls": [*sweep(e.clone), (len(ws.control_x), asked, p_scores)],
            "null": [{"model": m, "p_labels": a, "p_scores": b, "test": t,
                      "p_controls": [p for _, _, p in c]} for m, a, b, t, c in null]}


def main() -> None:
    ap = seeds_and_rates(__doc__.split("\n")[0], list(ATTACKERS))
    ap.add_argument("--out", default="watermark_scores")
    ap.add_argument("--rerun", nargs="*", metavar="ATTACKER",
                    help="run only these attackers' cells again (none: only the tables); the "
                         "others are taken from bench/results/OUT.json (same seeds and rates)")
    args = ap.parse_args()
    jobs = [(v, a, r, s) for v in args.victims for a in ATTACKERS[v] for r in args.rates
            for s in args.seeds if args.rerun is None or a in args.rerun]
    rows = []
    if args.rerun is not None:
        kept = json.loads((RESULTS / f"{args.out}.json").read_text())["rows"]
        rows = [r for r in kept if r["attacker"] not in args.rerun
                and r["victim"] in args.victims]
    rows += run_cells(cell, jobs, args.workers, spawn=True, progress=lambda r: (
        f"{r['victim']} {r['attacker']} rate {r['rate']} seed {r['seed']}: fidelity "
        f"{r['fidelity']:.3f}, {r['watermarks']} marks, p labels {r['p_labels']:.2g}, "
        f"scores {r['p_scores']:.2g}"))
    order = {(v, a): i for i, (v, a) in enumerate(
        (v, a) for v in args.victims for a in ATTACKERS[v])}
    rows.sort(key=lambda r: (order[(r["victim"], r["attacker"])], r["rate"], r["seed"]))
    summary = per_attacker(rows, args.victims, args.rates)
    queries = suspect_queries(rows, summary)
    by_size = null_by_controls(rows)
    null = null_by_victim(rows, args.victims)
    report(args.out, {"seeds": args.seeds, "rates": args.rates, "budget": BUDGET,
                      "rows": rows, "summary": summary, "null": null,
                      "suspect_queries": queries, "null_by_controls": by_size},
           [(f"clones of {BUDGET} queries: p-value against the key's watermark (traced: "
             "<= 1e-6)", ["victim", "attacker", "rate", "seed", "fidelity", "marked cells",
                          "p on labels", "p on scores"],
             [[r["victim"], r["attacker"], f"{r['rate']:.1%}", r["seed"], r["fidelity"],
               r["watermarks"], r["p_labels"], r["p_scores"]] for r in rows]),
            ("per attacker (clones of 90% fidelity or more traced at <= 1e-6, named at "
             "<= 1e-3)",
             ["victim", "attacker", "rate", "clones >= 90%", "mean fidelity", "mean marks",
              "traced: labels", "traced: scores", "named: labels", "named: scores",
              "median p labels", "median p scores"],
             [[s["victim"], s["attacker"], f"{s['rate']:.1%}", f"{s['clones_90']}/{s['runs']}",
               s["mean_fidelity"], s["mean_marks"], s["traced_labels"], s["traced_scores"],
               s["named_labels"], s["named_scores"], s["median_p_labels"],
               s["median_p_scores"]] for s in summary]),
            ("suspect queries on scores to reach 1e-6 and 2^-64 (the fewest over controls of "
             f"{', '.join(map(str, CONTROLS))} or all; clones >= 90%)",
             ["victim", "attacker", "rate", "clones", "all cells (median)", "reach 1e-6",
              "queries (each clone)", "reach 2^-64", "queries (each clone)"],
             [[q["victim"], q["attacker"], f"{q['rate']:.1%}", q["clones_90"], q["all_cells"],
               q["reached_1e-6"], " ".join(map(str, q["queries_1e-6"])) or "-",
               q["reached_2^-64"], " ".join(map(str, q["queries_2^-64"])) or "-"]
              for q in queries]),
            ("independent models against every key, by control size (no false claims)",
             ["controls", "tests", "p <= 1e-3", "share <= 0.05", "smallest p"],
             [[b["controls"], b["tests"], b["at_1e-3"], b["at_0.05"], b["min_p"]]
              for b in by_size]),
            ("independent models against every key (no false claims)",
             ["victim", "accounts", "tests", "on scores", "labels: p <= 1e-3",
              "scores: p <= 1e-3", "labels: share <= 0.05", "scores: share <= 0.05",
              "smallest p on scores"],
             [[n["victim"], n["accounts"], n["tests"], n["scored"], n["labels_at_1e-3"],
               n["scores_at_1e-3"], n["labels_at_0.05"], n["scores_at_0.05"],
               n["min_p_scores"]] for n in null])])


def per_attacker(rows: list[dict[str, Any]], victims: list[str],
                 rates: list[float]) -> list[dict[str, Any]]:
    """Each victim, attacker and rate: its clones of 90% or more, traced and named."""
    summary = []
    for name in victims:
        for attacker in ATTACKERS[name]:
            for rate in rates:
                cells = [r for r in rows if (r["victim"], r["attacker"], r["rate"])
                         == (name, attacker, rate)]
                clones = [r for r in cells if r["fidelity"] >= 0.9]
                summary.append({
                    "victim": name, "attacker": attacker, "rate": rate, "runs": len(cells),
                    "clones_90": len(clones),
                    "mean_fidelity": float(np.mean([r["fidelity"] for r in cells])),
                    "mean_marks": float(np.mean([r["watermarks"] for r in cells])),
                    "traced_labels": sum(r["p_labels"] <= TRACED for r in clones),
                    "traced_scores": sum(r["p_scores"] <= TRACED for r in clones),
                    "named_labels": sum(r["p_labels"] <= ALPHA for r in clones),
                    "named_scores": sum(r["p_scores"] <= ALPHA for r in clones),
                    "median_p_labels": float(np.median([r["p_labels"] for r in cells])),
                    "median_p_scores": float(np.median([r["p_scores"] for r in cells]))})
    return summary


def suspect_queries(rows: list[dict[str, Any]],
                    summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The suspect queries each clone of 90% or more needs to reach 1e-6 and 2^-64."""

    def fewest(r: dict[str, Any], level: float) -> int | None:
        """The fewest suspect queries that reach ``level`` on scores, over the control
        sizes (each fixed in advance)."""
        got = [q for _, q, p in r["controls"] if p is not None and p <= level]
        return min(got) if got else None

    queries = []
    for s in summary:
        clones = [r for r in rows if (r["victim"], r["attacker"], r["rate"]) ==
                  (s["victim"], s["attacker"], s["rate"]) and r["fidelity"] >= 0.9]
        if not clones:
            continue
        row: dict[str, Any] = {k: s[k] for k in ("victim", "attacker", "rate")}
        row["clones_90"] = len(clones)
        row["all_cells"] = float(np.median([r["controls"][-1][1] for r in clones]))
        for level, tag in ((TRACED, "1e-6"), (DAWN_BAR, "2^-64")):
            got = [q for q in (fewest(r, level) for r in clones) if q is not None]
            row[f"reached_{tag}"] = len(got)
            row[f"queries_{tag}"] = [int(q) for q in sorted(got)]
        queries.append(row)
    return queries


def null_by_controls(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Independent models against every key, by the control size."""
    by_size = []
    for i, n in enumerate(CONTROLS):
        tests = [m["p_controls"][i] for r in rows for m in r["null"]
                 if m["p_controls"][i] is not None]
        by_size.append({"controls": n, "tests": len(tests),
                        "at_1e-3": sum(p <= ALPHA for p in tests),
                        "at_0.05": sum(p <= 0.05 for p in tests) / max(len(tests), 1),
                        "min_p": min(tests, default=1.0)})
    return by_size


def null_by_victim(rows: list[dict[str, Any]], victims: list[str]) -> list[dict[str, Any]]:
    """Independent models against every key, by victim and by whether the key was adaptive."""
    null = []
    for name in victims:
        for adaptive in (False, True):
            tests = [n for r in rows if r["victim"] == name
                     and (r["attacker"] in ADAPTIVE) == adaptive for n in r["null"]]
            if not tests:
                continue
            null.append({
                "victim": name, "accounts": "adaptive" if adaptive else "not adaptive",
                "tests": len(tests),
                "scored": sum(n["test"] == "score" for n in tests),
                "labels_at_1e-3": sum(n["p_labels"] <= ALPHA for n in tests),
                "scores_at_1e-3": sum(n["p_scores"] <= ALPHA for n in tests),
                "labels_at_0.05": sum(n["p_labels"] <= 0.05 for n in tests) / len(tests),
                "scores_at_0.05": sum(n["p_scores"] <= 0.05 for n in tests) / len(tests),
                "min_p_scores": min(n["p_scores"] for n in tests)})
    return null


if __name__ == "__main__":
    main()
