"""Estimators that attacks build: scikit-learn-style classifiers a clone can be.

Every class here follows scikit-learn's conventions: the constructor only stores its
arguments, ``fit`` validates and learns, learned state ends in ``_``, and ``predict`` /
``predict_proba`` take (n, d) arrays. They work wherever a scikit-learn classifier does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_array, check_is_fitted

from modelshield.answer import FloatArray, IntArray
from modelshield.errors import ConfigError


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run the block with PyTorch's intra-op pool at ``n`` threads, then restore it.

    A network's trained weights depend on how many threads summed its gradients (float
    sums are not associative), so a model trained on a 2-core laptop and on a 64-core
    server differ. Whatever must come out the same everywhere (the built-in victims, whose
    figures docs quote) is trained under this; small networks lose nothing by it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LinearClone(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A logistic (binary) or softmax (multinomial) model with given parameters.

    coef: (1, d) for binary, (c, d) for multinomial; intercept: (1,) or (c,).
    """

    def __init__(self, coef: FloatArray, intercept: FloatArray) -> None:
        self.coef = coef
        self.intercept = intercept

    def fit(self, X: Any = None, y: Any = None) -> LinearClone:
        self.coef_ = np.atleast_2d(np.asarray(self.coef, dtype=np.float64))
        self.intercept_ = np.atleast_1d(np.asarray(self.intercept, dtype=np.float64))
        if self.intercept_.shape[0] != self.coef_.shape[0]:
            raise ConfigError("coef and intercept must have the same number of rows")
        n = self.coef_.shape[0]
        self.classes_ = np.arange(2 if n == 1 else n)
        self.n_features_in_ = self.coef_.shape[1]
        return self

    def decision_function(self, X: Any) -> FloatArray:
        check_is_fitted(self)
        z = check_array(X) @ self.coef_.T + self.intercept_
        return np.asarray(z[:, 0] if z.shape[1] == 1 else z)

    def predict_proba(self, X: Any) -> FloatArray:
        z = self.decision_function(X)
        if z.ndim == 1:
            p1 = expit(z)
            return np.column_stack([1 - p1, p1])
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return np.asarray(e / e.sum(axis=1, keepdims=True))

    def predict(self, X: Any) -> IntArray:
        return np.asarray(np.argmax(self.predict_proba(X), axis=1), dtype=np.int64)


