"""The audit traces its clones: every clone of 90% fidelity or more, in every cell, tested
against the serve-time watermark (DAWN) of the tier that answered it.

    python bench/audit_tracing.py [--seed 0] [--rates 0.005 0.02] [--workers 0]
                                  [--out results/audit-tracing]

One audit per victim (``modelshield audit`` runs the same code): a tier answering full
scores, and the same tier with the serve-time watermark at each rate. The attackers are
the ones the issue names, at 300 and 1,000 queries (a knockoff on the natural pool at 300
and at the pool's natural rows, 449 for digits: the audit's attackers draw only those):

- digits-mlp (10 classes): knockoff on the scores (student chosen on held-out answers),
  knockoff on the labels (``labels=hard``), active learning (margin), Jacobian
  augmentation (labels);
- breast-cancer-lr (2 classes): knockoff on synthetic queries, on the scores and on the
  labels, and label-only retraining (``method=adaptive``).

Each plain attacker's adaptive counterpart (its budget over 10 keys, paced) is played
as the audit plays it by default. Per defense and attacker the table gives the queries to
90%, whether every clone at 90% or more was traced (p <= 1e-6), the p-value of the cheapest,
and the rating. The accounts' key ids are seeded by the cell, so a rerun repeats the
watermarked inputs. Writes bench/results/audit_tracing.json; the reports land in
OUT/<victim>/report.html.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from harness import arguments, console, show, write

from modelshield.audit.report import write_report
from modelshield.audit.runner import attack_pool, run_audit
from modelshield.audit.scenario import load_scenario
from modelshield.victims import load_victim

BUDGETS = [300, 1000]
ATTACKERS = {
    "digits-mlp": [
        {"name": "knockoff", "attack": "knockoff", "params": {"source": "pool"}},
        {"name": "knockoff, labels", "attack": "knockoff",
         "params": {"source": "pool", "labels": "hard"}},
        {"name": "active learning", "attack": "active", "params": {"strategy": "margin"}},
        {"name": "jacobian", "attack": "jacobian"},
    ],
    "breast-cancer-lr": [
        {"name": "knockoff", "attack": "knockoff", "params": {"source": "synthetic"}},
        {"name": "knockoff, labels", "attack": "knockoff",
         "params": {"source": "synthetic", "labels": "hard"}},
        {"name": "label-only", "attack": "label-only", "params": {"method": "adaptive"}},
    ],
}


def budgets(attacker: dict[str, Any], natural: int) -> list[int]:
    """BUDGETS, the largest cut to ``natural`` for an attacker that draws the natural pool
    (the audit's natural-data attackers draw only its natural rows: 449 for digits)."""
    if attacker.get("params", {}).get("source") != "pool":
        return BUDGETS
    return sorted({min(b, natural) for b in BUDGETS})


def scenario(victim: str, seed: int, rates: list[float], natural: int) -> dict[str, Any]:
    return {"name": f"tracing: {victim}", "seed": seed, "price_per_1k": 1.0,
            "model_value": 20_000, "target": {"victim": victim},
            "attackers": [{**a, "budgets": budgets(a, natural)} for a in ATTACKERS[victim]],
            "defenses": [{"name": "full", "policy": "full"}]
            + [{"name": f"watermark {r:.1%}", "policy": "full", "watermark": {"rate": r}}
               for r in rates],
            "benign": {"accounts": 10, "median_rows": 60}}


def main() -> None:
    parser = arguments(__doc__, seed=0, workers=0, out=Path("results/audit-tracing"))
    parser.add_argument("--rates", type=float, nargs="+", default=[0.005, 0.02])
    parser.add_argument("--victims", nargs="+", default=list(ATTACKERS), choices=list(ATTACKERS))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    rows, ratings = [], []
    for victim in args.victims:
        natural = len(attack_pool(load_victim(victim, args.seed)))
        doc = run_audit(load_scenario(scenario(victim, args.seed, args.rates, natural)),
                        args.out / victim, args.workers)
        write_report(doc, args.out / victim)
        console.print(f"{victim}: {len(doc['cells'])} cells in {doc['seconds']:.0f} s")
        for d in doc["analysis"]["defenses"]:
            ratings.append({"victim": victim, "defense": d["name"], "rating": d["rating"],
                            "cheapest_clone": d["cheapest_clone"],
                            "cheapest_untraced_clone": d["cheapest_untraced_clone"]})
            for r in d["attackers"]:
                rows.append({"victim": victim, "defense": d["name"], "attacker": r["attacker"],
                             "q90": r["q90"], "best_fidelity": r["best_fidelity"],
                             "trace": r["trace"], "traced": r["traced"],
                             "traced_p": r["traced_p"], "q90_untraced": r["q90_untraced"],
                             "uncaught_clone": r["uncaught_clone"]})
    show("every clone of 90% or more tested against the tier's watermark (traced: p <= 1e-6 "
         "for every one)",
         ["victim", "defense", "attacker", "queries to 90%", "best fidelity", "traced",
          "p (cheapest)", "largest p of its clones"],
         [[r["victim"], r["defense"], r["attacker"], r["q90"], r["best_fidelity"],
           "—" if not r["trace"] else "yes" if r["traced"] else
           f"no (from {r['q90_untraced']})", r["traced_p"],
           max((p for _, p in r["trace"]), default=None)] for r in rows])
    show("rating", ["victim", "defense", "rating", "cheapest uncaught clone",
                    "cheapest untraced"],
         [[r["victim"], r["defense"], r["rating"],
           None if r["cheapest_clone"] is None else
           f"{r['cheapest_clone']['queries']} ({r['cheapest_clone']['attacker']})",
           None if r["cheapest_untraced_clone"] is None else
           f"{r['cheapest_untraced_clone']['queries']} "
           f"({r['cheapest_untraced_clone']['attacker']})"] for r in ratings])
    marked = [r for r in rows if r["trace"]]
    console.print(f"attackers with a clone under a watermark: {len(marked)}; every clone "
                  f"traced: {sum(r['traced'] for r in marked)}")
    write("audit_tracing", {"seed": args.seed, "rates": args.rates, "budgets": BUDGETS,
                            "rows": rows, "ratings": ratings})


if __name__ == "__main__":
    main()
