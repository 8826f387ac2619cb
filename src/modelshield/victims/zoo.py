"""The built-in victims, trained in code from data that ships with scikit-learn.

Each is built once per seed and cached (joblib) under ``$MODELSHIELD_CACHE`` or
``~/.cache/modelshield``, named by its build tag: the code that builds it and the versions
of the libraries it depends on (victims/cache.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from modelshield.answer import ApiSpec, FloatArray
from modelshield.data.datasets import Split, load_split
from modelshield.errors import ConfigError
from modelshield.models import make_estimator, torch_threads
from modelshield.registry import Registry
from modelshield.victims.base import MembershipTask, SklearnAdapter, Victim
from modelshield.victims.cache import build_tag, cache_dir, cached
from modelshield.victims.entangled import EntangledWatermark, embed_entangled
from modelshield.victims.trainmark import TriggerSet, embed_trigger_set, trigger_set


@dataclass(frozen=True)
class ZooEntry:
    """A built-in victim: its data, how its model is trained, and a one-line summary."""

    summary: str
    data: str
    kind: str
    train: Callable[[Split, int], Any]
    data_args: tuple[tuple[str, int], ...] = ()
    watermark: str = ""  # "trigger-set" (trainmark.py) or "entangled" (entangled.py)
    fractions: tuple[float, float] = (0.5, 0.25)  # training and pool shares (datasets.py)
    recipe: str = ""  # how it was trained (models.make_estimator), where a recipe made it
    revision: int = 0  # raised when how it is built changes, so that a copy cached by an
    # older build is built again instead of loaded


ZOO: Registry[ZooEntry] = Registry("victim")


def load_victim(name: str, seed: int = 0, cache: bool = True) -> Victim:
    """Build (or load from the cache) the built-in victim ``name``."""
    entry = ZOO[name]
    split = _split(entry, seed)
    estimator = _cached_fit(name, seed, entry, split) if cache else _train(entry, split, seed)
    spec = _spec(split, name, entry.kind)
    return Victim(
        name=name,
        model=SklearnAdapter(estimator),
        spec=spec,
        X_test=split.X_test,
        y_test=split.y_test,
        pool=split.pool,
        X_train=split.X_train,
        kind=entry.kind,
        description=entry.summary,
        parameters=_parameters(estimator) if entry.kind == "linear" else {},
    )


def _split(entry: ZooEntry, seed: int) -> Split:
    return load_split(entry.data, seed=seed, fractions=entry.fractions, **dict(entry.data_args))


def membership_task(name: str, seed: int = 0) -> MembershipTask:
    """The members, non-members and attacker's population of the built-in victim ``name``."""
    entry = ZOO[name]
    split = _split(entry, seed)
    assert split.y_pool is not None
    return MembershipTask(
        victim=name, members=split.X_train, member_labels=split.y_train,
        non_members=split.X_test, non_member_labels=split.y_test, population=split.pool,
        population_labels=split.y_pool, recipe=entry.recipe)


def wrap_estimator(
    estimator: Any, X_test: FloatArray, y_test: Any, *, name: str = "model",
    pool: FloatArray | None = None, low: FloatArray | None = None,
    high: FloatArray | None = None,
) -> Victim:
    """Make a Victim of any fitted scikit-learn classifier and its test data.

    The domain defaults to the range of the test data; the pool defaults to empty.
    """
    X_test = np.asarray(X_test, dtype=np.float64)
    classes = tuple(str(c) for c in getattr(estimator, "classes_", range(2)))
    labels = np.searchsorted(np.asarray(getattr(estimator, "classes_", [0, 1])), y_test)
    spec = ApiSpec(
        n_features=X_test.shape[1],
        classes=classes,
        low=X_test.min(axis=0) if low is None else np.asarray(low, dtype=np.float64),
        high=X_test.max(axis=0) if high is None else np.asarray(high, dtype=np.float64),
        name=name,
    )
    adapter = SklearnAdapter(estimator)
    return Victim(
        name=name, model=adapter, spec=spec, X_test=X_test,
        y_test=np.asarray(labels, dtype=np.int64),
        pool=np.empty((0, spec.n_features)) if pool is None else np.asarray(pool, float),
        X_train=np.empty((0, spec.n_features)),
        kind="tree" if adapter.tree is not None else "model",
    )


