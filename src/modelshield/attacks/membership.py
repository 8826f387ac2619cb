"""Membership inference through the oracle: was this record in the model's training data?

Every attack here gets what a customer of the API gets (the oracle), the candidate records
with their true labels, and the attacker's own labelled data from the same population
(``population``, never the victim's training set). It returns one score per candidate:
higher means "more likely a member". Scoring the scores (TPR at a low FPR, AUC, the ROC)
is the audit's job (``modelshield.audit.privacy``); attacks never see who the members are.

- ``loss`` and ``confidence``: one global threshold on the victim's loss or top score
  (Yeom et al., CSF 2018): the baseline.
- ``lira``: the Likelihood Ratio Attack (Carlini et al., S&P 2022), online (shadow models
  trained with and without each candidate) or offline (without only), each with per-example
  or fixed (global) variance.
- ``rmia``: Robust Membership Inference (Zarifzadeh et al., ICML 2024): the likelihood
  ratio of the candidate against many population records, under reference models.
- ``label-only``: robustness to perturbation from top-1 labels alone (Choquette-Choo et al.,
  ICML 2021): members tend to sit farther from the decision boundary.

Shadow (reference) models are trained from a *recipe* (``modelshield.models.make_estimator``):
the attacker's guess of how the victim was trained. LiRA's threat model is that the attacker
knows the training procedure but not the data; a wrong guess is the attacker's loss.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from modelshield.answer import Answer, FloatArray, IntArray
from modelshield.attacks.base import Parametrized, Session
from modelshield.errors import ConfigError
from modelshield.models import make_estimator, torch_threads
from modelshield.oracle.base import Oracle
from modelshield.registry import Registry

BoolArray = NDArray[np.bool_]

MEMBERSHIP: Registry[type[MembershipAttack]] = Registry("membership attack")

_TINY = 1e-45  # LiRA's floor inside the logit, so a score of exactly 0 or 1 stays finite


@dataclass
class Inference:
    """What a membership attack concluded: one score per candidate (higher: member)."""

    attack: str
    scores: FloatArray
    queries: int
    cost: float
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShadowSet:
    """Shadow models' outputs on the candidates (and on population records).

    probs: (S, n, c) each shadow's class probabilities on the n candidates.
    keep: (S, n) whether shadow s trained on candidate i (all False for offline shadows).
    ref_probs: (S, m, c) each shadow's probabilities on ``ref_rows`` population records.
    ref_keep: (S, m) whether shadow s trained on population record j.
    """

    probs: FloatArray
    keep: BoolArray
    ref_rows: IntArray
    ref_probs: FloatArray
    ref_keep: BoolArray
    recipe: str
    seconds: float

    @property
    def size(self) -> int:
        return int(self.probs.shape[0])

    def save(self, path: str | Path) -> None:
        """Write the set to an .npz (atomically), to share among runs."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, probs=self.probs, keep=self.keep, ref_rows=self.ref_rows,
                 ref_probs=self.ref_probs, ref_keep=self.ref_keep,
                 recipe=np.array(self.recipe), seconds=np.array(self.seconds))
        tmp.replace(target)

    @classmethod
    def load(cls, path: str | Path) -> ShadowSet:
        with np.load(path) as z:
            return cls(probs=z["probs"], keep=z["keep"], ref_rows=z["ref_rows"],
                       ref_probs=z["ref_probs"], ref_keep=z["ref_keep"],
                       recipe=str(z["recipe"]), seconds=float(z["seconds"]))

    @classmethod
    def train(
        cls, recipe: str, X: FloatArray, y: IntArray, population: FloatArray,
        population_labels: IntArray, *, n_shadows: int = 16, online: bool = True,
        train_size: int | None = None, n_classes: int, ref_rows: IntArray | None = None,
        random_state: int = 0, workers: int = 1,
        progress: Callable[[int], None] | None = None, backend: str = "local",
    ) -> ShadowSet:
        """Train ``n_shadows`` models from ``recipe``.

        Online: each candidate is in exactly half of the shadows' training sets (LiRA's
        balanced split), topped up with population records to ``train_size``. Offline: each
        shadow trains on ``train_size`` population records only. ``train_size`` is the
        victim's training-set size the attacker assumes (default: half the candidates); an
        online shadow trains on fewer when the population runs short. ``progress`` is
        called with the count of shadows trained so far. ``backend``: ``local`` (``workers``
        processes here) or ``ray`` (one task per shadow on the Ray cluster this process has
        joined).
        """
        if n_shadows < 2:
            raise ConfigError.invalid("shadows", "an integer >= 2", n_shadows)
        make_estimator(recipe)  # a bad recipe fails here, before any training
        rng = np.random.default_rng(random_state)
        keep, pop_keep = _splits(rng, len(X), len(population), n_shadows, online,
                                 train_size or max(len(X) // 2, 1))
        rows = np.arange(len(population)) if ref_rows is None else \
            np.asarray(ref_rows, dtype=np.int64)
        seeds = rng.integers(0, 2**31 - 1, size=n_shadows)
        start = time.perf_counter()
        args = [(recipe, np.concatenate([X[keep[s]], population[pop_keep[s]]]),
                 np.concatenate([y[keep[s]], population_labels[pop_keep[s]]]), n_classes,
                 int(seeds[s]), X, population[rows]) for s in range(n_shadows)]
        outs = []
        for out in _fit_shadows(args, backend, workers):
            outs.append(out)
            if progress is not None:
                progress(len(outs))
        probs = np.stack([o[0] for o in outs])
        ref = np.stack([o[1] for o in outs])
        return cls(probs=probs, keep=keep, ref_rows=rows, ref_probs=ref,
                   ref_keep=pop_keep[:, rows], recipe=recipe,
                   seconds=time.perf_counter() - start)


def _splits(rng: np.random.Generator, n: int, m: int, n_shadows: int, online: bool,
            size: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Which of the ``n`` candidates and of the ``m`` population rows each shadow trains
    on: online, each candidate in exactly half the shadows, topped up with population rows
    to ``size``; offline, ``size`` population rows alone."""
    keep = np.zeros((n_shadows, n), dtype=bool)
    if online:
        keep = np.argsort(rng.uniform(size=(n_shadows, n)), axis=0) < n_shadows // 2
    pop_keep = np.zeros((n_shadows, m), dtype=bool)
    if not online and size > m:
        raise ConfigError(
            f"each offline shadow model trains on {size} population records; the "
            f"population holds {m}. Give more population data or a smaller train_size.")
    for s in range(n_shadows):
        # Online, a shadow short of population rows trains on what there is.
        fill = min(size - int(keep[s].sum()), m)
        if fill > 0:
            pop_keep[s, rng.choice(m, size=fill, replace=False)] = True
    return keep, pop_keep


def _fit_shadows(args: list[tuple[Any, ...]], backend: str, workers: int
                 ) -> Iterator[tuple[FloatArray, FloatArray]]:
    """Each shadow's :func:`_fit_shadow` on ``args``, in order, as it is done: in
    ``workers`` processes here (``local``) or as Ray tasks (``ray``)."""
    from joblib import Parallel, delayed

    if backend == "ray":
        import ray

        fit = ray.remote(num_cpus=1)(_fit_shadow)
        return (ray.get(ref) for ref in [fit.remote(*a) for a in args])
    if backend != "local":
        raise ConfigError.invalid("backend", "'local' or 'ray'", backend)
    if workers > 1:
        results: Iterator[tuple[FloatArray, FloatArray]] = Parallel(
            n_jobs=workers, return_as="generator")(delayed(_fit_shadow)(*a) for a in args)
        return results
    return (_fit_shadow(*a) for a in args)


def _fit_shadow(recipe: str, X: FloatArray, y: IntArray, n_classes: int, seed: int,
                targets: FloatArray, refs: FloatArray) -> tuple[FloatArray, FloatArray]:
    with torch_threads(1):  # small networks train faster on one thread per worker
        est = make_estimator(recipe, n_classes=n_classes, random_state=seed).fit(X, y)
        return _full_proba(est, targets, n_classes), _full_proba(est, refs, n_classes)


def _full_proba(est: Any, X: FloatArray, n_classes: int) -> FloatArray:
    """predict_proba with a column for every class, also those a shadow never saw."""
    if len(X) == 0:
        return np.empty((0, n_classes))
    p = np.asarray(est.predict_proba(X), dtype=np.float64)
    if p.shape[1] == n_classes:
        return p
    out = np.zeros((len(X), n_classes))
    out[:, np.asarray(est.classes_, dtype=np.int64)] = p
    return out


def true_class_score(probs: FloatArray, y: IntArray) -> FloatArray:
    """The score of each row's true class; a withheld (NaN) score gets an equal share of
    the mass the revealed ones leave."""
    p = np.asarray(probs, dtype=np.float64)
    py = p[np.arange(len(y)), y]
    missing = np.isnan(py)
    if missing.any():
        left = np.clip(1.0 - np.nansum(p, axis=1), 0.0, 1.0)
        share = left / np.maximum(np.isnan(p).sum(axis=1), 1)
        py = np.where(missing, share, py)
    return np.asarray(py)


def scaled_logit(probs: FloatArray, y: IntArray) -> FloatArray:
    """LiRA's statistic: log p_y - log(sum of the other scores), near-Gaussian per example."""
    py = true_class_score(probs, y)
    return np.asarray(np.log(py + _TINY) - np.log(np.clip(1.0 - py, 0.0, None) + _TINY))


def coarsen_like(probs: FloatArray, seen: Answer) -> FloatArray:
    """Shadow outputs made as coarse as the victim's answers look: the same number of
    revealed scores per row (top-k) and the same decimal grid (rounding). What an attacker
    can read off the answers; it cannot undo noise it cannot see."""
    p = np.array(probs, dtype=np.float64)
    q = seen.probabilities
    if q is None:
        return p
    revealed = ~np.isnan(q)
    k = int(revealed.sum(axis=1).min()) if len(q) else p.shape[1]
    if k < p.shape[1]:
        order = np.argsort(-p, axis=-1)
        mask = np.zeros_like(p, dtype=bool)
        np.put_along_axis(mask, order[..., :k], True, axis=-1)
        p = np.where(mask, p, np.nan)
    values = q[revealed]
    for decimals in range(1, 7):
        scaled = values * 10**decimals
        if np.allclose(scaled, np.round(scaled), atol=1e-6):
            return np.asarray(np.round(p, decimals))
    return p


@dataclass
class MembershipAttack(Parametrized, ABC):
    """Base of the membership attacks: a dataclass of parameters and one ``run``."""

    registry: ClassVar[Registry[Any]] = MEMBERSHIP
    needs: ClassVar[str] = "scores"
    uses_shadows: ClassVar[bool] = False

    def queries_needed(self, n_candidates: int) -> int:
        """How many queries ``run`` spends on ``n_candidates`` candidates."""
        return n_candidates

    def run(
        self, oracle: Oracle, X: FloatArray, y: IntArray, *,
        population: FloatArray | None = None, population_labels: IntArray | None = None,
        budget: int | None = None, shadows: ShadowSet | None = None, workers: int = 1,
    ) -> Inference:
        """Score each candidate row of ``X`` (true labels ``y``) for membership.

        population / population_labels: the attacker's own labelled data, for shadow models
        and reference records. budget: at most this many queries (default: what the attack
        needs); the attack states what it needs and refuses a smaller budget before it
        spends a query. shadows: shadow models trained beforehand (:meth:`ShadowSet.train`)
        on these candidates, to share among attacks.
        """
        x = np.atleast_2d(np.asarray(X, dtype=np.float64))
        labels = np.asarray(y, dtype=np.int64)
        if len(x) != len(labels) or len(x) == 0:
            raise ConfigError(f"X and y must hold the same number (>= 1) of candidates; got "
                              f"{len(x)} and {len(labels)}")
        if x.shape[1] != oracle.spec.n_features:
            raise ConfigError(f"candidates must have {oracle.spec.n_features} columns; got "
                              f"{x.shape[1]}")
        if labels.min() < 0 or labels.max() >= oracle.spec.n_classes:
            raise ConfigError(f"labels must be class indices 0..{oracle.spec.n_classes - 1}")
        pop, pop_y = self._population(population, population_labels, oracle)
        self.check_inputs(pop, shadows)
        need = self.queries_needed(len(x))
        cap = need if budget is None else budget
        if cap < need:
            raise ConfigError(f"Attack {self.name!r} needs {need} queries for {len(x)} "
                              f"candidates; the budget is {cap}.")
        session = Session(oracle, need, self.name)
        if session.budget < need:
            raise ConfigError(f"Attack {self.name!r} needs {need} queries; the oracle has "
                              f"{session.budget} left.")
        rng = np.random.default_rng(self.random_state)
        start = time.perf_counter()
        scores, info = self.infer(session, x, labels, pop, pop_y, shadows, rng, workers)
        price = getattr(oracle, "price_per_1k", 0.0)
        return Inference(attack=self.name, scores=np.asarray(scores, dtype=np.float64),
                         queries=session.used, cost=session.used * price / 1000.0,
                         seconds=time.perf_counter() - start, info=info)

    def _population(self, pop: FloatArray | None, pop_y: IntArray | None, oracle: Oracle
                    ) -> tuple[FloatArray | None, IntArray | None]:
        if pop is None:
            return None, None
        p = np.atleast_2d(np.asarray(pop, dtype=np.float64))
        if pop_y is None or len(pop_y) != len(p):
            raise ConfigError("population_labels must give one label per population row")
        if p.shape[1] != oracle.spec.n_features:
            raise ConfigError(f"population must have {oracle.spec.n_features} columns; got "
                              f"{p.shape[1]}")
        return p, np.asarray(pop_y, dtype=np.int64)

    def check_inputs(self, pop: FloatArray | None, shadows: ShadowSet | None) -> None:
        """Raise ConfigError, before any query, when the attack lacks data it needs."""

    @abstractmethod
    def infer(self, session: Session, X: FloatArray, y: IntArray, pop: FloatArray | None,
              pop_y: IntArray | None, shadows: ShadowSet | None, rng: np.random.Generator,
              workers: int) -> tuple[FloatArray, dict[str, Any]]:
        """Return (one score per candidate, facts for the report)."""


def _ask(session: Session, X: FloatArray) -> Answer:
    """The answers on ``X``, asking for one row first: a policy that withholds the scores
    costs the attacker one query, not one per candidate."""
    first = session.query(X[:1])
    session.require(first, "scores")
    if len(X) == 1:
        return first
    rest = session.query(X[1:])
    assert first.probabilities is not None and rest.probabilities is not None
    return Answer(labels=np.concatenate([first.labels, rest.labels]),
                  probabilities=np.concatenate([first.probabilities, rest.probabilities]),
                  policy=rest.policy)


@dataclass
class ScoreThreshold(MembershipAttack):
    """The victim's loss on the true label, one global threshold (the baseline)."""

    name: ClassVar[str] = "loss"
    paper: ClassVar[str] = "Yeom et al., CSF 2018"

    def infer(self, session: Session, X: FloatArray, y: IntArray, pop: FloatArray | None,
              pop_y: IntArray | None, shadows: ShadowSet | None, rng: np.random.Generator,
              workers: int) -> tuple[FloatArray, dict[str, Any]]:
        answer = _ask(session, X)
        assert answer.probabilities is not None
        return self.signal(answer.probabilities, y), {}

    @staticmethod
    def signal(probs: FloatArray, y: IntArray) -> FloatArray:
        return scaled_logit(probs, y)


@dataclass
class ConfidenceThreshold(ScoreThreshold):
    """The victim's top score, one global threshold (needs no labels)."""

    name: ClassVar[str] = "confidence"
    paper: ClassVar[str] = "Salem et al., NDSS 2019"

    @staticmethod
    def signal(probs: FloatArray, y: IntArray) -> FloatArray:
        return np.asarray(np.nanmax(probs, axis=1))


@dataclass
class _ShadowAttack(MembershipAttack):
    """Shared by the attacks that train shadow (reference) models."""

    uses_shadows: ClassVar[bool] = True

    shadows: int = 16
    online: bool = True
    shadow: str = "mlp"
    train_size: int | None = None

    def validate(self) -> None:
        if self.shadows < 2:
            raise ConfigError.invalid("shadows", "an integer >= 2", self.shadows)
        if self.train_size is not None and self.train_size < 1:
            raise ConfigError.invalid("train_size", "an integer >= 1 or None", self.train_size)
        make_estimator(self.shadow)

    def check_inputs(self, pop: FloatArray | None, shadows: ShadowSet | None) -> None:
        if shadows is None and not self.online and pop is None:
            raise ConfigError(f"Attack {self.name!r} offline needs the attacker's labelled "
                              "population data (population, population_labels).")

    def _shadows(self, X: FloatArray, y: IntArray, pop: FloatArray | None,
                 pop_y: IntArray | None, given: ShadowSet | None, n_classes: int,
                 workers: int, ref_rows: IntArray | None = None) -> ShadowSet:
        if given is not None:
            if given.probs.shape[1] != len(X):
                raise ConfigError("the shadow set was trained for another set of candidates")
            if not self.online or given.keep.any(axis=0).all():
                return given
            raise ConfigError("online attacks need shadows trained online (with candidates)")
        if pop is None or pop_y is None:
            if not self.online:
                raise ConfigError(f"Attack {self.name!r} offline needs the attacker's "
                                  "labelled population data (population, population_labels).")
            pop = np.empty((0, X.shape[1]))
            pop_y = np.empty(0, dtype=np.int64)
        return ShadowSet.train(self.shadow, X, y, pop, pop_y, n_shadows=self.shadows,
                               online=self.online, train_size=self.train_size,
                               n_classes=n_classes, ref_rows=ref_rows,
                               random_state=self.random_state, workers=workers)


@dataclass
class LiRA(_ShadowAttack):
    """Likelihood Ratio Attack: Gaussian fits of shadow models' logits, in and out."""

    name: ClassVar[str] = "lira"
    paper: ClassVar[str] = "Carlini et al., S&P 2022"

    fixed_variance: bool = False

    def infer(self, session: Session, X: FloatArray, y: IntArray, pop: FloatArray | None,
              pop_y: IntArray | None, shadows: ShadowSet | None, rng: np.random.Generator,
              workers: int) -> tuple[FloatArray, dict[str, Any]]:
        answer = _ask(session, X)  # one query first: a refusal costs nothing more
        assert answer.probabilities is not None
        observed = scaled_logit(answer.probabilities, y)
        sh = self._shadows(X, y, pop, pop_y, shadows, session.spec.n_classes, workers)
        stats = np.stack([scaled_logit(coarsen_like(p, answer), y) for p in sh.probs])
        out = np.where(~sh.keep, stats, np.nan)
        mu_out = np.nanmean(out, axis=0)
        sd_out = _std(out, self.fixed_variance)
        if self.online:
            inn = np.where(sh.keep, stats, np.nan)
            mu_in = np.nanmean(inn, axis=0)
            sd_in = _std(inn, self.fixed_variance)
            scores = (norm.logpdf(observed, mu_in, sd_in) - norm.logpdf(observed, mu_out, sd_out))
        else:
            scores = norm.logcdf(observed, mu_out, sd_out)
        return scores, {"shadows": sh.size, "shadow_seconds": round(sh.seconds, 1),
                        "online": self.online, "fixed_variance": self.fixed_variance,
                        "recipe": sh.recipe}


def _std(stats: FloatArray, fixed: bool) -> FloatArray:
    """Per-example spread of the shadows' statistics, or one global spread (fixed)."""
    counts = (~np.isnan(stats)).sum(axis=0)
    per = np.nanstd(stats, axis=0) if (counts > 0).all() else np.zeros(stats.shape[1])
    if fixed or (counts < 2).any():
        globl = float(np.nanmedian(per[counts >= 2])) if (counts >= 2).any() else 1.0
        return np.full(stats.shape[1], max(globl, 1e-6)) if fixed else np.where(
            counts >= 2, np.maximum(per, 1e-6), max(globl, 1e-6))
    return np.asarray(np.maximum(per, 1e-6))


@dataclass
class RMIA(_ShadowAttack):
    """Robust MIA: the candidate's likelihood ratio against population records'."""

    name: ClassVar[str] = "rmia"
    paper: ClassVar[str] = "Zarifzadeh et al., ICML 2024"

    references: int = 500
    gamma: float = 2.0
    offline_a: float = 0.3

    def validate(self) -> None:
        super().validate()
        if self.references < 1:
            raise ConfigError.invalid("references", "an integer >= 1", self.references)
        if not self.gamma > 0:
            raise ConfigError.invalid("gamma", "a number > 0", self.gamma)
        if not 0 <= self.offline_a <= 1:
            raise ConfigError.invalid("offline_a", "a number in [0, 1]", self.offline_a)

    def queries_needed(self, n_candidates: int) -> int:
        return n_candidates + self.references

    def check_inputs(self, pop: FloatArray | None, shadows: ShadowSet | None) -> None:
        super().check_inputs(pop, shadows)
        have = 0 if pop is None else len(pop)
        if have < self.references:
            raise ConfigError(f"Attack 'rmia' compares each candidate with {self.references} "
                              f"population records (references); the population holds {have}.")

    def infer(self, session: Session, X: FloatArray, y: IntArray, pop: FloatArray | None,
              pop_y: IntArray | None, shadows: ShadowSet | None, rng: np.random.Generator,
              workers: int) -> tuple[FloatArray, dict[str, Any]]:
        assert pop is not None and pop_y is not None
        answer = _ask(session, X)
        assert answer.probabilities is not None
        if shadows is not None:
            rows = shadows.ref_rows[:self.references]
        else:
            rows = np.sort(rng.choice(len(pop), size=self.references, replace=False))
        sh = self._shadows(X, y, pop, pop_y, shadows, session.spec.n_classes, workers, rows)
        sel = np.searchsorted(sh.ref_rows, rows)
        z_answer = session.query(pop[rows])
        assert z_answer.probabilities is not None
        px_target = true_class_score(answer.probabilities, y)
        pz_target = true_class_score(z_answer.probabilities, pop_y[rows])
        px_ref = np.stack([true_class_score(coarsen_like(p, answer), y) for p in sh.probs])
        pz_ref = np.stack([true_class_score(coarsen_like(p, answer), pop_y[rows])
                           for p in sh.ref_probs[:, sel]])
        px = self._prior(px_ref, sh.keep)
        pz = self._prior(pz_ref, sh.ref_keep[:, sel])
        ratio_x = px_target / np.maximum(px, _TINY)
        ratio_z = pz_target / np.maximum(pz, _TINY)
        # Score: the share of population records z that x dominates by more than gamma.
        sorted_z = np.sort(ratio_z)
        beaten = np.searchsorted(sorted_z, ratio_x / self.gamma, side="left")
        scores = beaten / len(sorted_z)
        return scores, {"shadows": sh.size, "shadow_seconds": round(sh.seconds, 1),
                        "online": self.online, "references": self.references,
                        "gamma": self.gamma, "recipe": sh.recipe}

    def _prior(self, p_ref: FloatArray, keep: BoolArray) -> FloatArray:
        """Pr(x): the mean over reference models (online), or RMIA's offline estimate from
        models that left x out, (1 + a)/2 * mean_out + (1 - a)/2."""
        if self.online:
            return np.asarray(p_ref.mean(axis=0))
        out = np.where(~keep, p_ref, np.nan)
        mean_out = np.nanmean(out, axis=0)
        a = self.offline_a
        return np.asarray((1 + a) / 2 * mean_out + (1 - a) / 2)


@dataclass
class LabelOnly(MembershipAttack):
    """Label-only: how many noisy copies of a record keep its true label."""

    name: ClassVar[str] = "label-only"
    paper: ClassVar[str] = "Choquette-Choo et al., ICML 2021"
    needs: ClassVar[str] = "labels"

    perturbations: int = 20
    noise: float = 0.5

    def validate(self) -> None:
        if self.perturbations < 1:
            raise ConfigError.invalid("perturbations", "an integer >= 1", self.perturbations)
        if not self.noise > 0:
            raise ConfigError.invalid("noise", "a number > 0", self.noise)

    def queries_needed(self, n_candidates: int) -> int:
        return n_candidates * (1 + self.perturbations)

    def infer(self, session: Session, X: FloatArray, y: IntArray, pop: FloatArray | None,
              pop_y: IntArray | None, shadows: ShadowSet | None, rng: np.random.Generator,
              workers: int) -> tuple[FloatArray, dict[str, Any]]:
        spec = session.spec
        # Noise in units of each feature's spread in the attacker's own data (the documented
        # domain's width when it has none).
        spread = (pop.std(axis=0) if pop is not None and len(pop) > 1
                  else (spec.high - spec.low) / 4)
        spread = np.where(spread > 0, spread, (spec.high - spec.low) / 4)
        correct = (session.query(X).labels == y).astype(np.float64)
        n, d = X.shape
        noisy = X[:, None, :] + rng.normal(0.0, self.noise, (n, self.perturbations, d)) * spread
        noisy = np.clip(noisy, spec.low, spec.high).reshape(-1, d)
        if spec.integer_features:
            noisy = np.round(noisy)
        labels = session.query(noisy).labels.reshape(n, self.perturbations)
        kept = (labels == y[:, None]).mean(axis=1)
        # A misclassified record is almost surely not a member: it ranks below every
        # correctly classified one.
        return correct + kept * correct, {"perturbations": self.perturbations,
                                          "noise": self.noise}
