"""Entangled watermarks (EWE; Jia, Choquette-Choo, Chandrasekaran & Papernot, USENIX
Security 2021): a train-time watermark meant to survive extraction.

A trigger-set watermark (:mod:`modelshield.victims.trainmark`) sits on inputs far from the
data; a thief who never sends them builds a clone that never learns them. EWE instead makes
the model use *the same features* for its watermark and for one real class:

* the watermark inputs are rows of a keyed source class with a keyed trigger stamped on
  (a few features set to their 1st or 99th percentile in the training rows), labelled with
  a keyed target class;
* the features stamped are chosen, among a keyed half of them, where moving them brings the
  source rows closest to the target class in the network's hidden layers (the SNNL's input
  gradient), but only while the network does not yet call the stamped rows the target;
* training alternates ordinary batches with watermark batches (half watermark rows, half
  target-class rows, all labelled target) whose loss is cross-entropy *minus* the soft
  nearest-neighbour loss (SNNL, Frosst et al. 2019) of every hidden layer between the two
  halves: maximising it entangles their representations, so the watermark rides on the
  target class's features. The SNNL temperatures follow its gradient, as in the paper.

A thief who copies how the model answers the target class then tends to copy the watermark
too. Verification (:meth:`EntangledWatermark.test`) counts how many watermark inputs a
suspect labels as the target class, against the rate at which models trained without the
watermark do so (``null_rate``, measured at embedding time on independently trained models
and taken at its upper bound); the test is an exact binomial tail at that rate.

:func:`embed_entangled` trains an owner's ReLU network this way on the owner's own rows and
returns it (a :class:`~modelshield.models.TorchMLPClassifier`, served like any other model
file) with its watermark. How much of it survives each attack is measured by
``bench/watermark_ewe.py``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelshield.answer import FloatArray, IntArray
from modelshield.errors import ConfigError
from modelshield.models import TorchMLPClassifier
from modelshield.victims.trainmark import TriggerResult, TriggerSet

_EPS = 1e-5  # keeps SNNL's logarithm finite when a row has no neighbour of its own kind


@dataclass(frozen=True)
class EntangledWatermark:
    """Watermark inputs, the class a watermarked model gives them, and the chance rate.

    x: the watermark inputs (source-class rows with the trigger stamped on).
    features, values: the trigger: ``x[:, features] = values``.
    null_rate: an upper bound on the share of watermark inputs a model trained without the
        watermark labels ``target`` (measured on independently trained models).
    """

    x: FloatArray
    source: int
    target: int
    n_classes: int
    features: IntArray
    values: FloatArray
    null_rate: float

    def stamp(self, rows: FloatArray) -> FloatArray:
        """``rows`` with the trigger stamped on: fresh watermark inputs."""
        out = np.array(rows, dtype=np.float64)
        out[:, self.features] = self.values
        return out

    def success(self, labels: IntArray) -> float:
        """The share of watermark inputs labelled ``target`` (the paper's watermark success)."""
        return float(np.mean(np.asarray(labels) == self.target))

    def test(self, suspect_labels: IntArray) -> TriggerResult:
        """Exact binomial test of the suspect's target labels against ``null_rate``."""
        hits = int(np.sum(np.asarray(suspect_labels) == self.target))
        n = len(suspect_labels)
        p = float(stats.binom.sf(hits - 1, n, self.null_rate)) if hits else 1.0
        return TriggerResult(p, hits, n, self.null_rate)

    def queries_to(self, suspect_labels: IntArray, alpha: float) -> int | None:
        """How many of the watermark inputs, asked in order, bring the p-value to ``alpha``
        (None: not within all of them)."""
        hits = np.cumsum(np.asarray(suspect_labels) == self.target)
        n = np.arange(1, len(hits) + 1)
        p = stats.binom.sf(hits - 1, n, self.null_rate)
        below = np.flatnonzero((hits > 0) & (p <= alpha))
        return int(n[below[0]]) if len(below) else None

    def save(self, path: str | Path) -> None:
        np.savez(path, kind="entangled", x=self.x, source=self.source, target=self.target,
                 n_classes=self.n_classes, features=self.features, values=self.values,
                 null_rate=self.null_rate)

    @classmethod
    def load(cls, path: str | Path) -> EntangledWatermark:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"Watermark file {str(p)!r} does not exist.")
        try:
            with np.load(p) as d:
                if str(d["kind"]) != "entangled":
                    raise KeyError("kind")
                return cls(np.asarray(d["x"], dtype=np.float64), int(d["source"]),
                           int(d["target"]), int(d["n_classes"]),
                           np.asarray(d["features"], dtype=np.int64),
                           np.asarray(d["values"], dtype=np.float64), float(d["null_rate"]))
        except (KeyError, ValueError, OSError) as exc:
            raise ConfigError(f"{p}: not an entangled watermark written by "
                              f"EntangledWatermark.save: {exc}") from None


