"""Load a model file (joblib/pickle of a scikit-learn estimator, a TorchScript file, ONNX)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import joblib
import numpy as np

from modelshield.answer import ApiSpec, FloatArray, IntArray
from modelshield.errors import ConfigError
from modelshield.victims.base import (
    MembershipTask,
    ModelAdapter,
    OnnxAdapter,
    SklearnAdapter,
    TorchAdapter,
    Victim,
)

MODEL_FORMATS = {
    ".joblib": "a fitted scikit-learn-API classifier (scikit-learn, XGBClassifier, "
               "LGBMClassifier), also .pkl",
    ".pt": "a TorchScript module giving logits, also .pth",
    ".onnx": "an ONNX classifier",
    ".json": "an XGBoost booster (save_model), also .ubj",
    ".txt": "a LightGBM booster's text model file (save_model)",
}
"""The model files served, attacked and audited, by suffix."""

SUFFIXES = frozenset({".joblib", ".pkl", ".pickle", ".pt", ".pth", ".onnx", ".json", ".ubj",
                      ".txt"})
"""Every suffix :func:`load_model_file` reads."""


def load_model_file(path: str | Path) -> ModelAdapter:
    """An adapter for the model in ``path``, chosen by its suffix (:data:`MODEL_FORMATS`).

    Only load joblib or pickle files you trust: they run code. TorchScript, ONNX and the
    boosters' own files hold none.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Model file {str(p)!r} does not exist.")
    suffix = p.suffix.lower()
    if suffix in {".joblib", ".pkl", ".pickle"}:
        return SklearnAdapter(joblib.load(p))
    if suffix in {".pt", ".pth"}:
        import torch

        return TorchAdapter(torch.jit.load(str(p)))  # type: ignore[no-untyped-call]
    if suffix == ".onnx":
        return OnnxAdapter(str(p))
    if suffix in {".json", ".ubj"}:
        from modelshield.victims.boosters import XGBoostAdapter

        return XGBoostAdapter(p)
    if suffix == ".txt":
        from modelshield.victims.boosters import LightGBMAdapter

        return LightGBMAdapter(p)
    raise ConfigError(f"Model file {p.name!r}: unknown format {suffix or '(no suffix)'!r}; "
                      "give " + "; ".join(f"{k} ({v})" for k, v in MODEL_FORMATS.items()))


def model_width(adapter: ModelAdapter) -> int | None:
    """How many features the model takes, where its file says so."""
    width = getattr(adapter, "n_features", None)
    if width is None:
        width = getattr(getattr(adapter, "estimator", None), "n_features_in_", None)
    session = getattr(adapter, "session", None)
    if width is None and session is not None:
        width = session.get_inputs()[0].shape[-1]
    return int(width) if isinstance(width, int | np.integer) else None


def check_contract(adapter: ModelAdapter, spec: ApiSpec) -> None:
    """The config's contract (``model.classes``, the width of ``low``/``high`` or
    ``model.n_features``) against what the model file answers; a mismatch names the field."""
    width = model_width(adapter)
    if width is not None and width != spec.n_features:
        raise ConfigError(f"model.n_features: the config gives rows of {spec.n_features} "
                          f"features (low/high or n_features); the model file takes {width}")
    mid = (spec.low + spec.high) / 2
    row = np.where(np.isfinite(mid), mid, 0.0)[None, :]
    try:
        n = adapter.predict(row).probabilities.shape[1]
    except Exception as exc:
        reason = str(exc).strip().split("\n")[0][:200]
        raise ConfigError(f"model.file: the model did not answer a row of {spec.n_features} "
                          f"features, the width of low/high ({type(exc).__name__}: "
                          f"{reason})") from None
    if n != len(spec.classes):
        raise ConfigError(f"model.classes: the config names {len(spec.classes)} classes; "
                          f"the model file answers with {n} (name them in its order)")


DATA_KEYS = {"X_test": "test rows", "y_test": "their true labels (class indices or names)",
             "pool": "unlabelled natural rows the attacker may query",
             "low": "the domain's lower bound per feature", "high": "its upper bound"}
"""What an owner's data file may hold, by name."""


