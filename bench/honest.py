"""Honest customers under a deny tier calibrated on the owner's data: the share of each
kind of customer that is suspended, on the ten built-in classifiers and on three models
the owner trains apart from the zoo and serves from files.

    python bench/honest.py [--seeds 0 1 2 3 4] [--accounts 30] [--workers 2]

Each model sits behind the gateway's Shield with all five detectors, ``on_flag: deny`` and
``fpr: 0.001`` (the tier's per-account false-positive budget), calibrated on the owner's
held-out rows. Customers of every archetype (modelshield.data.honest: iid, narrow,
what-if, batch, repeat, burst) then send the owner's *other* held-out rows, which the
calibration never saw. A customer is suspended when any request is refused with 403.

The owner's models: a scikit-learn pipeline (scaler + logistic regression), an MLP and
gradient-boosted trees, trained on a generated task (16 features, 4 classes; 50% train,
25% calibration, 25% customers) that no built-in victim uses, saved with joblib and served
from the file with the contract in the config. Writes bench/results/honest.json.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# One thread per process: gradient boosting's OpenMP threads spin against the other worker.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import joblib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from harness import arguments, report, run_cells

from modelshield.data.honest import ARCHETYPES, honest_accounts
from modelshield.defenses.detectors import without_uncalibrated
from modelshield.errors import Denied
from modelshield.serve.factory import build_shield
from modelshield.victims import load_victim
from modelshield.victims.zoo import ZOO

BUILTIN = [n for n, e in ZOO.items() if not e.watermark]
OWNED = ["owner-pipeline", "owner-mlp", "owner-boosted"]
DETECTORS: list[Any] = ["sweep", "boundary", "ood", "prada", "volume"]
FPR = 0.001


def owner_model(name: str, seed: int, folder: Path) -> tuple[dict[str, Any], np.ndarray]:
    """(model section of the config, the customers' rows) of one of the owner's models."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(n_samples=4000, n_features=16, n_informative=8, n_redundant=2,
                               n_classes=4, n_clusters_per_class=2, class_sep=1.2,
                               random_state=1000 + seed)
    X = np.round(X, 3)
    n = len(X)
    train, calib, honest = slice(0, n // 2), slice(n // 2, 3 * n // 4), slice(3 * n // 4, n)
    est = {"owner-pipeline": lambda: make_pipeline(StandardScaler(),
                                                   LogisticRegression(max_iter=3000)),
           "owner-mlp": lambda: make_pipeline(StandardScaler(), MLPClassifier(
               (64, 32), max_iter=2000, early_stopping=True, random_state=seed)),
           "owner-boosted": lambda: HistGradientBoostingClassifier(random_state=seed)}[name]()
    est.fit(X[train], y[train])
    joblib.dump(est, folder / f"{name}.joblib")
    np.savez(folder / f"{name}-calibration.npz", X=X[calib])
    model = {"file": str(folder / f"{name}.joblib"), "name": name,
             "classes": ["a", "b", "c", "d"], "low": X.min(0).tolist(),
             "high": X.max(0).tolist(), "calibration": str(folder / f"{name}-calibration.npz")}
    return model, X[honest]


def run(job: tuple[str, int, int]) -> dict[str, Any]:
    name, seed, accounts = job
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if name in OWNED:
            model, rows = owner_model(name, seed, folder)
            low = np.asarray(model["low"])
            high, integer = np.asarray(model["high"]), False
        else:
            v = load_victim(name, seed)
            model, rows = {"builtin": name, "seed": seed}, v.honest
            low, high, integer = v.spec.low, v.spec.high, v.spec.integer_features
        shield, left = without_uncalibrated(lambda detectors: build_shield({
            "model": model, "audit_url": f"sqlite:///{tmp}/audit.db",
            "tiers": {"t": {"detectors": detectors, "on_flag": "deny", "fpr": FPR,
                            "max_batch": 1000}}}), DETECTORS)
        left_out = [x["detector"] for x in left]  # prada on a small data set, named
        labels = shield.model.predict(rows).labels
        by: dict[str, Any] = {}
        try:
            for i, archetype in enumerate(ARCHETYPES):
                suspended, reasons, sent = 0, [], 0
                for acc in honest_accounts(rows, archetype, accounts, seed=seed * 100 + i,
                                           labels=labels, low=low, high=high, integer=integer):
                    key = shield.store.create_key("t")[0]
                    try:
                        for req in acc.chunked(1000).requests:
                            sent += len(req)
                            shield.handle(key, req)
                    except Denied as exc:
                        suspended += 1
                        reasons.append(exc.detail)
                by[archetype] = {"accounts": accounts, "suspended": suspended, "rows": sent,
                                 "reasons": reasons[:5]}
            thresholds = {d.name: d.calibration() for d in shield.detectors["t"]}
        finally:
            shield.close()
    return {"model": name, "seed": seed, "natural_rows": len(rows), "by_archetype": by,
            "detectors_left_out": left_out, "thresholds": thresholds,
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = arguments(__doc__, seeds=[0, 1, 2, 3, 4], workers=2)
    parser.add_argument("--accounts", type=int, default=30, help="accounts per archetype")
    parser.add_argument("--models", nargs="+", default=BUILTIN + OWNED)
    args = parser.parse_args()
    jobs = [(m, s, args.accounts) for s in args.seeds for m in args.models]
    results = run_cells(run, jobs, args.workers, progress=lambda r: (
        f"{r['model']:>16} seed {r['seed']}: worst archetype "
        f"{max(v['suspended'] for v in r['by_archetype'].values())}/{args.accounts} "
        f"suspended ({r['seconds']:.0f} s)"))
    rows = []
    for m in args.models:
        mine = [r for r in results if r["model"] == m]
        cells = []
        for a in ARCHETYPES:
            s = sum(r["by_archetype"][a]["suspended"] for r in mine)
            n = sum(r["by_archetype"][a]["accounts"] for r in mine)
            cells.append(f"{s}/{n}")
        left = sorted({d for r in mine for d in r["detectors_left_out"]})
        rows.append([m, *cells, ", ".join(left) or "-"])
    total = {a: (sum(r["by_archetype"][a]["suspended"] for r in results),
                 sum(r["by_archetype"][a]["accounts"] for r in results)) for a in ARCHETYPES}
    rows.append(["all", *[f"{s}/{n} ({s / n:.2%})" for s, n in total.values()], ""])
    report("honest", {"seeds": args.seeds, "accounts_per_archetype": args.accounts,
                      "fpr": FPR, "detectors": DETECTORS, "results": results,
                      "totals": {a: {"suspended": s, "accounts": n}
                                 for a, (s, n) in total.items()}},
           [(f"honest accounts suspended (deny tier, fpr {FPR}, seeds {args.seeds})",
             ["model", *ARCHETYPES, "left out"], rows)])


if __name__ == "__main__":
    main()