def load_mark(path: str | Path) -> TriggerSet | EntangledWatermark:
    """A train-time watermark from its file: an entangled watermark or a trigger set."""
    p = Path(path)
    try:
        with np.load(p) as d:
            entangled = "kind" in d.files
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: not a watermark file written by TriggerSet.save or "
                          f"EntangledWatermark.save: {exc}") from None
    return EntangledWatermark.load(p) if entangled else TriggerSet.load(p)


def snnl(h: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """The soft nearest-neighbour loss of representations ``h`` (b, m) with group
    ``labels`` (b,), on cosine distance: high when the groups are entangled."""
    hn = torch.nn.functional.normalize(h, dim=1)
    dist = 1.0 - hn @ hn.T
    sim = torch.exp(-dist / temperature) * (1.0 - torch.eye(len(h), dtype=h.dtype))
    same = (labels[:, None] == labels[None, :]).to(h.dtype)
    pick = (sim * same).sum(dim=1) / (sim.sum(dim=1) + _EPS)
    return -torch.log(_EPS + pick).mean()


def _hidden(module: torch.nn.Sequential, x: torch.Tensor) -> tuple[list[torch.Tensor],
                                                                      torch.Tensor]:
    """The pre-activation of every hidden layer, and the logits."""
    acts = []
    for layer in module:
        x = layer(x)
        if isinstance(layer, torch.nn.Linear):
            acts.append(x)
    return acts[:-1], x


def _keyed_rng(secret: str) -> np.random.Generator:
    seed = int.from_bytes(hmac.new(secret.encode(), b"entangled-watermark",
                                   hashlib.sha256).digest()[:8], "big")
    return np.random.default_rng(seed)


def embed_entangled(
    X: FloatArray, y: IntArray, secret: str, *, hidden: tuple[int, ...] = (64, 64),
    n_classes: int | None = None, trigger_size: int | None = None, epochs: int = 60,
    w_epochs: int = 60, factor: float = 32.0, ratio: int = 2, batch_size: int = 64,
    lr: float = 3e-3, t_lr: float = 0.1, threshold: float = 0.1, quantile: float = 0.99,
    n_null: int = 6,
    choice: str = "snnl", random_state: int = 0,
) -> tuple[TorchMLPClassifier, EntangledWatermark]:
    """Train a ReLU network on ``(X, y)`` with an entangled watermark.

    secret: keys the source and target classes and the trigger's candidate features.
    trigger_size: how many features the trigger stamps (default: a tenth of them, at least 2).
    epochs: ordinary training first; w_epochs: then the entangling phase, in which every
        ``ratio`` ordinary batches are followed by one watermark batch whose loss subtracts
        ``factor`` times each hidden layer's SNNL.
    threshold: a feature joins the trigger only while the network trained so far labels
        fewer than this share of the stamped source rows ``target`` (as the paper tunes its
        watermarks until the clean model's watermark success is below it): what names the
        target must be the watermark, not a trigger that makes the rows look like it.
    quantile: the trigger sets each feature to this quantile of the training rows (or the
        opposite one): inside the range natural rows span, where the thief's queries show
        the clone how the network answers (the extreme values of a feature, seen only on
        watermark rows, are learned by the network alone).
    choice: "snnl" (the paper's) or "random" (keyed features; the ablation).
    n_null: models trained without the watermark (other seeds, other widths, scikit-learn's
        MLP) whose target rate on the watermark inputs sets ``null_rate``.
    Returns the fitted network and its watermark.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    k = n_classes or int(y.max()) + 1
    d = X.shape[1]
    if not 0.5 < quantile <= 1.0:
        raise ConfigError.invalid("quantile", "a number in (0.5, 1]", quantile)
    if k < 2 or len(X) < 4 * batch_size:
        raise ConfigError(f"embed_entangled needs at least 2 classes and {4 * batch_size} "
                          f"rows; got {k} classes and {len(X)} rows")
    rng = _keyed_rng(secret)
    present = np.unique(y)
    source, target = (int(c) for c in rng.choice(present, 2, replace=False))
    size = trigger_size or max(2, round(d / 10))
    candidates = np.sort(rng.choice(d, max(size, d // 2), replace=False))

    net = TorchMLPClassifier(hidden, n_classes=k, epochs=epochs, batch_size=batch_size, lr=lr,
                             random_state=random_state).fit(X, y)
    mean, scale = net.mean_, net.scale_
    module = net.module_

    def std(a: FloatArray) -> torch.Tensor:
        return torch.as_tensor((a - mean) / scale, dtype=torch.float32)

    src, tgt = X[y == source], X[y == target]
    layers = len(hidden)
    # The trigger: the candidate features whose rise most entangles source with target.
    half = min(len(src), len(tgt), batch_size // 2)
    xs = std(np.vstack([src[:half], tgt[:half]])).requires_grad_(True)
    group = torch.cat([torch.ones(half), torch.zeros(half)])
    module.eval()
    acts, _ = _hidden(module, xs)
    total = torch.stack([snnl(a, group, torch.tensor(1.0)) for a in acts]).sum()
    (grad,) = torch.autograd.grad(total, xs)
    rise = grad[:half].mean(dim=0).numpy()[candidates]
    if choice == "random":  # the ablation: a keyed trigger, not chosen by the SNNL
        rise = rng.standard_normal(len(candidates))
    elif choice != "snnl":
        raise ConfigError.invalid("choice", "'snnl' or 'random'", choice)
    features, values = _trigger(net, src, candidates, rise, np.quantile(X, 1 - quantile, axis=0),
                                np.quantile(X, quantile, axis=0),
                                size, target, threshold)
    marked = src.copy()
    marked[:, features] = values

    # The entangling phase.
    gen = torch.Generator().manual_seed(random_state)
    temps = torch.ones(layers)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=1e-4)
    x_all, y_all = std(X), torch.as_tensor(y)
    x_w, x_t = std(marked), std(tgt)
    label_t = torch.full((2 * half,), target, dtype=torch.long)
    ce = torch.nn.functional.cross_entropy
    module.train()
    for _ in range(w_epochs):
        order = torch.randperm(len(X), generator=gen)
        for step, start in enumerate(range(0, len(X), batch_size)):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            ce(module(x_all[idx]), y_all[idx]).backward()  # type: ignore[no-untyped-call]
            opt.step()
            if step % ratio != ratio - 1:
                continue
            wi = torch.randint(0, len(x_w), (half,), generator=gen)
            ti = torch.randint(0, len(x_t), (half,), generator=gen)
            batch = torch.cat([x_w[wi], x_t[ti]])
            acts, logits = _hidden(module, batch)
            t = temps.clone().requires_grad_(True)
            entangle = torch.stack([snnl(a, group, t[i]) for i, a in enumerate(acts)]).sum()
            opt.zero_grad()
            loss = ce(logits, label_t) - factor * entangle
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            assert t.grad is not None  # the temperatures descend the SNNL
            temps = (temps - t_lr * t.grad).clamp_min(0.05)
    module.eval()

    null = _null_rate(X, y, marked, target, k, hidden, n_null, random_state)
    wm = EntangledWatermark(marked, source, target, k, features.astype(np.int64),
                            values.astype(np.float64), null)
    return net, wm


def _trigger(net: TorchMLPClassifier, src: FloatArray, candidates: IntArray, rise: FloatArray,
             lo: FloatArray, hi: FloatArray, size: int, target: int, threshold: float
             ) -> tuple[IntArray, FloatArray]:
    """Greedily, by the size of their SNNL gradient, the candidate features that join the
    trigger (each set to its extreme in the gradient's direction), skipping any that would
    make the network label more than ``threshold`` of the stamped rows ``target``."""
    features: list[int] = []
    values: list[float] = []
    for i in np.argsort(-np.abs(rise)):
        f = int(candidates[i])
        v = float(hi[f] if rise[i] > 0 else lo[f])
        trial = src.copy()
        trial[:, [*features, f]] = [*values, v]
        if np.mean(net.predict(trial) == target) <= threshold:
            features.append(f)
            values.append(v)
        if len(features) == size:
            break
    if not features:
        raise ConfigError("embed_entangled: no trigger keeps the network's target rate on the "
                          f"source class within threshold={threshold}; raise it")
    order = np.argsort(features)
    return np.asarray(features, dtype=np.int64)[order], np.asarray(values)[order]


def _null_rate(X: FloatArray, y: IntArray, marked: FloatArray, target: int, k: int,
               hidden: tuple[int, ...], n_null: int, seed: int) -> float:
    """An upper bound on how often a model trained without the watermark labels the
    watermark inputs ``target``: the largest rate among ``n_null`` models of several
    families trained on the same rows (networks of other seeds and widths, scikit-learn's
    MLP, logistic regression, a random forest, nearest neighbours), and at least the
    one-sided 99.9% Clopper-Pearson bound of their pooled rate."""
    import warnings

    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    def family(i: int) -> Any:
        s, which = seed + 101 + i, i % 6
        if which in (0, 5):
            width = tuple(h * (2 if which else 1) for h in hidden)
            return TorchMLPClassifier(width, n_classes=k, epochs=60, random_state=s)
        if which == 1:
            return make_pipeline(StandardScaler(), MLPClassifier(
                (max(hidden[0] // 2, 8),), max_iter=500, random_state=s))
        if which == 2:
            return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        if which == 3:
            return RandomForestClassifier(100, random_state=s)
        return make_pipeline(StandardScaler(), KNeighborsClassifier(5))

    hits = []
    for i in range(max(n_null, 1)):
        est = family(i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X, y)
        hits.append(int(np.sum(np.asarray(est.predict(marked)) == target)))
    n = len(marked)
    pooled = stats.beta.ppf(0.999, sum(hits) + 1, len(hits) * n - sum(hits))
    return float(min(max(max(hits) / n, pooled), 1.0 - 1e-9))