def load_owner_data(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an owner's data file, checked by name.

    ``.npz``: ``X_test`` and ``y_test`` (required), ``pool``, ``low``, ``high``; any other
    name is an error that lists these. ``.csv``: a header row; a ``label`` column holds the
    true labels and the other columns the features of the test rows.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Data file {str(p)!r} does not exist.")
    if p.suffix.lower() == ".csv":
        return _csv(p)
    if p.suffix.lower() != ".npz":
        raise ConfigError.invalid("data", "an .npz or .csv file", str(p))
    with np.load(p) as npz:
        arrays = {k: np.asarray(npz[k]) for k in npz.files}
    unknown = sorted(set(arrays) - set(DATA_KEYS))
    if unknown:
        raise ConfigError(f"{p}: unknown array {unknown[0]!r}; an owner's data file holds "
                          + "; ".join(f"{k} ({v})" for k, v in DATA_KEYS.items()))
    missing = [k for k in ("X_test", "y_test") if k not in arrays]
    if missing:
        raise ConfigError(f"{p}: lacks {', '.join(missing)}; it needs X_test and y_test "
                          "(pool, low, high optional)")
    d = arrays["X_test"].shape[1] if arrays["X_test"].ndim == 2 else -1
    for k in ("pool", "low", "high"):
        if k in arrays and arrays[k].shape[-1] != d:
            raise ConfigError(f"{p}: {k} has {arrays[k].shape[-1]} features, X_test {d}")
    return arrays


def _csv(p: Path) -> dict[str, np.ndarray]:
    import csv

    with p.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "label" not in rows[0]:
        raise ConfigError(f"{p}: the first row must name the columns, one of them 'label' "
                          "(the true labels)")
    at = rows[0].index("label")
    try:
        X = np.array([[float(v) for i, v in enumerate(r) if i != at] for r in rows[1:]])
    except ValueError as exc:
        raise ConfigError(f"{p}: the feature columns must be numbers ({exc})") from None
    return {"X_test": X, "y_test": np.array([r[at] for r in rows[1:]])}


def load_calibration(path: str | Path, n_features: int, *, field: str = "model.calibration",
                     min_rows: int = 20) -> np.ndarray:
    """The owner's natural rows from an .npz (array ``X``), .csv or .parquet file, checked
    against the model's feature count. A ``label`` column of a table is left out; a .csv
    may start with a header row. Errors name ``field`` and what is allowed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{field}: the file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(p) as npz:
                if "X" not in npz.files:
                    raise ConfigError(f"{field}: {p} has no array named 'X' (it holds "
                                      f"{', '.join(npz.files) or 'nothing'}); save the rows "
                                      "as np.savez(path, X=rows)")
                X = np.asarray(npz["X"], dtype=np.float64)
        elif suffix == ".csv":
            X = _calibration_csv(p, field)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(p)
            cols = [c for c in table.column_names if c != "label"]
            X = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(float)
                                 for c in cols]) if cols else np.empty((0, 0))
        else:
            raise ConfigError(f"{field}: {p.name} is not .npz, .csv or .parquet")
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{field}: {p} could not be read as numbers: {exc}") from None
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ConfigError(f"{field}: {p} has rows of {X.shape[-1] if X.ndim else 0} features; "
                          f"the model takes {n_features}")
    if len(X) < min_rows:
        raise ConfigError(f"{field}: {p} has {len(X)} rows; calibration needs at least "
                          f"{min_rows} (hundreds are better)")
    if not np.isfinite(X).all():
        raise ConfigError(f"{field}: {p} has missing or infinite values; give complete rows")
    return X


def _calibration_csv(p: Path, field: str) -> np.ndarray:
    import csv

    with p.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        raise ConfigError(f"{field}: {p} is empty")
    header: list[str] | None = None
    try:
        [float(v) for v in rows[0]]
    except ValueError:
        header, rows = rows[0], rows[1:]
    drop = header.index("label") if header is not None and "label" in header else -1
    try:
        return np.array([[float(v) for i, v in enumerate(r) if i != drop] for r in rows])
    except ValueError as exc:
        raise ConfigError(f"{field}: {p}: the feature columns must be numbers ({exc})") from None


def victim_from_files(model: str | Path, data: str | Path, name: str | None = None) -> Victim:
    """An owner's own model (a model file) with its data file, as a Victim that scores a
    clone: test accuracy and fidelity, uniform points in ``low``/``high`` (the test rows'
    range without them), and ``pool`` as the attacker's natural data."""
    arrays = load_owner_data(data)
    adapter = load_model_file(model)
    X = np.asarray(arrays["X_test"], dtype=np.float64)
    width = model_width(adapter)
    if X.ndim != 2 or (width is not None and X.shape[1] != width):
        raise ConfigError(f"{Path(data).name}: X_test has rows of {X.shape[-1]} features; the "
                          f"model {Path(model).name} takes {width or 'a table of rows'}")
    classes = getattr(getattr(adapter, "estimator", None), "classes_", None)
    y = arrays["y_test"]
    if classes is not None and not np.issubdtype(y.dtype, np.integer):
        y = np.searchsorted(np.asarray(classes), y)
    n_classes = adapter.predict(X[:1]).probabilities.shape[1]
    spec = ApiSpec(n_features=X.shape[1],
                   classes=tuple(str(c) for c in (classes if classes is not None
                                                  else range(n_classes))),
                   low=np.asarray(arrays.get("low", X.min(axis=0)), dtype=np.float64),
                   high=np.asarray(arrays.get("high", X.max(axis=0)), dtype=np.float64),
                   name=name or Path(model).stem)
    pool = arrays.get("pool")
    return Victim(name=spec.name, model=adapter, spec=spec, X_test=X,
                  y_test=np.asarray(y, dtype=np.int64),
                  pool=np.empty((0, spec.n_features)) if pool is None
                  else np.asarray(pool, dtype=np.float64),
                  X_train=np.empty((0, spec.n_features)),
                  kind="tree" if getattr(adapter, "tree", None) is not None else "model")


MEMBERSHIP_KEYS = {
    "members": "rows the model was trained on",
    "member_labels": "their true labels (class indices)",
    "non_members": "rows of the same distribution it never saw",
    "non_member_labels": "their true labels",
    "population": "the attacker's own labelled rows, for shadow models (optional)",
    "population_labels": "their labels (with population)",
    "low": "the domain's lower bound per feature (optional)",
    "high": "its upper bound (optional)",
}
"""What an owner's membership file (.npz) may hold, by name."""


def membership_from_files(model: str | Path, data: str | Path, name: str | None = None,
                          recipe: str = "") -> tuple[Victim, MembershipTask]:
    """An owner's model file and an .npz of its members and non-members (and optionally an
    attacker's population), as a Victim to query and the truth to score attacks against."""
    p = Path(data)
    arrays = _membership_arrays(p)
    adapter = load_model_file(model)
    rows: dict[str, FloatArray] = {
        k: np.atleast_2d(np.asarray(arrays[k], dtype=np.float64))
        for k in ("members", "non_members", "population") if k in arrays}
    d = rows["members"].shape[1]
    _check_rows(p, arrays, rows)
    every = np.concatenate(list(rows.values()))
    n_classes = adapter.predict(every[:1]).probabilities.shape[1]
    labels: dict[str, IntArray] = {k: np.asarray(arrays[_LABELS[k]], dtype=np.int64)
                                   for k in rows}
    _check_labels(p, labels, n_classes)
    spec = ApiSpec(n_features=d, classes=tuple(str(c) for c in range(n_classes)),
                   low=np.asarray(arrays.get("low", every.min(axis=0)), dtype=np.float64),
                   high=np.asarray(arrays.get("high", every.max(axis=0)), dtype=np.float64),
                   name=name or Path(model).stem)
    victim = Victim(name=spec.name, model=adapter, spec=spec, X_test=rows["non_members"],
                    y_test=labels["non_members"], pool=np.empty((0, d)),
                    X_train=rows["members"])
    empty = np.empty((0, d))
    task = MembershipTask(
        victim=spec.name, members=rows["members"], member_labels=labels["members"],
        non_members=rows["non_members"], non_member_labels=labels["non_members"],
        population=rows.get("population", empty),
        population_labels=labels.get("population", np.empty(0, dtype=np.int64)),
        recipe=recipe)
    return victim, task


_LABELS = {"members": "member_labels", "non_members": "non_member_labels",
           "population": "population_labels"}


def _membership_arrays(p: Path) -> dict[str, np.ndarray]:
    """The arrays of the membership file ``p``, checked by name."""
    if not p.is_file() or p.suffix.lower() != ".npz":
        raise ConfigError(f"--data {str(p)!r}: needs an existing .npz holding "
                          + "; ".join(f"{k} ({v})" for k, v in MEMBERSHIP_KEYS.items()))
    with np.load(p) as npz:
        arrays = {k: np.asarray(npz[k]) for k in npz.files}
    unknown = sorted(set(arrays) - set(MEMBERSHIP_KEYS))
    missing = [k for k in list(MEMBERSHIP_KEYS)[:4] if k not in arrays]
    if unknown or missing:
        what = f"unknown array {unknown[0]!r}" if unknown else f"lacks {', '.join(missing)}"
        raise ConfigError(f"{p}: {what}; a membership file holds "
                          + "; ".join(f"{k} ({v})" for k, v in MEMBERSHIP_KEYS.items()))
    if ("population" in arrays) != ("population_labels" in arrays):
        raise ConfigError(f"{p}: population and population_labels go together")
    return arrays


def _check_rows(p: Path, arrays: dict[str, np.ndarray], rows: Mapping[str, FloatArray]
                ) -> None:
    """Every row set has the members' features, and one label a row."""
    d = rows["members"].shape[1]
    for k, x in rows.items():
        if x.shape[1] != d:
            raise ConfigError(f"{p}: {k} has {x.shape[1]} features, members {d}")
        if len(arrays[_LABELS[k]]) != len(x):
            raise ConfigError(f"{p}: {_LABELS[k]} must give one label per row of {k}")


def _check_labels(p: Path, labels: Mapping[str, IntArray], n_classes: int) -> None:
    for k, y in labels.items():
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise ConfigError(f"{p}: {_LABELS[k]} must be class indices 0..{n_classes - 1}")
