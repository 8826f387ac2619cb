"""Where the knockoff student's accuracy comes from: input standardisation and epochs.

    python bench/knockoff_ablation.py [--seeds 0 1 2] [--budgets 100 300 1000 3000]
                                      [--families logistic mlp deep-mlp boosting]

The victims and candidate rows of bench/knockoff_vs_art.py (its ``build`` and
``candidates``). Each victim answers full probabilities for the first ``budget`` rows of a
seeded shuffle of the candidates, once; then the student ``knockoff`` ships (a 128-unit
MLP on the scores matched as logits, clipped at 1e-6) is trained on those answers in
variants that change one thing each:

- shipped: inputs centred and scaled by the attacker's whole pool (each feature's spread,
  floored at 1), ``epochs_for(n, 200)`` passes (200 up to 1,000 rows, fewer above);
- queried rows: centred and scaled by the queried rows only;
- raw inputs: no centring or scaling;
- 200 epochs: 200 passes at every size (differs from shipped only above 1,000 rows);
- 50 epochs: a quarter of the passes.

Fidelity is agreement with the victim on its test rows; the table is the mean over data
sets and seeds per family and budget, with each variant's difference to shipped. The loss
and the student family are ablated in bench/knockoff_vs_art.py. Writes
bench/results/knockoff_ablation.json.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from _common import show, write
from knockoff_vs_art import DATA, HIDDEN, build, candidates

VARIANTS = ("shipped", "queried rows", "raw inputs", "200 epochs", "50 epochs")


def train(variant: str, x: np.ndarray, y: np.ndarray, pool: np.ndarray, n_classes: int,
          seed: int) -> Any:
    from modelshield.attacks._students import epochs_for
    from modelshield.models import TorchMLPClassifier

    reference: np.ndarray | None = pool
    epochs = epochs_for(len(x), 200)
    if variant == "queried rows":
        reference = None
    elif variant == "raw inputs":
        reference = np.zeros((2, x.shape[1]))  # mean 0, spread floored at 1: no change
    elif variant == "200 epochs":
        epochs = 200
    elif variant == "50 epochs":
        epochs = max(1, epochs // 4)
    return TorchMLPClassifier(HIDDEN, n_classes=n_classes, epochs=epochs, loss="logits",
                              logit_floor=1e-6, reference=reference,
                              random_state=seed).fit(x, y)


def main() -> None:
    from modelshield.audit.evaluate import agreement

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", type=int, nargs="+", default=[100, 300, 1000, 3000])
    ap.add_argument("--families", nargs="+", default=["logistic", "mlp", "deep-mlp",
                                                      "boosting"])
    ap.add_argument("--data", nargs="+", default=list(DATA))
    args = ap.parse_args()
    rows = []
    for family in args.families:
        for data in args.data:
            for seed in args.seeds:
                victim = build(family, data, seed)
                n_classes = len(victim.spec.classes)
                for budget in args.budgets:
                    pool = candidates(victim, budget, seed)
                    order = np.random.default_rng(seed).permutation(len(pool))[:budget]
                    x = pool[order]
                    y = victim.predict(x).probabilities
                    row: dict[str, Any] = {"family": family, "data": data, "seed": seed,
                                           "budget": budget}
                    for variant in VARIANTS:
                        clone = train(variant, x, y, pool, n_classes, seed)
                        row[variant] = agreement(clone, victim, victim.X_test)
                    rows.append(row)
                    print({k: (round(v, 4) if isinstance(v, float) else v)
                           for k, v in row.items()}, flush=True)
    summary = []
    for family in args.families:
        for budget in args.budgets:
            cell = [r for r in rows if r["family"] == family and r["budget"] == budget]
            means = {v: float(np.mean([r[v] for r in cell])) for v in VARIANTS}
            summary.append({"family": family, "budget": budget, **means})
    show("knockoff's student: one change at a time (mean test fidelity; shipped, then the "
         "difference)", ["family", "queries", *VARIANTS],
         [[s["family"], s["budget"], s["shipped"],
           *[f"{s[v] - s['shipped']:+.4f}" for v in VARIANTS[1:]]] for s in summary])
    write("knockoff_ablation", {"seeds": args.seeds, "data": args.data, "rows": rows,
                                "summary": summary})


if __name__ == "__main__":
    main()