class ReluNetClone(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A one-hidden-layer ReLU network in the form exact extraction recovers it.

    The log-ratio of class k+1 to class 0 is ``A[k] . relu(W x + b) + G[k] . x + e[k]``:
    W (h, d) and b (h,) the hidden units up to scale and sign, A (c-1, h), G (c-1, d) and
    e (c-1,) the rest (the linear term holds what the unknown signs fold into it).
    """

    def __init__(self, W: FloatArray, b: FloatArray, A: FloatArray, G: FloatArray,
                 e: FloatArray) -> None:
        self.W = W
        self.b = b
        self.A = A
        self.G = G
        self.e = e

    def fit(self, X: Any = None, y: Any = None) -> ReluNetClone:
        self.W_ = np.atleast_2d(np.asarray(self.W, dtype=np.float64))
        self.b_ = np.asarray(self.b, dtype=np.float64)
        self.A_ = np.atleast_2d(np.asarray(self.A, dtype=np.float64))
        self.G_ = np.atleast_2d(np.asarray(self.G, dtype=np.float64))
        self.e_ = np.atleast_1d(np.asarray(self.e, dtype=np.float64))
        self.classes_ = np.arange(self.A_.shape[0] + 1)
        self.n_features_in_ = self.W_.shape[1]
        return self

    def log_ratios(self, X: Any) -> FloatArray:
        check_is_fitted(self)
        x = check_array(X, dtype=np.float64)
        hidden = np.maximum(x @ self.W_.T + self.b_, 0.0)
        return np.asarray(hidden @ self.A_.T + x @ self.G_.T + self.e_)

    def predict_proba(self, X: Any) -> FloatArray:
        return _softmax_from_log_ratios(self.log_ratios(X))

    def predict(self, X: Any) -> IntArray:
        return np.asarray(np.argmax(self.predict_proba(X), axis=1), dtype=np.int64)


class Relu2NetClone(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A network with two hidden ReLU layers in the form exact extraction recovers it.

    ``h = relu(W1 x + b1)`` (the first layer with its signs, each unit up to a positive
    scale), ``z = W2 h + b2`` (the second layer, each unit up to scale and sign), and the
    log-ratio of class k+1 to class 0 is ``A[k] . relu(z) + G[k] . h + e[k]`` (the linear
    term in h holds what the second layer's unknown signs fold into it).
    """

    def __init__(self, W1: FloatArray, b1: FloatArray, W2: FloatArray, b2: FloatArray,
                 A: FloatArray, G: FloatArray, e: FloatArray) -> None:
        self.W1 = W1
        self.b1 = b1
        self.W2 = W2
        self.b2 = b2
        self.A = A
        self.G = G
        self.e = e

    def fit(self, X: Any = None, y: Any = None) -> Relu2NetClone:
        self.W1_ = np.atleast_2d(np.asarray(self.W1, dtype=np.float64))
        self.b1_ = np.asarray(self.b1, dtype=np.float64)
        self.W2_ = np.atleast_2d(np.asarray(self.W2, dtype=np.float64))
        self.b2_ = np.asarray(self.b2, dtype=np.float64)
        self.A_ = np.atleast_2d(np.asarray(self.A, dtype=np.float64))
        self.G_ = np.atleast_2d(np.asarray(self.G, dtype=np.float64))
        self.e_ = np.atleast_1d(np.asarray(self.e, dtype=np.float64))
        self.classes_ = np.arange(self.A_.shape[0] + 1)
        self.n_features_in_ = self.W1_.shape[1]
        return self

    def log_ratios(self, X: Any) -> FloatArray:
        check_is_fitted(self)
        x = check_array(X, dtype=np.float64)
        h = np.maximum(x @ self.W1_.T + self.b1_, 0.0)
        z = np.maximum(h @ self.W2_.T + self.b2_, 0.0)
        return np.asarray(z @ self.A_.T + h @ self.G_.T + self.e_)

    def predict_proba(self, X: Any) -> FloatArray:
        return _softmax_from_log_ratios(self.log_ratios(X))

    def predict(self, X: Any) -> IntArray:
        return np.asarray(np.argmax(self.predict_proba(X), axis=1), dtype=np.int64)


def _softmax_from_log_ratios(z: FloatArray) -> FloatArray:
    """Class probabilities from the log-ratios of classes 1.. to class 0."""
    z = np.column_stack([np.zeros(len(z)), z])
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return np.asarray(p / p.sum(axis=1, keepdims=True))


class BoxClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Axis-aligned boxes with a class each: the shape of a decision tree's leaves.

    lows, highs: (L, d) box corners; box_labels: (L,) class indices; a point belongs to the
    box whose lows < x <= highs; a point in no box takes the box nearest to it.
    """

    def __init__(self, lows: FloatArray, highs: FloatArray, box_labels: IntArray,
                 n_classes: int) -> None:
        self.lows = lows
        self.highs = highs
        self.box_labels = box_labels
        self.n_classes = n_classes

    def fit(self, X: Any = None, y: Any = None) -> BoxClassifier:
        self.lows_ = np.asarray(self.lows, dtype=np.float64)
        self.highs_ = np.asarray(self.highs, dtype=np.float64)
        self.box_labels_ = np.asarray(self.box_labels, dtype=np.int64)
        self.classes_ = np.arange(self.n_classes)
        self.n_features_in_ = self.lows_.shape[1]
        return self

    def apply(self, X: Any) -> IntArray:
        """The index of the box each row falls in (the nearest box when none holds it)."""
        check_is_fitted(self)
        x = check_array(X)
        out = np.empty(len(x), dtype=np.int64)
        for start in range(0, len(x), 2048):
            xb = x[start : start + 2048, None, :]
            gap = np.maximum(self.lows_ - xb, 0) + np.maximum(xb - self.highs_, 0)
            out[start : start + 2048] = np.argmin(gap.sum(axis=2), axis=1)
        return out

    def predict(self, X: Any) -> IntArray:
        return np.asarray(self.box_labels_[self.apply(X)])

    def predict_proba(self, X: Any) -> FloatArray:
        return np.asarray(np.eye(self.n_classes)[self.predict(X)])


class AllClassesClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A scikit-learn classifier trained on class indices, answering for all ``n_classes``.

    A student trained on a few hundred answers may not have seen every class; its
    ``predict_proba`` still gets one column a class (zeros for the unseen ones).
    """

    def __init__(self, estimator: Any, n_classes: int) -> None:
        self.estimator = estimator
        self.n_classes = n_classes

    def fit(self, X: Any, y: Any) -> AllClassesClassifier:
        labels = np.asarray(y, dtype=np.int64)
        self.classes_ = np.arange(self.n_classes)
        self.constant_: int | None = int(labels[0]) if len(np.unique(labels)) == 1 else None
        if self.constant_ is None:
            self.estimator_ = clone(self.estimator).fit(X, labels)
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict_proba(self, X: Any) -> FloatArray:
        check_is_fitted(self)
        x = check_array(X, dtype=np.float64)
        out = np.zeros((len(x), self.n_classes))
        if self.constant_ is not None:
            out[:, self.constant_] = 1.0
            return out
        out[:, self.estimator_.classes_] = self.estimator_.predict_proba(x)
        return out

    def predict(self, X: Any) -> IntArray:
        return np.asarray(np.argmax(self.predict_proba(X), axis=1), dtype=np.int64)


class MeanEnsemble(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """The mean of ``predict_proba`` over ``estimators``, each a copy trained on the same
    data (scikit-learn's soft voting, but ``fit(X, y)`` passes ``y`` on unchanged, so
    probability targets work wherever the members take them).

    :meth:`seeds` builds one from copies of an estimator that differ only in
    ``random_state``. The members must answer for the same classes.
    """

    def __init__(self, estimators: list[Any]) -> None:
        self.estimators = estimators

    @classmethod
    def seeds(cls, estimator: Any, members: int, random_state: int) -> MeanEnsemble:
        """``members`` copies of ``estimator``; the i-th gets ``random_state + i``."""
        if not isinstance(members, int) or members < 1:
            raise ConfigError.invalid("members", "an integer of at least 1", members)
        return cls([clone(estimator).set_params(random_state=random_state + i)
                    for i in range(members)])

    def fit(self, X: Any, y: Any) -> MeanEnsemble:
        if not self.estimators:
            raise ConfigError.invalid("estimators", "a non-empty list", self.estimators)
        self.estimators_ = [clone(e).fit(X, y) for e in self.estimators]
        self.classes_ = self.estimators_[0].classes_
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict_proba(self, X: Any) -> FloatArray:
        check_is_fitted(self)
        return np.asarray(np.mean([e.predict_proba(X) for e in self.estimators_], axis=0))

    def predict(self, X: Any) -> IntArray:
        return np.asarray(self.classes_[np.argmax(self.predict_proba(X), axis=1)])


def score_targets(y: Any, n_classes: int | None = None) -> FloatArray:
    """Probability targets, one row an answer: labels (shape (n,)) one-hot over
    ``n_classes`` (default: the largest label + 1); scores (shape (n, c)) with NaN entries
    (withheld by a top-k policy) sharing the mass the revealed ones leave, then normalised."""
    y = np.asarray(y)
    if y.ndim == 1:
        c = n_classes or int(y.max()) + 1
        return np.asarray(np.eye(c)[y.astype(np.int64)])
    p = np.array(y, dtype=np.float64)
    missing = np.isnan(p)
    if missing.any():  # share the mass the revealed entries leave over the withheld ones
        left = np.clip(1.0 - np.nansum(p, axis=1, keepdims=True), 0.0, 1.0)
        share = left / np.maximum(missing.sum(axis=1, keepdims=True), 1)
        p = np.where(missing, share, p)
    p = np.clip(p, 0.0, None)
    total = p.sum(axis=1, keepdims=True)
    return np.asarray(np.where(total > 0, p / np.where(total > 0, total, 1), 1.0 / p.shape[1]))


class ScoreForestClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Extremely randomised trees (scikit-learn's ``ExtraTreesRegressor``) regressing the
    answered class scores; the class is their argmax.

    A student for piecewise-constant victims (trees): each answer's score vector is its
    leaf's class distribution, so a forest of regression trees learns more from it than from
    the label alone, and the random split points of extra trees smooth the boundaries a few
    hundred answers leave. ``fit(X, y)`` takes scores (n, c) (NaN entries completed as
    :func:`score_targets` does) or labels (n,), one-hot over ``n_classes``.
    """

    def __init__(self, n_estimators: int = 200, *, n_classes: int | None = None,
                 random_state: int = 0) -> None:
        self.n_estimators = n_estimators
        self.n_classes = n_classes
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> ScoreForestClassifier:
        from sklearn.ensemble import ExtraTreesRegressor

        x = check_array(X, dtype=np.float64)
        targets = score_targets(y, self.n_classes)
        self.classes_ = np.arange(targets.shape[1])
        self.forest_ = ExtraTreesRegressor(self.n_estimators, random_state=self.random_state,
                                           n_jobs=1).fit(x, targets)
        self.n_features_in_ = x.shape[1]
        return self

    def predict_proba(self, X: Any) -> FloatArray:
        check_is_fitted(self)
        p = np.asarray(self.forest_.predict(check_array(X, dtype=np.float64)))
        return score_targets(p.reshape(-1, len(self.classes_)))  # clipped at 0, rows sum to 1

    def predict(self, X: Any) -> IntArray:
        return np.asarray(np.argmax(self.predict_proba(X), axis=1), dtype=np.int64)


class TorchMLPClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A ReLU MLP student trained with PyTorch on hard labels or on returned probabilities.

    ``fit(X, y)`` with y of shape (n,) trains on labels (cross-entropy); with y of shape
    (n, c) it trains on the probabilities themselves (soft cross-entropy, i.e. KL to the
    victim's scores). NaN entries in y (withheld by a top-k policy) share the probability
    mass the revealed entries leave. Inputs are standardised with statistics of ``X``.

    hidden: widths of the hidden layers. optimizer: "adam" (mini-batch) or "lbfgs" (full
    batch, float64; for fitting exact probabilities). warm_start: continue from the last fit.
    reference: unlabelled data whose mean and spread standardise the inputs (the attacker's
        pool, say); by default the training inputs.
    scale_floor: the smallest spread an input is divided by (a feature that barely varies
        in the reference is not blown up).
    schedule: the Adam learning rate over the epochs: "cosine" (annealed to 0) or
        "constant".
    loss: for probability targets, "kl" (soft cross-entropy) or "logits" (squared error on
    the class-centred log-probabilities, i.e. on the logits up to the softmax shift: far
    better conditioned when the victim is confident, since KL's gradient vanishes there;
    exact zeros are placed a decade below the smallest positive score), or "logits+kl"
    (the sum of both).
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = (64,),
        *,
        n_classes: int | None = None,
        epochs: int = 200,
        batch_size: int = 64,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adam",
        loss: str = "kl",
        reference: FloatArray | None = None,
        logit_floor: float | None = None,
        scale_floor: float = 1.0,
        schedule: str = "cosine",
        warm_start: bool = False,
        random_state: int = 0,
    ) -> None:
        self.hidden = hidden
        self.n_classes = n_classes
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.loss = loss
        self.reference = reference
        self.logit_floor = logit_floor
        self.scale_floor = scale_floor
        self.schedule = schedule
        self.warm_start = warm_start
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> TorchMLPClassifier:
        self._validate_params()
        x = check_array(X, dtype=np.float64)
        targets = self._targets(np.asarray(y))
        gen = torch.Generator().manual_seed(self.random_state)
        dtype = torch.float64 if self.optimizer == "lbfgs" else torch.float32
        if not (self.warm_start and hasattr(self, "module_")):
            ref = x if self.reference is None else check_array(self.reference, dtype=np.float64)
            self.mean_ = ref.mean(axis=0)
            self.scale_ = np.maximum(ref.std(axis=0), self.scale_floor)
            self.module_ = self._build(x.shape[1], targets.shape[1], gen).to(dtype)
        xt = torch.as_tensor((x - self.mean_) / self.scale_, dtype=dtype)
        self._objective = _soft_ce
        if self.loss in ("logits", "logits+kl") and np.asarray(y).ndim == 2:
            # Exact zeros (rounded away) sit a decade below the smallest score seen, or
            # every score is clipped at logit_floor (a softer target for a student of
            # another architecture than the victim's).
            floor = self.logit_floor or 0.1 * float(targets[targets > 0].min())
            logp = np.log(np.maximum(targets, floor))
            targets = logp - logp.mean(axis=1, keepdims=True)
            self._objective = _centred_mse if self.loss == "logits" else _logits_and_ce
        tt = torch.as_tensor(targets, dtype=dtype)
        if self.optimizer == "lbfgs":
            self._fit_lbfgs(xt, tt)
        else:
            self._fit_adam(xt, tt, gen)
        self.module_.eval()
        return self

    def predict_proba(self, X: Any) -> FloatArray:
        check_is_fitted(self)
        x = check_array(X, dtype=np.float64)
        dtype = next(self.module_.parameters()).dtype
        with torch.no_grad():
            z = self.module_(torch.as_tensor((x - self.mean_) / self.scale_, dtype=dtype))
            return np.asarray(torch.softmax(z.double(), dim=1).numpy())

    def predict(self, X: Any) -> IntArray:
        return np.asarray(np.argmax(self.predict_proba(X), axis=1), dtype=np.int64)

    def input_gradient(self, X: Any, classes: IntArray) -> FloatArray:
        """d(logit of ``classes[i]``)/d(input) for each row, in input units."""
        check_is_fitted(self)
        dtype = next(self.module_.parameters()).dtype
        x = torch.as_tensor((check_array(X) - self.mean_) / self.scale_, dtype=dtype)
        x.requires_grad_(True)
        z = self.module_(x)
        z.gather(1, torch.as_tensor(classes).long()[:, None]).sum().backward()
        assert x.grad is not None
        return np.asarray(x.grad.double().numpy() / self.scale_)

    def _validate_params(self) -> None:
        if self.loss not in {"kl", "logits", "logits+kl"}:
            raise ConfigError.invalid("loss", "'kl', 'logits' or 'logits+kl'", self.loss)
        if self.optimizer not in {"adam", "lbfgs"}:
            raise ConfigError.invalid("optimizer", "'adam' or 'lbfgs'", self.optimizer)
        if not all(isinstance(h, int) and h > 0 for h in self.hidden):
            raise ConfigError.invalid("hidden", "a tuple of positive integers", self.hidden)
        if self.epochs < 1:
            raise ConfigError.invalid("epochs", "an integer >= 1", self.epochs)
        if not self.scale_floor > 0:
            raise ConfigError.invalid("scale_floor", "a number > 0", self.scale_floor)
        if self.schedule not in {"cosine", "constant"}:
            raise ConfigError.invalid("schedule", "'cosine' or 'constant'", self.schedule)

    def _targets(self, y: np.ndarray) -> FloatArray:
        p = score_targets(y, self.n_classes)
        self.classes_ = np.arange(p.shape[1])
        return p

    def _build(self, d: int, c: int, gen: torch.Generator) -> torch.nn.Sequential:
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        layers: list[torch.nn.Module] = []
        width = d
        for h in self.hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        layers.append(torch.nn.Linear(width, c))
        return torch.nn.Sequential(*layers)

    def _fit_adam(self, x: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> None:
        opt = torch.optim.Adam(self.module_.parameters(), lr=self.lr,
                               weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs) \
            if self.schedule == "cosine" else None
        n = len(x)
        bs = min(self.batch_size, n)
        self.module_.train()
        for _ in range(self.epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, bs):
                idx = perm[start : start + bs]
                opt.zero_grad()
                self._objective(self.module_(x[idx]), t[idx]).backward()  # type: ignore[no-untyped-call]
                opt.step()
            if sched is not None:
                sched.step()

    def _fit_lbfgs(self, x: torch.Tensor, t: torch.Tensor) -> None:
        opt = torch.optim.LBFGS(self.module_.parameters(), lr=1.0, max_iter=self.epochs,
                                history_size=100, tolerance_grad=1e-14,
                                tolerance_change=1e-20, line_search_fn="strong_wolfe")
        entropy: torch.Tensor | float = 0.0
        if self._objective is _soft_ce:  # report the KL divergence, not the cross-entropy
            entropy = -(t * torch.log(t.clamp_min(1e-300))).sum(dim=1).mean()

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = self._objective(self.module_(x), t) - entropy
            loss = loss + self.weight_decay * sum((p * p).sum() for p in self.module_.parameters())
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        self.module_.train()
        opt.step(closure)  # type: ignore[no-untyped-call]


def _centred_mse(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error between class-centred logits and class-centred target log-probs."""
    return ((logits - logits.mean(dim=1, keepdim=True) - targets) ** 2).mean()


def _logits_and_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Both: the squared error on the centred logits and the cross-entropy against the
    probabilities they stand for."""
    return _centred_mse(logits, targets) + _soft_ce(logits, torch.softmax(targets, dim=1))


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against probability targets; log_softmax keeps it finite."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


class PrivateMLPClassifier(TorchMLPClassifier):
    """:class:`TorchMLPClassifier` trained by DP-SGD (Abadi et al., CCS 2016) with Opacus.

    Each example's gradient is clipped to ``max_grad_norm`` and Gaussian noise is added to
    every batch's sum, calibrated (Opacus' RDP accountant, Poisson sampling) so that the whole
    training run is (``epsilon``, ``delta``)-differentially private for the training rows.
    ``epsilon=None`` trains the same network without clipping or noise (the epsilon = inf
    point of a privacy curve). After ``fit``, ``epsilon_`` is the budget the accountant spent.

    The input standardisation uses ``reference`` when given; by default it uses the training
    rows' mean and spread, which the DP guarantee does not cover: pass public data (or the
    documented domain's centre and width) for an end-to-end guarantee.
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = (64,),
        *,
        n_classes: int | None = None,
        epochs: int = 100,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        epsilon: float | None = 8.0,
        delta: float = 1e-5,
        max_grad_norm: float = 1.0,
        reference: FloatArray | None = None,
        random_state: int = 0,
    ) -> None:
        super().__init__(hidden, n_classes=n_classes, epochs=epochs, batch_size=batch_size,
                         lr=lr, weight_decay=weight_decay, reference=reference,
                         random_state=random_state)
        self.epsilon = epsilon
        self.delta = delta
        self.max_grad_norm = max_grad_norm

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.epsilon is not None and not self.epsilon > 0:
            raise ConfigError.invalid("epsilon", "a number > 0, or None for no DP", self.epsilon)
        if not 0 < self.delta < 1:
            raise ConfigError.invalid("delta", "a number in (0, 1)", self.delta)
        if not self.max_grad_norm > 0:
            raise ConfigError.invalid("max_grad_norm", "a number > 0", self.max_grad_norm)

    def _fit_adam(self, x: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> None:
        if self.epsilon is None:
            self.epsilon_ = float("inf")
            super()._fit_adam(x, t, gen)
            return
        import warnings

        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        with warnings.catch_warnings():
            # Opacus warns that its RNG is not cryptographically secure (secure_mode) and
            # about the accountant's alpha grid; neither changes the guarantee it reports.
            warnings.simplefilter("ignore")
            engine = PrivacyEngine(accountant="rdp")
            opt = torch.optim.Adam(self.module_.parameters(), lr=self.lr,
                                   weight_decay=self.weight_decay)
            loader = DataLoader(TensorDataset(x, t), batch_size=min(self.batch_size, len(x)),
                                shuffle=True, generator=gen)
            module, dp_opt, dp_loader = engine.make_private_with_epsilon(
                module=self.module_, optimizer=opt, data_loader=loader,
                target_epsilon=float(self.epsilon), target_delta=self.delta, epochs=self.epochs,
                max_grad_norm=self.max_grad_norm, noise_generator=gen)
            module.train()
            for _ in range(self.epochs):
                for xb, tb in dp_loader:
                    if len(xb) == 0:  # Poisson sampling can draw an empty batch
                        continue
                    dp_opt.zero_grad()
                    _soft_ce(module(xb), tb).backward()  # type: ignore[no-untyped-call]
                    dp_opt.step()
            self.epsilon_ = float(engine.get_epsilon(self.delta))
        self.module_ = module._module


RECIPES = {
    "mlp": "a ReLU MLP trained with Adam (PyTorch); epsilon=E trains it by DP-SGD (Opacus). "
           "Keys: hidden (e.g. 256-256), epochs, batch_size, lr, weight_decay, epsilon, delta, "
           "max_grad_norm",
    "sk-mlp": "scikit-learn's MLPClassifier after a StandardScaler. Keys: hidden, alpha, max_iter",
    "logistic": "StandardScaler + LogisticRegression. Keys: C",
    "tree": "DecisionTreeClassifier. Keys: max_depth, max_leaf_nodes",
    "forest": "RandomForestClassifier. Keys: n_estimators, max_depth",
}
"""The training recipes :func:`make_estimator` knows, with their keys."""


def make_estimator(recipe: str, *, n_classes: int | None = None, random_state: int = 0) -> Any:
    """An unfitted classifier from a recipe such as ``mlp:hidden=256-256,epochs=100``.

    A recipe names how a model is trained: the built-in victims are trained from one, and a
    membership-inference attacker trains its shadow models from its guess of the victim's
    (LiRA's threat model: the attacker knows the training procedure, not the data).
    """
    name, _, rest = recipe.strip().partition(":")
    if name not in RECIPES:
        raise ConfigError.invalid("recipe", "one of " + ", ".join(RECIPES), recipe)
    kw: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"recipe {recipe!r}: {item!r} is not key=value")
        kw[key.strip().replace("-", "_")] = value.strip()
    try:
        return _build_recipe(name, kw, n_classes, random_state)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"recipe {recipe!r}: {exc}. {name}: {RECIPES[name]}.") from None


