"""Output policies: what of the model's output leaves the API.

Each policy turns a :class:`~modelshield.answer.Prediction` into an
:class:`~modelshield.answer.Answer`. The top-1 label is returned unchanged (it is what an
honest caller needs), except by ``misinform``, which answers the queries the model is
unsure of wrongly on purpose, and ``mad``, which may move the top class; policies differ in
which scores come with it. Each policy declares what it promises honest users
(``keeps_top1``: the returned scores rank the true top-1 class first) and the property
tests in ``tests/defenses/test_policies.py`` hold it to that.

Policies are written as ``name`` or ``name:value`` or ``name:key=value,key=value`` on the
command line and in config files, e.g. ``round:2``, ``top-k:3``, ``noise:0.05``,
``reverse-sigmoid:beta=0.5,gamma=0.2``, ``mad-argmax:eps=1``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from modelshield.answer import Answer, FloatArray, Prediction
from modelshield.errors import ConfigError
from modelshield.registry import Registry

POLICIES: Registry[type[OutputPolicy]] = Registry("output policy")


@dataclass(frozen=True)
class OutputPolicy(ABC):
    """Shapes a prediction into what the caller receives."""

    name: ClassVar[str]
    keeps_top1: ClassVar[bool] = True
    needs_tree: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            POLICIES.add(cls.name, cls)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError when a parameter is out of range."""

    @abstractmethod
    def apply(self, prediction: Prediction, inputs: FloatArray) -> Answer:
        """Shape ``prediction`` (for the rows ``inputs``) into an Answer."""

    @property
    def spec(self) -> str:
        """The policy written back in its ``name:key=value`` form."""
        fields = [f for f in dataclasses.fields(self) if f.repr]
        if not fields:
            return self.name
        return self.name + ":" + ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields)

    def _answer(self, prediction: Prediction, **kw: Any) -> Answer:
        return Answer(labels=prediction.labels, policy=self.spec, **kw)


@dataclass(frozen=True)
class FullProbabilities(OutputPolicy):
    """Every class probability at full precision."""

    name: ClassVar[str] = "full"
    summary: ClassVar[str] = "every class probability at full precision (no defense)"

    def apply(self, prediction: Prediction, inputs: FloatArray) -> Answer:
        return self._answer(prediction, probabilities=prediction.probabilities.copy())


@dataclass(frozen=True)
class Rounding(OutputPolicy):
    """Probabilities rounded to ``decimals`` places (Tramèr et al. 2016, Sec. 8)."""

    name: ClassVar[str] = "round"
    summary: ClassVar[str] = "probabilities rounded to N decimals (round:N)"
    # Rounding can tie two classes; the returned scores then need not rank top-1 first.
    keeps_top1: ClassVar[bool] = False
    decimals: int = 2

    def validate(self) -> None:
        if not isinstance(self.decimals, int) or not 0 <= self.decimals <= 15:
            raise ConfigError.invalid("decimals", "an integer in [0, 15]", self.decimals)

    def apply(self, prediction: Prediction, inputs: FloatArray) -> Answer:
        return self._answer(
            prediction, probabilities=np.round(prediction.probabilities, self.decimals)
        )