def _spec(split: Split, name: str, kind: str) -> ApiSpec:
    return ApiSpec(n_features=split.X_train.shape[1], classes=split.classes, low=split.low,
                   high=split.high, accepts_missing=kind == "tree",
                   integer_features=split.integer_features, name=name)


BUILTIN_TRIGGER_SECRET = "modelshield-built-in-trigger-set"
"""The key of the built-in victims' trigger sets. Public: they are for demonstrations and
benchmarks; an owner draws a trigger set from a secret of their own."""


def builtin_trigger_set(name: str, seed: int = 0) -> TriggerSet:
    """The trigger set a built-in victim marked "trigger-set" was trained with."""
    entry = ZOO[name]
    if entry.watermark != "trigger-set":
        raise ConfigError(f"{name!r} has no trigger set; the built-in victims with one are: "
                          f"{', '.join(n for n in ZOO if ZOO[n].watermark)}.")
    split = _split(entry, seed)
    return trigger_set(f"{BUILTIN_TRIGGER_SECRET}/{name}/{seed}", _spec(split, name, entry.kind),
                       50)


BUILDER = ("modelshield.victims.zoo", "modelshield.models", "modelshield.data.datasets",
           "modelshield.victims.entangled", "modelshield.victims.trainmark")
"""The modules whose code builds a built-in victim: a change to one builds them again."""


def victim_path(name: str, seed: int = 0, entry: ZooEntry | None = None) -> Path:
    """Where the built-in victim ``name`` of ``seed`` is cached (victims/cache.py)."""
    revision = (entry or ZOO[name]).revision
    rev = f"-r{revision}" if revision else ""
    return cache_dir() / "victims" / f"{name}-seed{seed}{rev}-{build_tag(*BUILDER)}.joblib"


def _cached_fit(name: str, seed: int, entry: ZooEntry, split: Split) -> Any:
    return cached(victim_path(name, seed, entry),
                  build=lambda tmp: joblib.dump(_train(entry, split, seed), tmp),
                  load=joblib.load)


def _train(entry: ZooEntry, split: Split, seed: int) -> Any:
    with torch_threads(1):  # the same weights on every machine (models.torch_threads)
        return entry.train(split, seed)


def _parameters(estimator: Pipeline) -> dict[str, FloatArray]:
    """A scaled logistic regression's weights in the raw input space."""
    scaler, lr = estimator.steps[0][1], estimator.steps[-1][1]
    coef = lr.coef_ / scaler.scale_
    intercept = lr.intercept_ - coef @ scaler.mean_
    return {"coef": coef, "intercept": intercept}


def _lr(split: Split, seed: int) -> Any:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=10_000))
    return model.fit(split.X_train, split.y_train)


def _mlp(hidden: tuple[int, ...]) -> Callable[[Split, int], Any]:
    def train(split: Split, seed: int) -> Any:
        mlp = MLPClassifier(
            hidden_layer_sizes=hidden, activation="relu", alpha=1e-3,
            max_iter=3000, random_state=seed,
        )
        return make_pipeline(StandardScaler(), mlp).fit(split.X_train, split.y_train)

    return train


def train_mark(name: str, seed: int = 0) -> TriggerSet | EntangledWatermark:
    """The train-time watermark a built-in victim marked in ``modelshield victims`` was
    trained with: its trigger set, or its entangled watermark (which depends on the trained
    network, so it is stored with it and built with it)."""
    entry = ZOO[name]
    if entry.watermark == "trigger-set":
        return builtin_trigger_set(name, seed)
    if entry.watermark == "entangled":
        wm = _cached_fit(name, seed, entry, _split(entry, seed)).entangled_watermark_
        assert isinstance(wm, EntangledWatermark)
        return wm
    raise ConfigError(f"{name!r} was trained without a watermark; the built-in victims with "
                      f"one are: {', '.join(n for n, e in ZOO.items() if e.watermark)}")


