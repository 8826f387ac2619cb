"""A full audit: every built-in classifier victim under every output policy that applies to it
and the default detectors, with the attacks that fit its model family. Then the same audit
again, which must come from the cache.

    python bench/full_audit.py [--workers 0] [--seed 0] [--out results/full-audit]

Each victim is one scenario (`modelshield audit` runs the same code); its report lands in
OUT/<victim>/report.html. Targets: the whole first run within 30 minutes on 2 cores, the
second within seconds. Writes bench/results/full_audit.json.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from harness import arguments, console, show, write

from modelshield.audit.report import write_report
from modelshield.audit.runner import attack_pool, run_audit
from modelshield.audit.scenario import load_scenario
from modelshield.victims import load_victim
from modelshield.victims.zoo import ZOO

POLICIES = ["full", "round:2", "top-k:1", "label", "noise:0.05", "reverse-sigmoid"]
TREE_POLICIES = ["leaf-confidence", "leaf-id"]
MONITORED = {"name": "detectors (deny)", "policy": "full",
             "detectors": ["sweep", "boundary", "ood", "prada", "volume"], "on_flag": "deny"}


def attackers(victim: str) -> list[dict[str, Any]]:
    kind = ZOO[victim].kind
    if kind == "linear":
        out = [{"name": "equation solving", "attack": "equation-solving", "budgets": [1000]},
               {"name": "label-only (adaptive)", "attack": "label-only",
                "params": {"method": "adaptive"}, "budgets": [1000]}]
    elif kind == "tree":
        out = [{"name": "path finding", "attack": "path-finding", "budgets": [20000]}]
    else:
        out = [{"name": "active learning", "attack": "active", "params": {"strategy": "margin"},
                "budgets": [1000]}]
    # Knockoff on the attacker's natural data where it has enough (the natural rows of the
    # pool, the only ones the audit's attackers draw: 449 on digits), else on synthetic queries.
    pool = len(attack_pool(load_victim(victim)))
    return [*out, {"name": "knockoff", "attack": "knockoff",
                   "params": {"source": "pool" if pool >= 1000 else "synthetic",
                              "checkpoints": [100, 300]}, "budgets": [1000]}]


def scenario(victim: str, seed: int) -> dict[str, Any]:
    policies = POLICIES + (TREE_POLICIES if ZOO[victim].kind == "tree" else [])
    return {"name": f"full audit: {victim}", "seed": seed, "price_per_1k": 1.0,
            "model_value": 20_000, "target": {"victim": victim},
            "attackers": attackers(victim),
            "defenses": [{"name": p, "policy": p} for p in policies] + [MONITORED],
            "benign": {"accounts": 10, "median_rows": 60}}


def run(victims: list[str], seed: int, out: Path, workers: int) -> tuple[float, list[Any]]:
    start = time.perf_counter()
    rows = []
    for v in victims:
        doc = run_audit(load_scenario(scenario(v, seed)), out / v, workers)
        write_report(doc, out / v)
        a = doc["analysis"]
        rows.append({"victim": v, "cells": len(doc["cells"]), "cached": doc["cells_cached"],
                     "seconds": doc["seconds"], "rating": a["rating"]["level"],
                     "cheapest_clone": a["defenses"][0]["cheapest_clone"],
                     "best_defense": max(a["defenses"], key=lambda d: d["protection"])["name"],
                     "ratings": {d["name"]: d["rating"] for d in a["defenses"]}})
        console.print(f"{v}: {len(doc['cells'])} cells, {doc['cells_cached']} cached, "
                      f"{doc['seconds']:.0f} s, rating {a['rating']['level']}")
    return time.perf_counter() - start, rows


def main() -> None:
    parser = arguments(__doc__, seed=0, workers=0, out=Path("results/full-audit"))
    parser.add_argument("--victims", nargs="*", default=[n for n in ZOO if not ZOO[n].watermark])
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)  # the first run starts cold
    first, rows = run(args.victims, args.seed, args.out, args.workers)
    second, again = run(args.victims, args.seed, args.out, args.workers)
    show("full audit (first run)", ["victim", "cells", "seconds", "rating (full)",
                                    "cheapest clone (full)", "most protective"],
         [[r["victim"], r["cells"], r["seconds"], r["rating"],
           "none" if r["cheapest_clone"] is None else
           f"${r['cheapest_clone']['usd']:.2f} ({r['cheapest_clone']['attacker']})",
           r["best_defense"]] for r in rows])
    cells = sum(r["cells"] for r in rows)
    console.print(f"first run: {cells} cells in {first:.0f} s ({first / 60:.1f} min); "
                  f"second run: {sum(r['cached'] for r in again)} of {cells} cells cached, "
                  f"{second:.1f} s")
    write("full_audit", {"seed": args.seed, "workers": args.workers, "cells": cells,
                         "first_run_seconds": first, "second_run_seconds": second,
                         "second_run_cached": sum(r["cached"] for r in again),
                         "victims": rows})


if __name__ == "__main__":
    main()
