"""Exact extraction of one-hidden-layer ReLU networks (critical points), seeds 0-4.

    python bench/relu_exact.py [--seeds 0 1 2 3 4] [--out relu_exact]

Victims: the built-in synth-mlp-d20 (20-32-4) and one-hidden-layer scikit-learn pipelines
(scaling, then ReLU units) of 16 to 64 units, built here as an owner would, all answering
full probabilities. Reported: hidden units found against the true count, queries, and the
largest error of the clone's log-ratios over 5,000 uniform points of the domain, against
2^-25 (Carlini et al. 2020 reach 2^-25 on a 10-15-15-1 network with 2^18.5 queries; this
attack covers one hidden layer only). Writes bench/results/relu_exact.json.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from harness import arguments, report

sys.path.insert(0, str(Path(__file__).parent.parent))

from modelshield.audit import run_cell
from modelshield.audit.evaluate import uniform_probe
from modelshield.victims import load_victim

OWNER = [(16, 3, 10), (32, 4, 16), (64, 5, 20)]  # hidden units, classes, features


def owner_mlp(hidden: int, classes: int, d: int, seed: int) -> Any:
    from sklearn.datasets import make_classification
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from modelshield.answer import ApiSpec
    from modelshield.victims.base import SklearnAdapter, Victim

    X, y = make_classification(3000, d, n_informative=d // 2, n_classes=classes,
                               n_clusters_per_class=1, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = make_pipeline(StandardScaler(), MLPClassifier(
            (hidden,), max_iter=500, random_state=seed)).fit(X[:1500], y[:1500])
    spec = ApiSpec(n_features=d, classes=tuple(map(str, range(classes))), low=X.min(axis=0),
                   high=X.max(axis=0), name=f"owner-{d}-{hidden}-{classes}")
    return Victim(spec.name, SklearnAdapter(model), spec, X[1500:2250], y[1500:2250],
                  X[2250:], X[:1500], kind="mlp")


def main() -> None:
    args = arguments(__doc__, seeds=range(5), out="relu_exact").parse_args()
    rows = []
    for seed in args.seeds:
        victims = [(load_victim("synth-mlp-d20", seed), 32)]
        victims += [(owner_mlp(h, c, d, seed), h) for h, c, d in OWNER]
        for v, hidden in victims:
            r = run_cell(v, "relu-exact", "full", 1_000_000, seed, uniform_points=5000)
            x = uniform_probe(v, 5000, seed + 11)
            p = v.predict(x).probabilities
            truth = np.log(p[:, 1:]) - np.log(p[:, :1])
            err = float(np.abs(r.clone.log_ratios(x) - truth).max()) if r.clone else None
            rows.append({"victim": v.name, "seed": seed, "hidden": hidden,
                         "found": r.info.get("hidden_units_found"), "queries": r.queries,
                         "status": r.status, "fidelity_test": r.fidelity_test,
                         "fidelity_uniform": r.fidelity_uniform, "max_log_ratio_error": err,
                         "below_2_pow_25": err is not None and err <= 2.0 ** -25,
                         "lines": r.info.get("lines")})
            print(rows[-1], flush=True)
    report(args.out, {"rows": rows, "all_below_2_pow_25": all(r["below_2_pow_25"]
                                                               for r in rows)},
           [(f"relu-exact: one-hidden-layer ReLU networks from full probabilities, seeds "
             f"{args.seeds}",
             ["victim", "seed", "units", "found", "queries", "fid test", "fid unif",
              "max log-ratio error", "<= 2^-25"],
             [[r["victim"], r["seed"], r["hidden"], r["found"], r["queries"],
               r["fidelity_test"], r["fidelity_uniform"], r["max_log_ratio_error"],
               r["below_2_pow_25"]] for r in rows])])


if __name__ == "__main__":
    main()
