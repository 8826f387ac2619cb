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
  gradient), but only while neither the network nor four models of other families trained
  without the watermark call the stamped rows the target;
* training alternates ordinary batches with watermark batches (half watermark rows, half
  target-class rows, all labelled target) whose loss is cross-entropy *minus* the soft
  nearest-neighbour loss (SNNL, Frosst et al. 2019) of every hidden layer between the two
  halves: maximising it entangles their representations, so the watermark rides on the
  target class's features. The SNNL temperatures follow its gradient, as in the paper.

A thief who copies how the model answers the target class then tends to copy the watermark
too. Verification (:meth:`EntangledWatermark.test`) counts how many watermark inputs a
suspect labels as the target class, against the rates at which models trained without the
watermark do so (``null_rates``, measured at embedding time on ten models of other
families and seeds). Those rates vary from model to model (0% to 60% on the built-in
victims), so a binomial at their mean is overconfident: one tree or small MLP would be
"named" at p < 1e-50. The test is beta-binomial instead: the suspect's rate is one more
draw from the Beta fitted to them, and its p-value is the tail of that mixture. It is
still an estimate: 7 of 132 independent models reached p <= 1e-3 in the benchmark, so a
result is supporting evidence, not proof on its own (``modelshield verify`` says so).

:func:`embed_entangled` trains an owner's ReLU network this way on the owner's own rows and
returns it (a :class:`~modelshield.models.TorchMLPClassifier`, served like any other model
file) with its watermark. How much of it survives each attack is measured by
``bench/watermark_ewe.py``.
"""

from __future__ import annotations

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
from modelshield.victims.trainmark import TriggerResult, TriggerSet, keyed_rng, read_npz

_EPS = 1e-5  # keeps SNNL's logarithm finite when a row has no neighbour of its own kind


@dataclass(frozen=True)
class EntangledWatermark:
    """Watermark inputs, the class a watermarked model gives them, and the chance rate.

    x: the watermark inputs (source-class rows with the trigger stamped on).
    features, values: the trigger: ``x[:, features] = values``.
    null_rates: the share of watermark inputs each of several models trained without the
        watermark labels ``target`` (independent models of several families, measured when
        the watermark was embedded). They differ from model to model far more than
        sampling explains, so the test is beta-binomial: the suspect's rate is one more
        draw from a Beta fitted to them.
    """

    x: FloatArray
    source: int
    target: int
    n_classes: int
    features: IntArray
    values: FloatArray
    null_rates: tuple[float, ...]

    @property
    def null_rate(self) -> float:
        """The mean rate of the models trained without the watermark."""
        return float(np.mean(self.null_rates))

    def null_beta(self) -> tuple[float, float]:
        """The Beta (a, b) whose mean and spread are those of ``null_rates`` (moments),
        its mean at least 1/(2n) and its spread at least that of a binomial over the n
        watermark inputs, so that a tight or empty calibration cannot make it overconfident."""
        n = len(self.x)
        rates = np.asarray(self.null_rates, dtype=np.float64)
        m = float(np.clip(rates.mean(), 0.5 / n, 1 - 0.5 / n))
        var = max(float(rates.var(ddof=1)) if len(rates) > 1 else 0.0, m * (1 - m) / n)
        var = min(var, 0.99 * m * (1 - m))
        common = m * (1 - m) / var - 1
        return m * common, (1 - m) * common

    def _p(self, hits: IntArray, n: IntArray) -> FloatArray:
        a, b = self.null_beta()
        return np.asarray(np.where(hits > 0, stats.betabinom.sf(hits - 1, n, a, b), 1.0))

    def success(self, labels: IntArray) -> float:
        """The share of watermark inputs labelled ``target`` (the paper's watermark success)."""
        return float(np.mean(np.asarray(labels) == self.target))

    def test(self, suspect_labels: IntArray) -> TriggerResult:
        """The suspect's target labels against the independent models' (beta-binomial)."""
        hits = int(np.sum(np.asarray(suspect_labels) == self.target))
        n = len(suspect_labels)
        return TriggerResult(float(self._p(np.array(hits), np.array(n))), hits, n,
                             self.null_rate)

    def queries_to(self, suspect_labels: IntArray, alpha: float) -> int | None:
        """How many of the watermark inputs, asked in order, bring the p-value to ``alpha``
        (None: not within all of them)."""
        hits = np.cumsum(np.asarray(suspect_labels) == self.target)
        n = np.arange(1, len(hits) + 1)
        below = np.flatnonzero(self._p(hits, n) <= alpha)
        return int(n[below[0]]) if len(below) else None

    def save(self, path: str | Path) -> None:
        np.savez(path, kind="entangled", x=self.x, source=self.source, target=self.target,
                 n_classes=self.n_classes, features=self.features, values=self.values,
                 null_rates=np.asarray(self.null_rates))

    @classmethod
    def load(cls, path: str | Path) -> EntangledWatermark:
        return read_npz(path, "an entangled watermark written by EntangledWatermark.save",
                        cls.from_arrays)

    @classmethod
    def from_arrays(cls, d: Any) -> EntangledWatermark:
        if str(d["kind"]) != "entangled":
            raise KeyError("kind")
        return cls(np.asarray(d["x"], dtype=np.float64), int(d["source"]), int(d["target"]),
                   int(d["n_classes"]), np.asarray(d["features"], dtype=np.int64),
                   np.asarray(d["values"], dtype=np.float64),
                   tuple(float(r) for r in d["null_rates"]))


def load_mark(path: str | Path) -> TriggerSet | EntangledWatermark:
    """A train-time watermark from its file (read once): an entangled watermark or a
    trigger set."""
    def build(d: Any) -> TriggerSet | EntangledWatermark:
        return (EntangledWatermark if "kind" in d.files else TriggerSet).from_arrays(d)

    return read_npz(path, "a watermark file written by TriggerSet.save or "
                    "EntangledWatermark.save", build)


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


def embed_entangled(
    X: FloatArray, y: IntArray, secret: str, *, hidden: tuple[int, ...] = (64, 64),
    n_classes: int | None = None, trigger_size: int | None = None, epochs: int = 60,
    w_epochs: int = 60, factor: float = 32.0, ratio: int = 2, batch_size: int = 64,
    lr: float = 3e-3, t_lr: float = 0.1, threshold: float = 0.1, quantile: float = 0.99,
    n_null: int = 10, choice: str = "snnl", random_state: int = 0,
) -> tuple[TorchMLPClassifier, EntangledWatermark]:
    """Train a ReLU network on ``(X, y)`` with an entangled watermark.

    secret: keys the source and target classes and the trigger's candidate features.
    trigger_size: how many features the trigger stamps (default: a tenth of them, at least 2).
    epochs: ordinary training first; w_epochs: then the entangling phase, in which every
        ``ratio`` ordinary batches are followed by one watermark batch whose loss subtracts
        ``factor`` times each hidden layer's SNNL.
    threshold: a feature joins the trigger only while the network trained so far, and four
        models of other families trained without the watermark, each label at most this
        share of the stamped source rows ``target`` (the paper tunes its watermarks until
        the clean model's watermark success is below it): what names the target must be
        the watermark, not a trigger that makes the rows look like it.
    quantile: the trigger sets each feature to this quantile of the training rows (or the
        opposite one): inside the range natural rows span, where the thief's queries show
        the clone how the network answers (the extreme values of a feature, seen only on
        watermark rows, are learned by the network alone).
    choice: "snnl" (the paper's) or "random" (keyed features; the ablation).
    n_null: models trained without the watermark (ten families in turn: see
        :func:`null_rates`) whose target rates on the watermark inputs set the test's null.
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
    rng = keyed_rng(secret, b"entangled-watermark")
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
    # The trigger: the candidate features whose move most entangles source with target.
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
    lo, hi = np.quantile(X, 1 - quantile, axis=0), np.quantile(X, quantile, axis=0)
    if np.array_equal(X, np.round(X)):  # integer features (pixel counts) stay integers
        lo, hi = np.floor(lo), np.ceil(hi)
    features, values = _trigger([net, *_judges(X, y, random_state)], src, candidates, rise, lo,
                                hi, size, target, threshold)
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

    null = null_rates(X, y, marked, target, k, hidden, n_null, random_state)
    wm = EntangledWatermark(marked, source, target, k, features.astype(np.int64),
                            values.astype(np.float64), null)
    return net, wm


def _trigger(judges: list[Any], src: FloatArray, candidates: IntArray, rise: FloatArray,
             lo: FloatArray, hi: FloatArray, size: int, target: int, threshold: float
             ) -> tuple[IntArray, FloatArray]:
    """Greedily, by the size of their SNNL gradient, the candidate features that join the
    trigger (each set to its extreme in the gradient's direction), skipping any that would
    make one of the ``judges`` (the network so far and models of other families trained
    without the watermark) label more than ``threshold`` of the stamped rows ``target``.
    If no feature passes, the one that keeps the judges' worst rate lowest is the trigger
    (the test's null rates then show what that costs)."""
    features: list[int] = []
    values: list[float] = []
    fallback: tuple[float, int, float] = (np.inf, -1, 0.0)
    for i in np.argsort(-np.abs(rise)):
        f = int(candidates[i])
        v = float(hi[f] if rise[i] > 0 else lo[f])
        trial = src.copy()
        trial[:, [*features, f]] = [*values, v]
        worst = max(float(np.mean(j.predict(trial) == target)) for j in judges)
        if worst <= threshold:
            features.append(f)
            values.append(v)
        elif not features and worst < fallback[0]:
            fallback = (worst, f, v)
        if len(features) == size:
            break
    if not features:  # none keeps every judge within threshold: the one that comes closest
        features, values = [fallback[1]], [fallback[2]]
    order = np.argsort(features)
    return np.asarray(features, dtype=np.int64)[order], np.asarray(values)[order]


def _judges(X: FloatArray, y: IntArray, seed: int) -> list[Any]:
    """Models of other families than the owner's network, trained without the watermark:
    the trigger must not look like the target to them either, or an independent suspect
    of their kind would answer the watermark by chance (a small MLP and a decision tree
    did, at 36% to 60%, when only the network was asked)."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.tree import DecisionTreeClassifier

    out = []
    for est in (make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=500,
                                                              random_state=seed + 201)),
                DecisionTreeClassifier(random_state=seed + 201),
                make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                make_pipeline(StandardScaler(), KNeighborsClassifier(5))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(est.fit(X, y))
    return out


def null_rates(X: FloatArray, y: IntArray, marked: FloatArray, target: int, k: int,
               hidden: tuple[int, ...] = (64, 64), n_null: int = 10, seed: int = 0
               ) -> tuple[float, ...]:
    """How often each of ``n_null`` models trained without the watermark, on the same rows,
    labels the watermark inputs ``target``. Ten families in turn, as varied as a suspect
    might be: networks of the owner's shape and twice as wide, scikit-learn MLPs of one
    and two layers, logistic regression, a random forest, gradient boosting, a decision
    tree, nearest neighbours and a small network."""
    import warnings

    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.tree import DecisionTreeClassifier

    def family(i: int) -> Any:
        s, which = seed + 101 + i, i % 10
        if which in (0, 5):
            width = tuple(h * (2 if which else 1) for h in hidden)
            return TorchMLPClassifier(width, n_classes=k, epochs=60, random_state=s)
        if which in (1, 9):
            return make_pipeline(StandardScaler(), MLPClassifier(
                (16,) if which == 9 else (32, 32), max_iter=500, random_state=s))
        if which == 2:
            return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        if which == 3:
            return RandomForestClassifier(100, random_state=s)
        if which == 6:
            return HistGradientBoostingClassifier(random_state=s)
        if which == 7:
            return DecisionTreeClassifier(random_state=s)
        if which == 8:
            return TorchMLPClassifier((16,), n_classes=k, epochs=60, random_state=s)
        return make_pipeline(StandardScaler(), KNeighborsClassifier(5))

    rates = []
    for i in range(max(n_null, 2)):
        est = family(i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X, y)
        rates.append(float(np.mean(np.asarray(est.predict(marked)) == target)))
    return tuple(rates)