BUILTIN_ENTANGLED_SECRET = "modelshield-built-in-entangled"
"""The key of the built-in victims' entangled watermarks (public, like the trigger sets')."""


def _mlp_entangled(name: str, hidden: tuple[int, ...]) -> Callable[[Split, int], Any]:
    """A ReLU network trained with an entangled watermark (Jia et al. 2021)."""
    def train(split: Split, seed: int) -> Any:
        net, wm = embed_entangled(split.X_train, split.y_train,
                                  f"{BUILTIN_ENTANGLED_SECRET}/{name}/{seed}", hidden=hidden,
                                  n_classes=len(split.classes), random_state=seed)
        net.entangled_watermark_ = wm
        return net

    return train


def _mlp_marked(name: str, hidden: tuple[int, ...]) -> Callable[[Split, int], Any]:
    """An MLP trained with a keyed trigger set among its data (Adi et al. 2018)."""
    def train(split: Split, seed: int) -> Any:
        mlp = MLPClassifier(hidden_layer_sizes=hidden, activation="relu", alpha=1e-3,
                            max_iter=3000, random_state=seed)
        return embed_trigger_set(make_pipeline(StandardScaler(), mlp), split.X_train,
                                 split.y_train, builtin_trigger_set(name, seed))

    return train


def _tree(max_leaf_nodes: int | None, max_depth: int | None = None
          ) -> Callable[[Split, int], Any]:
    def train(split: Split, seed: int) -> Any:
        tree = DecisionTreeClassifier(max_leaf_nodes=max_leaf_nodes, max_depth=max_depth,
                                      random_state=seed)
        return tree.fit(split.X_train, split.y_train)

    return train


def _recipe(recipe: str) -> Callable[[Split, int], Any]:
    """Train from a recipe (models.make_estimator), seeded by the victim's seed."""
    def train(split: Split, seed: int) -> Any:
        est = make_estimator(recipe, n_classes=len(split.classes), random_state=seed)
        return est.fit(split.X_train, split.y_train)

    return train


# The recipe of each victim (models.make_estimator): what a membership-inference attacker who
# knows how the model was trained (not on what) trains its shadow models with. The older
# victims train through their own functions; their recipe builds the same estimator.
_LR = "logistic:C=1"


def _sk_mlp(hidden: str) -> str:
    return f"sk-mlp:hidden={hidden},alpha=0.001,max_iter=3000"


_OVERFIT = "mlp:hidden=256-256,epochs=100"
_DP = "mlp:hidden=256-256,epochs=30,batch_size=128,lr=0.003,max_grad_norm=2,epsilon={}"
_MI = (0.25, 0.5)  # as many non-members as members; the attacker's population twice that

