"""Where the knockoff student's accuracy comes from: input standardisation and epochs.

    python bench/knockoff_ablation.py [--seeds 0 1 2] [--budgets 100 300 1000 3000]
                                      [--families logistic mlp deep-mlp boosting]

The victims and candidate rows of bench/knockoff_vs_art.py (its ``build`` and
``candidates``). Each victim answers full probabilities for the first ``budget`` rows of a
seeded shuffle of the candidates, once; then the student ``knockoff`` ships (a 128-unit
MLP on the scores matched as logits, clipped at 1e-6) is trained on those answers in
variants that change one thing each:

- shipped: inputs centred and scaled by the attacker's whole pool (each feature's spread,
  floored at ``SCALE_FLOOR``, 0.01; it was 1 before the floor was tuned with this script),
  ``epochs_for(n, 200)`` passes (200 up to 1,000 rows, fewer above);
- queried rows: centred and scaled by the queried rows only;
- raw inputs: no centring or scaling;
- 200 epochs: 200 passes at every size (differs from shipped only above 1,000 rows);
- 50 epochs: a quarter of the passes.

More variants, by ``--variants`` (the scale floor and the loss):

- floor F: each feature's spread floored at F instead (ART standardises with 1e-3);
- cross-entropy: the scores by soft cross-entropy, as ART and the papers train;
- cross-entropy, floor F: both;
- logits + cross-entropy: the sum of the two losses;
- 3 seeds, cross-entropy, 3 seeds: the mean of three students' scores, each trained from
  another seed (``MeanEnsemble.seeds``);
- logits and cross-entropy averaged: the mean of the shipped student's scores and those of
  the one trained by cross-entropy (logits and constant-rate cross-entropy averaged: that
  one with a constant rate);
- twice the epochs, cross-entropy, twice the epochs: ``epochs_for(n, 400)`` passes (400 up
  to 1,000 rows);
- constant rate, cross-entropy, constant rate: Adam's learning rate held constant instead
  of annealed (as ART's PyTorchClassifier trains); either with ", 3 seeds": the mean of
  three such students;
- forest: a random forest on the labels (knockoff's forest when only labels come back);
  forest on scores: extra trees regressing the scores (its forest when scores come back,
  the default student for piecewise-constant answers); boosting: gradient boosting on the
  labels; forest and cross-entropy averaged: the mean of the random forest's scores and the
  cross-entropy student's.

Fidelity is agreement with the victim on its test rows; the table is the mean over data
sets and seeds per family and budget, with each variant's difference to shipped. The loss
and the student family are ablated in bench/knockoff_vs_art.py. Writes
bench/results/knockoff_ablation.json.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from harness import arguments, show, write
from knockoff_vs_art import DATA, HIDDEN, build, candidates

VARIANTS = ("shipped", "queried rows", "raw inputs", "200 epochs", "50 epochs")
MORE = ("floor 1", "floor 0.1", "floor 0.01", "floor 0.001", "cross-entropy",
        "cross-entropy, floor 0.001", "logits + cross-entropy", "3 seeds",
        "cross-entropy, 3 seeds", "logits and cross-entropy averaged", "forest",
        "forest and cross-entropy averaged", "constant rate", "cross-entropy, constant rate",
        "constant rate, 3 seeds", "cross-entropy, constant rate, 3 seeds", "forest on scores",
        "boosting", "twice the epochs", "cross-entropy, twice the epochs",
        "logits and constant-rate cross-entropy averaged")


def train(variant: str, x: np.ndarray, y: np.ndarray, pool: np.ndarray, n_classes: int,
          seed: int) -> Any:
    from modelshield.models import MeanEnsemble

    if variant.startswith("logits and ") and variant.endswith("averaged"):
        other = "cross-entropy, constant rate" if "constant-rate" in variant else "cross-entropy"
        return MeanEnsemble([student(v, x, pool, n_classes, seed)
                             for v in ("shipped", other)]).fit(x, y)
    if variant.startswith("forest") or variant == "boosting":
        from sklearn.frozen import FrozenEstimator

        from modelshield.attacks._students import FOREST_TREES, _ensemble
        from modelshield.models import AllClassesClassifier, ScoreForestClassifier

        if variant == "forest on scores":
            return ScoreForestClassifier(FOREST_TREES, n_classes=n_classes,
                                         random_state=seed).fit(x, y)
        if variant == "boosting":
            return AllClassesClassifier(_ensemble("boosting", seed), n_classes).fit(
                x, y.argmax(axis=1))
        forest = AllClassesClassifier(_ensemble("forest", seed), n_classes).fit(
            x, y.argmax(axis=1))
        if variant == "forest":
            return forest
        mlp = student("cross-entropy", x, pool, n_classes, seed).fit(x, y)
        # the forest learns the labels, the MLP the scores: each is fitted, then averaged
        return MeanEnsemble([FrozenEstimator(forest), FrozenEstimator(mlp)]).fit(x, y)
    if variant.endswith("3 seeds"):
        one = student(variant.replace(", 3 seeds", "").replace("3 seeds", "shipped"), x, pool,
                      n_classes, seed)
        return MeanEnsemble.seeds(one, 3, seed).fit(x, y)
    return student(variant, x, pool, n_classes, seed).fit(x, y)


def student(variant: str, x: np.ndarray, pool: np.ndarray, n_classes: int, seed: int) -> Any:
    """The (unfitted) student of one single-model variant."""
    from modelshield.attacks._students import SCALE_FLOOR, epochs_for
    from modelshield.models import TorchMLPClassifier

    reference: np.ndarray | None = pool
    epochs = epochs_for(len(x), 200)
    schedule = "constant" if variant.endswith("constant rate") else "cosine"
    loss = ("kl" if variant.startswith("cross-entropy") else
            "logits+kl" if variant == "logits + cross-entropy" else "logits")
    floor = float(variant.rsplit("floor ", 1)[1]) if "floor " in variant else SCALE_FLOOR
    if variant == "queried rows":
        reference = None
    elif variant == "raw inputs":
        reference = np.zeros((2, x.shape[1]))  # mean 0, spread floored at 1: no change
        floor = 1.0
    elif variant == "200 epochs":
        epochs = 200
    elif variant == "50 epochs":
        epochs = max(1, epochs // 4)
    if variant.endswith("twice the epochs"):
        epochs = epochs_for(len(x), 400)
    return TorchMLPClassifier(HIDDEN, n_classes=n_classes, epochs=epochs, loss=loss,
                              logit_floor=1e-6, reference=reference, scale_floor=floor,
                              schedule=schedule, random_state=seed)


def main() -> None:
    from modelshield.audit.evaluate import agreement

    ap = arguments(__doc__.split("\n")[0], seeds=[0, 1, 2])
    ap.add_argument("--budgets", type=int, nargs="+", default=[100, 300, 1000, 3000])
    ap.add_argument("--families", nargs="+", default=["logistic", "mlp", "deep-mlp",
                                                      "boosting"])
    ap.add_argument("--data", nargs="+", default=list(DATA),
                    help="also 'wine' (not in the comparison with ART: a tuning set)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS),
                    choices=[*VARIANTS, *MORE], metavar="VARIANT",
                    help=f"'shipped' and any of {', '.join(map(repr, (*VARIANTS[1:], *MORE)))}")
    ap.add_argument("--out", default="knockoff_ablation",
                    help="name of the JSON under bench/results/ (default knockoff_ablation)")
    args = ap.parse_args()
    variants = ["shipped", *[v for v in args.variants if v != "shipped"]]
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
                    for variant in variants:
                        clone = train(variant, x, y, pool, n_classes, seed)
                        row[variant] = agreement(clone, victim, victim.X_test)
                    rows.append(row)
                    print({k: (round(v, 4) if isinstance(v, float) else v)
                           for k, v in row.items()}, flush=True)
    summary = []
    for family in args.families:
        for budget in args.budgets:
            cell = [r for r in rows if r["family"] == family and r["budget"] == budget]
            means = {v: float(np.mean([r[v] for r in cell])) for v in variants}
            summary.append({"family": family, "budget": budget, **means})
    show("knockoff's student: one change at a time (mean test fidelity; shipped, then the "
         "difference)", ["family", "queries", *variants],
         [[s["family"], s["budget"], s["shipped"],
           *[f"{s[v] - s['shipped']:+.4f}" for v in variants[1:]]] for s in summary])
    write(args.out, {"seeds": args.seeds, "data": args.data, "variants": variants,
                     "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
