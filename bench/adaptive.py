"""Plain against adaptive attackers, defense by defense: does a defense hold against an
attacker who knows it?

    python bench/adaptive.py [--victim digits-mlp] [--budget 1000] [--workers 2]

One audit (the same runner, cells and report as `modelshield audit`) of one victim under
six defenses: the detectors calibrated on the owner's data with ``on_flag: deny``, keyed
noise (noise:0.05), coarse scores (round:1), Adaptive Misinformation (tau at the 5th
percentile of the owner's calibration rows), Prediction Poisoning (``mad:eps=0.5``) and a
rate limit of 200 rows a day (requests of at most 100 rows). Each plain attacker is
paired with its adaptive counterpart:

- knockoff on the natural pool, against the same over 10 keys of 10 owners and networks;
  every attacker that draws the pool spends at most the natural rows it holds (the
  audit's attackers draw only those: 449 for digits, whose augmented rows no customer
  sends), the others the whole budget;
- knockoff on synthetic queries, against the same over 10 keys with 30% natural rows
  mixed in (the rate tests and PRADA see a diluted stream);
- knockoff trained on the scores as they come (``labels: soft``), against the one that
  chooses soft or hard labels and the student on held-out answers (``student: auto``);
- Jacobian augmentation, against the same over 10 keys;
- knockoff with an MLP student that stops at the first refusal, against the same paced
  to the rate limits (``pace: true``: it waits out each 429 on the audit's clock).

The report (results/adaptive_BUDGET/report.html, not committed) rates each defense by its
worst attacker and lists the adaptations that beat it. Writes bench/results/adaptive.json
(the table; adaptive_BUDGET.json for a budget other than 1,000).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from harness import arguments, show, write

from modelshield.audit.analysis import duration
from modelshield.audit.report import write_report
from modelshield.audit.runner import attack_pool, run_audit
from modelshield.audit.scenario import load_scenario
from modelshield.victims import load_victim

PAIRS = [  # (plain, adaptive): name, attack, params, extra fields
    (("knockoff pool", "knockoff", {"source": "pool"}, {}),
     ("knockoff pool, 10 keys", "knockoff", {"source": "pool"}, {"keys": 10})),
    (("knockoff synthetic", "knockoff", {"source": "synthetic"}, {}),
     ("knockoff synthetic, 10 keys, 30% natural", "knockoff", {"source": "synthetic"},
      {"keys": 10, "mix_natural": 0.3})),
    (("knockoff soft labels", "knockoff", {"source": "pool", "labels": "soft"}, {}),
     ("knockoff, labels and student chosen", "knockoff", {"source": "pool", "student": "auto"},
      {})),
    (("jacobian", "jacobian", {}, {}),
     ("jacobian, 10 keys", "jacobian", {}, {"keys": 10})),
    (("knockoff pool, one pass", "knockoff", {"source": "pool", "student": "mlp"}, {}),
     ("knockoff pool, paced", "knockoff", {"source": "pool", "student": "mlp"},
      {"pace": True})),
]


def main() -> None:
    parser = arguments(__doc__, seed=0, workers=2)
    parser.add_argument("--victim", default="digits-mlp")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--pairs", nargs="+", metavar="PLAIN",
                        help="only these pairs, by the plain attacker's name (all by default)")
    parser.add_argument("--defenses", nargs="+", metavar="NAME",
                        help="only these defenses, by name (all by default)")
    args = parser.parse_args()
    pairs = [p for p in PAIRS if not args.pairs or p[0][0] in args.pairs]
    v = load_victim(args.victim, args.seed)
    tau = float(np.quantile(v.predict(v.calibration).probabilities.max(axis=1), 0.05))
    natural = len(attack_pool(v))  # the audit's natural-data attackers draw only these
    attackers = _attackers(pairs, args.budget, natural)
    defenses = [
        {"name": "detectors (deny)", "policy": "full",
         "detectors": ["sweep", "boundary", "ood", "prada", "volume"], "on_flag": "deny"},
        {"name": "noise:0.05", "policy": "noise:0.05"},
        {"name": "round:1", "policy": "round:1"},
        {"name": "misinform (5%)", "policy": f"misinform:tau={tau:.4f},nu=50"},
        {"name": "mad:eps=0.5", "policy": "mad:eps=0.5"},
        {"name": "rate limit (200 rows a day)", "max_batch": 100,
         "limits": {"rows": "200/day"}}]
    scenario = load_scenario({
        "name": f"plain and adaptive attackers: {args.victim}", "seed": args.seed,
        "target": {"victim": args.victim}, "attackers": attackers,
        "defenses": [d for d in defenses if not args.defenses or d["name"] in args.defenses],
        "benign": {"accounts": 5}, "adaptive": False})  # the pairs above, no others
    out = Path("results") / f"adaptive_{args.budget}"  # cells, report.html and summary.md
    doc = run_audit(scenario, out, args.workers)
    write_report(doc, out)
    rows, table = [], []
    for d in doc["analysis"]["defenses"]:
        by = {r["attacker"]: r for r in d["attackers"]}
        for (plain, *_), (adaptive, *_) in pairs:
            p, a = by[plain], by[adaptive]
            row = {"defense": d["name"], "plain": plain, "adaptive": adaptive,
                   "plain_status": p["status"], "plain_blocked_at": p["blocked_at"],
                   "adaptive_waited_s": a["waited_s"], "adaptive_q90": a["q90"],
                   "plain_fidelity": p["best_fidelity"], "adaptive_fidelity": a["best_fidelity"],
                   "plain_caught": p["caught_before_90"], "adaptive_caught": a["caught_before_90"],
                   "plain_uncaught_clone": p["uncaught_clone"],
                   "adaptive_uncaught_clone": a["uncaught_clone"]}
            rows.append(row)
            table.append([d["name"], plain, p["best_fidelity"], _flag(p), adaptive,
                          a["best_fidelity"], _flag(a)])
        table.append([d["name"], "rating", d["rating"], "", "broken by",
                      ", ".join(b["adaptive"] for b in d["broken_by"]) or "-", ""])
    show(f"{args.victim}: plain and adaptive attackers at {args.budget} queries",
         ["defense", "plain", "fidelity", "flagged", "adaptive", "fidelity", "flagged"], table)
    name = "adaptive" if args.budget == 1000 else f"adaptive_{args.budget}"
    if args.pairs or args.defenses:
        name += "_subset"
    write(name, {"victim": args.victim, "seed": args.seed, "budget": args.budget,
                 "natural_pool_rows": natural, "pool_budget": min(args.budget, natural),
                 "tau": tau, "rows": rows,
                 "ratings": {d["name"]: d["rating"] for d in doc["analysis"]["defenses"]},
                 "broken_by": {d["name"]: d["broken_by"] for d in doc["analysis"]["defenses"]}})


def _attackers(pairs: list[Any], budget: int, natural: int) -> list[dict[str, Any]]:
    """The scenario's attackers: those drawing from the natural pool spend at most its rows
    (an attacker with natural data has no more of it), the others ``budget``."""
    return [{"name": n, "attack": a, "params": p, **extra,
             "budgets": [min(budget, natural) if p.get("source") == "pool" else budget]}
            for pair in pairs for n, a, p, extra in pair]


def _flag(r: dict[str, Any]) -> str:
    f = r["first_flag"]
    out = "never" if f is None else f"{f['query']} ({f['detector']})"
    if r["status"] == "blocked":
        out += f", blocked at {r['blocked_at']}"
    return out + (f", waited {duration(r['waited_s'])}" if r.get("waited_s") else "")


if __name__ == "__main__":
    main()