for _name, _entry in {
    "breast-cancer-lr": ZooEntry(
        "binary logistic regression, breast cancer (d=30)", "breast-cancer", "linear", _lr,
        recipe=_LR),
    "digits-lr": ZooEntry(
        "multinomial logistic regression, digits (d=64, 10 classes)", "digits", "linear", _lr,
        recipe=_LR),
    "digits-mlp": ZooEntry(
        "one-hidden-layer ReLU MLP, 20 units, digits (Tramèr's setting)", "digits", "mlp",
        _mlp((20,)), recipe=_sk_mlp("20")),
    "digits-mlp-deep": ZooEntry(
        "ReLU MLP 128-64, digits", "digits", "mlp", _mlp((128, 64)),
        recipe=_sk_mlp("128-64")),
    "wine-tree": ZooEntry("decision tree, wine (d=13, 3 classes)", "wine", "tree", _tree(None),
                          recipe="tree"),
    "digits-tree": ZooEntry(
        "decision tree, 64 leaves at most, digits", "digits", "tree", _tree(64),
        recipe="tree:max_leaf_nodes=64"),
    "synth-tree-d12": ZooEntry(
        "decision tree of depth 8 (149-184 leaves), synthetic d=12, 4 classes", "synthetic",
        "tree", _tree(None, max_depth=8),
        (("n_features", 12), ("n_classes", 4), ("n_samples", 16000)), recipe="tree:max_depth=8"),
    "synth-lr-d10": ZooEntry(
        "binary logistic regression, synthetic d=10", "synthetic", "linear", _lr,
        (("n_features", 10),), recipe=_LR),
    "synth-lr-d20": ZooEntry(
        "binary logistic regression, synthetic d=20", "synthetic", "linear", _lr,
        (("n_features", 20),), recipe=_LR),
    "synth-lr-d50": ZooEntry(
        "binary logistic regression, synthetic d=50", "synthetic", "linear", _lr,
        (("n_features", 50),), recipe=_LR),
    "synth-mlp-d20": ZooEntry(
        "ReLU MLP 32 units, synthetic d=20, 4 classes", "synthetic", "mlp", _mlp((32,)),
        (("n_features", 20), ("n_classes", 4)), recipe=_sk_mlp("32")),
    "synth-mlp-d10-2l": ZooEntry(
        "ReLU MLP 15-15, synthetic d=10, 4 classes (the shape of Carlini et al.'s 10-15-15-1)",
        "synthetic", "mlp", _mlp((15, 15)), (("n_features", 10), ("n_classes", 4)),
        recipe=_sk_mlp("15-15")),
    "digits-mlp-wm": ZooEntry(
        "digits-mlp trained with a 50-input trigger set (Adi et al. 2018)", "digits", "mlp",
        _mlp_marked("digits-mlp-wm", (20,)), watermark="trigger-set",
        recipe=_sk_mlp("20")),
    "synth-mlp-d20-wm": ZooEntry(
        "synth-mlp-d20 trained with a 50-input trigger set (Adi et al. 2018)", "synthetic",
        "mlp", _mlp_marked("synth-mlp-d20-wm", (32,)), (("n_features", 20), ("n_classes", 4)),
        watermark="trigger-set", recipe=_sk_mlp("32")),
    "digits-mlp-ewe": ZooEntry(
        "ReLU MLP 64-64, digits, trained with an entangled watermark (EWE, Jia et al. 2021)",
        "digits", "mlp", _mlp_entangled("digits-mlp-ewe", (64, 64)), watermark="entangled",
        recipe="mlp:hidden=64-64,epochs=60",
        revision=2),  # 1: decoys on any pair of classes; 2: trained on one thread
    "synth-mlp-d20-ewe": ZooEntry(
        "ReLU MLP 64-64, synthetic d=20, 4 classes, trained with an entangled watermark (EWE)",
        "synthetic", "mlp", _mlp_entangled("synth-mlp-d20-ewe", (64, 64)),
        (("n_features", 20), ("n_classes", 4)), watermark="entangled",
        recipe="mlp:hidden=64-64,epochs=60",
        revision=2),  # 1: decoys on any pair of classes; 2: trained on one thread
    "tabular-mlp": ZooEntry(
        "ReLU MLP 256-256, no regularization, 1,000 rows of a 10-class tabular population: "
        "memorizes (membership inference)", "tabular", "mlp", _recipe(_OVERFIT),
        fractions=_MI, recipe=_OVERFIT, revision=1),  # 1: trained on one thread
    **{f"tabular-mlp-dp{eps}": ZooEntry(
        f"tabular-mlp's network trained by DP-SGD (Opacus), epsilon = {eps}, delta = 1e-5",
        "tabular", "mlp", _recipe(_DP.format(eps)), fractions=_MI, recipe=_DP.format(eps),
        revision=1)
       for eps in (1, 4, 8)},
    "digits-mlp-overfit": ZooEntry(
        "ReLU MLP 256-256, no regularization, a quarter of digits: memorizes (membership "
        "inference)", "digits", "mlp", _recipe(_OVERFIT), fractions=_MI, recipe=_OVERFIT,
        revision=1),
}.items():
    ZOO.add(_name, _entry)