def _build_recipe(name: str, kw: dict[str, str], n_classes: int | None, seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    def take(key: str, cast: Any, default: Any) -> Any:
        return cast(kw.pop(key)) if key in kw else default

    def hidden(default: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(int(h) for h in kw.pop("hidden").split("-")) if "hidden" in kw else default

    def optional_int(v: str) -> int | None:
        return None if v.lower() == "none" else int(v)

    est: Any
    if name == "mlp":
        eps = take("epsilon", lambda v: None if v.lower() in {"none", "inf"} else float(v), None)
        est = PrivateMLPClassifier(
            hidden((256, 256)), n_classes=n_classes, epochs=take("epochs", int, 100),
            batch_size=take("batch_size", int, 64), lr=take("lr", float, 1e-3),
            weight_decay=take("weight_decay", float, 0.0), epsilon=eps,
            delta=take("delta", float, 1e-5), max_grad_norm=take("max_grad_norm", float, 1.0),
            random_state=seed)
    elif name == "sk-mlp":
        est = make_pipeline(StandardScaler(), MLPClassifier(
            hidden_layer_sizes=hidden((100,)), alpha=take("alpha", float, 1e-4),
            max_iter=take("max_iter", int, 1000), random_state=seed))
    elif name == "logistic":
        est = make_pipeline(StandardScaler(), LogisticRegression(C=take("C", float, 1.0),
                                                                 max_iter=10_000))
    elif name == "tree":
        est = DecisionTreeClassifier(max_depth=take("max_depth", optional_int, None),
                                     max_leaf_nodes=take("max_leaf_nodes", optional_int, None),
                                     random_state=seed)
    else:
        est = RandomForestClassifier(n_estimators=take("n_estimators", int, 100),
                                     max_depth=take("max_depth", optional_int, None),
                                     random_state=seed, n_jobs=1)
    if kw:
        raise ValueError(f"unknown key(s) {', '.join(sorted(kw))}")
    return est