@dataclass(frozen=True)
class TopK(OutputPolicy):
    """Only the ``k`` largest probabilities; the others are withheld (NaN)."""

    name: ClassVar[str] = "top-k"
    summary: ClassVar[str] = "only the k largest probabilities (top-k:K)"
    k: int = 1

    def validate(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError.invalid("k", "an integer >= 1", self.k)

    def apply(self, prediction: Prediction, inputs: FloatArray) -> Answer:
        probs = prediction.probabilities
        order = np.argsort(-probs, axis=1, kind="stable")
        # The true top-1 must stay first even when probabilities tie.
        order = _put_first(order, prediction.labels)
        out = np.full_like(probs, np.nan)
        keep = order[:, : min(self.k, probs.shape[1])]
        rows = np.arange(probs.shape[0])[:, None]
        out[rows, keep] = probs[rows, keep]
        return self._answer(prediction, probabilities=out)


@dataclass(frozen=True)
class LabelOnly(OutputPolicy):
    """The top-1 label and nothing else."""

    name: ClassVar[str] = "label"
    summary: ClassVar[str] = "the top-1 label only"

    def apply(self, prediction: Prediction, inputs: FloatArray) -> Answer:
        return self._answer(prediction)


@dataclass(frozen=True)
class KeyedNoise(OutputPolicy):
    """Gaussian noise on the probabilities, fixed per input by a keyed hash.

    The noise for a row is drawn from a generator seeded by HMAC-SHA256(key, row), so asking
    the same question twice returns the same answer and averaging repeats removes nothing.
    The noisy vector is clipped, renormalised, and its largest entry swapped back onto the
    true top-1 class if the noise moved it, so the top-1 class never changes.
    """

    name: ClassVar[str] = "noise"
    summary: ClassVar[str] = "keyed Gaussian noise, same answer for the same input (noise:SIGMA)"
    sigma: float = 0.05
    # The HMAC key. A gateway sets it from its config's noise_secret; left empty, each
    # policy object draws a random one, so no default key is ever public.
    key: str = dataclasses.field(default="", repr=False)

    def validate(self) -> None:
        if not isinstance(self.sigma, int | float) or not 0 <= self.sigma <= 1:
            raise ConfigError.invalid("sigma", "a number in [0, 1]", self.sigma)
        if not self.key:
            object.__setattr__(self, "key", secrets.token_hex(32))

    def apply(self, prediction: Prediction, inputs: FloatArray) -> Answer:
        probs = prediction.probabilities
        noise = np.stack([self._row_noise(row, probs.shape[1]) for row in inputs])
        noisy = np.clip(probs + noise, 1e-6, None)
        noisy /= noisy.sum(axis=1, keepdims=True)
        return self._answer(prediction, probabilities=_restore_top1(noisy, prediction.labels))

    def _row_noise(self, row: FloatArray, c: int) -> FloatArray:
        digest = hmac.new(self.key.encode(), np.ascontiguousarray(row).tobytes(), hashlib.sha256)
        rng = np.random.default_rng(int.from_bytes(digest.digest()[:16], "little"))
        return rng.normal(0.0, self.sigma, size=c)


@dataclass(frozen=True)
class ReverseSigmoid(OutputPolicy):
    """Reverse-sigmoid perturbation (Lee et al., IEEE S&P Workshops 2019).

    ``y' = normalise(y - beta * (sigmoid(gamma * logit(y)) - 1/2))``: small near 0 and 1,
    large in between, so a student fitted to the scores by cross-entropy is led astray while
    the scores still sum to one. The perturbation can reorder classes; the label is unchanged.
    """

    name: ClassVar[str] = "reverse-sigmoid"
    summary: ClassVar[str] = "Lee et al. 2019 deceptive perturbation (reverse-sigmoid:beta=B,gamma=G)"
    keeps_top1: ClassVar[bool] = False
    beta: float = 0.7
    gamma: float = 0.4

    def validate(self) -> None:
        if not isinstance(self.beta, int | float) or self.beta <= 0:
            raise ConfigError.invalid("beta", "a number > 0", self.beta)
        if not isinstance(self.gamma, int | float) or self.gamma <= 0:
            raise ConfigError.invalid("gamma", "a number > 0", self.gamma)

    def apply(self, prediction: Prediction, inputs: FloatArray) -> Answer:
        y = np.clip(prediction.probabilities, 1e-9, 1 - 1e-9)
        r = self.beta * (1.0 / (1.0 + np.exp(-self.gamma * np.log(y / (1 - y)))) - 0.5)
        out = np.clip(y - r, 0.0, 1.0)
        total = out.sum(axis=1, keepdims=True)
        out = np.where(total > 0, out / np.where(total > 0, total, 1.0), 1.0 / y.shape[1])
        return self._answer(prediction, probabilities=out)


@dataclass(frozen=True)
class AdaptiveMisinformation(OutputPolicy):
    """Adaptive Misinformation (Kariyappa & Qureshi, CVPR 2020).

    A query the model is unsure of (its top score ``ymax`` below ``tau``) is likely out of
    the natural data, as synthetic and surrogate-data extraction queries are; it gets
    misinformation instead of the model's answer:
    ``y = (1 - a) f(x) + a g(x)`` with ``a = sigmoid(nu * (tau - ymax))``. The paper's
    misinformation function ``g`` is a model trained to put little mass on the true
    class; here ``g`` is computed from the model's own scores, ``g ~ (1 - f(x))^8``, which
    puts the least mass on the model's own top class. Natural rows the model is sure of
    keep their answer; an honest row below ``tau`` gets a wrong one (what it costs honest
    users, measured by bench/misinformation.py). Set ``tau`` from the owner's data: the
    share of natural rows with ``ymax < tau`` is about the share of honest answers lost.
    """

    name: ClassVar[str] = "misinform"
    summary: ClassVar[str] = ("Kariyappa & Qureshi 2020 adaptive misinformation for unsure "
                              "queries (misinform:tau=T,nu=N)")
    keeps_top1: ClassVar[bool] = False
    tau: float = 0.6
    nu: float = 50.0

    def validate(self) -> None:
        if not isinstance(self.tau, int | float) or not 0 < self.tau <= 1:
            raise ConfigError.invalid("tau", "a number in (0, 1]", self.tau)
        if not isinstance(self.nu, int | float) or self.nu <= 0:
            raise ConfigError.invalid("nu", "a number > 0", self.nu)

    def apply(self, prediction: Prediction, inputs: FloatArray) -> Answer:
        p = prediction.probabilities
        ymax = p.max(axis=1, keepdims=True)
        a = 1.0 / (1.0 + np.exp(-self.nu * (self.tau - ymax)))
        g = (1.0 - p) ** 8
        g /= np.maximum(g.sum(axis=1, keepdims=True), 1e-300)
        out = (1 - a) * p + a * g
        out /= out.sum(axis=1, keepdims=True)
        return Answer(labels=np.asarray(out.argmax(axis=1), dtype=np.int64), probabilities=out,
                      policy=self.spec)


@dataclass(frozen=True)
class PredictionPoisoning(OutputPolicy):
    """Prediction Poisoning, "MAD" (Orekondy et al., ICLR 2020).

    A thief trains its copy on our scores: the gradient its model takes from an answer
    ``y`` is ``G^T y``, ``G`` the Jacobian of the log-probabilities of the thief's network
    with respect to its weights. MAD answers ``y~`` within L1 distance ``eps`` of ``y``
    that turns that gradient as far as it can from the one ``y`` gives. The defender does
    not know the thief's network; as in the paper, a randomly initialised surrogate stands
    for it: here a ReLU network of ``hidden`` units (weights from a keyed generator, so the
    same input gets the same answer; inputs scaled to unit RMS). The heuristic is the
    paper's: each vertex ``e_k`` of the simplex is a candidate direction,
    ``y~ = (1 - a) y + a e_k`` with ``a`` as large as ``eps`` allows, and the candidate with
    the largest angular deviation wins. The angles come from the Gram matrix of the
    per-class gradients, which for this surrogate has a closed form, so no autograd runs.

    ``mad`` may change the top class (the label follows ``y~``); ``mad-argmax`` keeps it
    (each candidate's ``a`` is cut so the top class stays first), so honest users keep
    their labels and lose only calibration.
    """

    name: ClassVar[str] = "mad"
    summary: ClassVar[str] = ("Orekondy et al. 2020 prediction poisoning: scores turned "
                              "against the thief's gradient (mad:eps=E)")
    keeps_top1: ClassVar[bool] = False
    argmax: ClassVar[bool] = False
    eps: float = 1.0
    hidden: int = 64
    key: str = dataclasses.field(default="", repr=False)
    _nets: dict[tuple[int, int], tuple[FloatArray, ...]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False)

    def validate(self) -> None:
        if not isinstance(self.eps, int | float) or not 0 <= self.eps <= 2:
            raise ConfigError.invalid("eps", "a number in [0, 2] (an L1 distance)", self.eps)
        if not isinstance(self.hidden, int) or not 1 <= self.hidden <= 4096:
            raise ConfigError.invalid("hidden", "an integer in [1, 4096]", self.hidden)
        if not self.key:
            object.__setattr__(self, "key", secrets.token_hex(32))

    def _net(self, d: int, c: int) -> tuple[FloatArray, ...]:
        if (d, c) not in self._nets:
            seed = hmac.new(self.key.encode(), f"mad-surrogate:{d}:{c}".encode(),
                            hashlib.sha256).digest()
            rng = np.random.default_rng(int.from_bytes(seed[:16], "little"))
            w1 = rng.normal(0.0, np.sqrt(2.0 / d), (self.hidden, d))
            w2 = rng.normal(0.0, np.sqrt(1.0 / self.hidden), (c, self.hidden))
            self._nets[(d, c)] = (w1, rng.normal(0.0, 0.1, self.hidden), w2, np.zeros(c))
        return self._nets[(d, c)]

    def gram(self, inputs: FloatArray, c: int) -> FloatArray:
        """Per row, the K x K Gram matrix of the surrogate's per-class gradients
        ``grad_w log p_k`` (all its weights and biases)."""
        x = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
        x = x / np.maximum(np.sqrt(np.mean(x * x, axis=1, keepdims=True)), 1e-12)
        w1, b1, w2, b2 = self._net(x.shape[1], c)
        pre = x @ w1.T + b1
        h = np.maximum(pre, 0.0)
        z = h @ w2.T + b2
        q = np.exp(z - z.max(axis=1, keepdims=True))
        q /= q.sum(axis=1, keepdims=True)
        # The logits' gradient for class k is e_k - q: (e_k - q).(e_j - q) in closed form.
        uu = (np.eye(c)[None] - q[:, :, None] - q[:, None, :]
              + np.einsum("nc,nc->n", q, q)[:, None, None])
        a = (w2[None] - (q @ w2)[:, None, :]) * (pre > 0)[:, None, :]  # the hidden layer's
        hh = np.einsum("nh,nh->n", h, h) + 1.0
        xx = np.einsum("nd,nd->n", x, x) + 1.0
        return np.asarray(uu * hh[:, None, None]
                          + np.einsum("nkh,njh->nkj", a, a) * xx[:, None, None])

    CHUNK: ClassVar[int] = 1024  # rows per step: a step holds rows x classes x hidden floats

    def apply(self, prediction: Prediction, inputs: FloatArray) -> Answer:
        y = prediction.probabilities
        n, c = y.shape
        if self.eps == 0 or c < 2:
            return self._answer(prediction, probabilities=y.copy())
        out = np.concatenate([
            self._poison(y[i:i + self.CHUNK], prediction.labels[i:i + self.CHUNK],
                         inputs[i:i + self.CHUNK]) for i in range(0, n, self.CHUNK)])
        labels = prediction.labels if self.argmax else np.asarray(out.argmax(axis=1),
                                                                 dtype=np.int64)
        return Answer(labels=labels, probabilities=out, policy=self.spec)

    def _poison(self, y: FloatArray, top: np.ndarray, inputs: FloatArray) -> FloatArray:
        """The answers for one chunk of rows. Candidate k is ``(1 - a_k) y + a_k e_k``; its
        angle to ``y`` under the Gram matrix M is read from ``y.My``, ``(My)_k`` and
        ``M_kk`` alone."""
        n, c = y.shape
        m = self.gram(inputs, c)
        dist = 1.0 - y + (y.sum(axis=1, keepdims=True) - y)  # L1 from y to each vertex
        alpha = np.minimum(1.0, self.eps / np.maximum(dist, 1e-12))
        if self.argmax:
            gap = y[np.arange(n), top][:, None] - y
            cap = gap / (1.0 + gap) * (1.0 - 1e-6)  # keeps y~[top] > y~[k]
            alpha = np.where(np.arange(c)[None] == top[:, None], alpha, np.minimum(alpha, cap))
        my = np.einsum("nkj,nj->nk", m, y)
        ymy = np.einsum("nk,nk->n", y, my)[:, None]
        mkk = np.einsum("nkk->nk", m)
        num = (1 - alpha) * ymy + alpha * my
        quad = (1 - alpha) ** 2 * ymy + 2 * alpha * (1 - alpha) * my + alpha ** 2 * mkk
        best = np.argmin(num / np.maximum(np.sqrt(np.maximum(quad, 0.0) * ymy), 1e-300), axis=1)
        rows = np.arange(n)
        a = alpha[rows, best][:, None]
        out = (1 - a) * y
        out[rows, best] += a[:, 0]
        out = np.clip(out, 0.0, None)
        return np.asarray(out / out.sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class PredictionPoisoningArgmax(PredictionPoisoning):
    """MAD that keeps the top class (Orekondy et al.'s MAD-argmax)."""

    name: ClassVar[str] = "mad-argmax"
    summary: ClassVar[str] = ("prediction poisoning that keeps the top class: honest labels "
                              "unchanged (mad-argmax:eps=E)")
    keeps_top1: ClassVar[bool] = True
    argmax: ClassVar[bool] = True


@dataclass(frozen=True)
class LeafConfidence(OutputPolicy):
    """Decision trees: the label and the leaf's confidence, as BigML returned it.

    BigML reported the lower bound of the Wilson score interval (z = 1.96) for the share of
    the predicted class among the training samples at the leaf (Tramèr et al. 2016, Sec. 5).
    """

    name: ClassVar[str] = "leaf-confidence"
    summary: ClassVar[str] = "trees: label plus BigML's per-leaf Wilson confidence"
    needs_tree: ClassVar[bool] = True

    def apply(self, prediction: Prediction, inputs: FloatArray) -> Answer:
        counts = _tree_counts(prediction, self.name)
        n = counts.sum(axis=1)
        p = counts.max(axis=1) / n
        z = 1.96
        centre = p + z * z / (2 * n)
        spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return self._answer(prediction, confidence=(centre - spread) / (1 + z * z / n))


@dataclass(frozen=True)
class LeafId(OutputPolicy):
    """Decision trees: the label and an identifier of the node that answered."""

    name: ClassVar[str] = "leaf-id"
    summary: ClassVar[str] = "trees: label plus the identifier of the answering node"
    needs_tree: ClassVar[bool] = True

    def apply(self, prediction: Prediction, inputs: FloatArray) -> Answer:
        _tree_counts(prediction, self.name)
        return self._answer(prediction, leaf_ids=prediction.node_ids)


def parse_policy(text: str, *, secret: str | None = None, **overrides: Any) -> OutputPolicy:
    """Build a policy from ``name``, ``name:value`` or ``name:key=value,...``;
    ``secret`` keys the policies that take a key (noise), and is ignored by the others.

    >>> parse_policy("round:4").decimals
    4
    """
    name, _, args = text.strip().partition(":")
    cls = POLICIES[name]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for i, part in enumerate(p for p in args.split(",") if p.strip()):
        key, eq, value = part.partition("=")
        if not eq:  # a bare value fills the first field
            if i > 0 or not fields:
                raise ConfigError(f"Policy {text!r}: write extra values as key=value.")
            key, value = next(iter(fields)), key
        key = key.strip()
        if key not in fields:
            allowed = ", ".join(fields) or "no parameters"
            raise ConfigError(f"Policy {name!r} has no parameter {key!r}; it takes {allowed}.")
        kwargs[key] = _coerce(value.strip(), fields[key], name)
    kwargs.update(overrides)
    if secret and "key" in fields and not kwargs.get("key"):
        kwargs["key"] = secret
    return cls(**kwargs)


def _coerce(value: str, f: dataclasses.Field[Any], policy: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise ConfigError(
            f"The '{f.name}' parameter of policy {policy!r} must be a {kind}. Got {value!r}."
        ) from None
    return value


def _put_first(order: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Reorder each row of ``order`` so that ``labels[row]`` comes first."""
    out = order.copy()
    for i, lab in enumerate(labels):
        if out[i, 0] != lab:
            pos = int(np.flatnonzero(out[i] == lab)[0])
            out[i, 1 : pos + 1] = order[i, :pos]
            out[i, 0] = lab
    return out


def _restore_top1(scores: FloatArray, labels: np.ndarray) -> FloatArray:
    """Swap each row's largest score onto its true top-1 class."""
    out = scores.copy()
    rows = np.arange(len(labels))
    top = np.argmax(out, axis=1)
    moved = top != labels
    r, t, lab = rows[moved], top[moved], labels[moved]
    out[r, t], out[r, lab] = scores[r, lab], scores[r, t]
    return out


def _tree_counts(prediction: Prediction, policy: str) -> FloatArray:
    if prediction.node_counts is None or prediction.node_ids is None:
        raise ConfigError(f"Output policy {policy!r} needs a decision-tree victim.")
    return prediction.node_counts
