"""What every attack shares: the registry, the budgeted session, and the Extraction.

An attack is a dataclass of its parameters with one entry point,
``run(oracle, budget, pool=None) -> Extraction``. It sees only the oracle (and the
attacker's own unlabelled data, ``pool``), never the victim.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from modelshield.answer import Answer, ApiSpec, FloatArray
from modelshield.errors import AttackRefused, BudgetExhausted, ConfigError, OracleError
from modelshield.oracle.base import Oracle, QueryLog
from modelshield.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")

ASSUMPTION_FAILED = "assumption_failed"
"""The key under which ``extract`` states, in its info, the assumption the answers broke
(a sentence); ``run`` turns it into the Extraction's status "failed" and its reason."""


@dataclass(frozen=True)
class Checkpoint:
    """The clone as it stood after ``queries`` queries."""

    queries: int
    clone: Any


@dataclass
class Extraction:
    """What an attack took away: a clone (or recovered parameters) and how it got it."""

    attack: str
    clone: Any
    queries: int
    cost: float
    seconds: float
    log: QueryLog
    parameters: dict[str, FloatArray] | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    # "ok", or "failed" with a reason when the answers broke the attack's assumption (the
    # outputs do not identify leaves, the model family does not match): the clone is still
    # returned and scored, but the audit never counts it as the attacker's copy.
    status: str = "ok"
    reason: str = ""


class Session:
    """An oracle seen through one attack's budget: counts, checks and refuses past it."""

    def __init__(self, oracle: Oracle, budget: int, attack: str) -> None:
        self.oracle = oracle
        self.spec: ApiSpec = oracle.spec
        self.budget = min(budget, oracle.remaining)
        self.attack = attack
        self.used = 0
        self.log = QueryLog()
        self.checkpoints: list[Checkpoint] = []

    @property
    def remaining(self) -> int:
        return self.budget - self.used

    def query(self, inputs: FloatArray) -> Answer:
        x = np.atleast_2d(np.asarray(inputs, dtype=np.float64))
        if len(x) > self.remaining:
            raise BudgetExhausted(len(x), self.used, self.budget)
        try:
            answer = self.oracle.query(x)
        except OracleError as exc:
            exc.checkpoints = list(self.checkpoints)
            raise
        self.used += len(x)
        self.log.append(x, answer, time.time())
        return answer

    def checkpoint(self, clone: Any) -> None:
        self.checkpoints.append(Checkpoint(self.used, clone))

    def require(self, answer: Answer, what: str) -> None:
        """Refuse (AttackRefused) unless ``answer`` holds ``what``.

        what: "probabilities" (every class score), "scores" (some class scores),
        "leaf identity" (leaf ids, a leaf confidence or full scores).
        """
        ok = {
            "probabilities": answer.has_full_probabilities,
            "scores": answer.probabilities is not None,
            "leaf identity": answer.leaf_ids is not None or answer.confidence is not None
            or answer.has_full_probabilities,
        }[what]
        if not ok:
            raise AttackRefused(self.attack, what, answer.policy)


@dataclass
class Parametrized:
    """A family's base: a dataclass whose fields are the parameters, registered by ``name``
    in the family's ``registry`` when a subclass names itself, checked by ``validate``.

    Class attributes: ``name`` (registry key), ``paper`` (the source), ``needs`` (which
    answer fields it reads). The docstring's first line is what ``modelshield attacks`` lists.
    """

    registry: ClassVar[Registry[Any]]
    name: ClassVar[str]
    paper: ClassVar[str] = ""
    needs: ClassVar[str] = "labels"

    random_state: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            cls.registry.add(cls.name, cls)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for a parameter out of range."""

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0]

    @classmethod
    def parameters(cls) -> list[str]:
        """The parameters a user sets (the seed is set apart)."""
        return [f.name for f in fields(cls) if f.name != "random_state"]


@dataclass
class Attack(Parametrized, ABC):
    """Base of every extraction attack: ``run(oracle, budget, pool)`` -> Extraction."""

    registry: ClassVar[Registry[Any]] = ATTACKS

    def run(self, oracle: Oracle, budget: int, *, pool: FloatArray | None = None) -> Extraction:
        """Attack ``oracle`` with at most ``budget`` queries; ``pool`` is the attacker's data."""
        if not isinstance(budget, int) or budget < 1:
            raise ConfigError.invalid("budget", "an integer >= 1", budget)
        session = Session(oracle, budget, self.name)
        rng = np.random.default_rng(self.random_state)
        data = None if pool is None else np.asarray(pool, dtype=np.float64)
        start = time.perf_counter()
        clone, params, info = self.extract(session, data, rng)
        seconds = time.perf_counter() - start
        price = getattr(oracle, "price_per_1k", 0.0)
        unmet = info.pop(ASSUMPTION_FAILED, None)
        return Extraction(
            attack=self.name, clone=clone, queries=session.used,
            cost=session.used * price / 1000.0, seconds=seconds, log=session.log,
            parameters=params, checkpoints=session.checkpoints, info=info,
            status="ok" if unmet is None else "failed", reason=unmet or "",
        )

    @property
    def steered(self) -> bool:
        """Whether the rows it sends depend on the answers it got (an active learner's do).
        Against such an account a serve-time watermark's score and control tests are not
        exact (they assume the marked cells are a blind draw from the account's cells);
        the audit traces its clones with the sequential test instead
        (:func:`modelshield.defenses.watermark.sequential_p`). True unless an attack
        that draws its rows before asking says otherwise."""
        return True

    @abstractmethod
    def extract(
        self, session: Session, pool: FloatArray | None, rng: np.random.Generator
    ) -> tuple[Any, dict[str, FloatArray] | None, dict[str, Any]]:
        """Return (clone, recovered parameters or None, extra facts for the report)."""


def need_pool(pool: FloatArray | None, attack: str, spec: ApiSpec) -> FloatArray:
    """The attacker's pool, or a ConfigError saying the attack needs one."""
    if pool is None or len(pool) == 0:
        raise ConfigError(f"Attack {attack!r} with this query source needs the attacker's data "
                          "(pool); none was given.")
    if pool.shape[1] != spec.n_features:
        raise ConfigError(f"pool must have {spec.n_features} columns; got {pool.shape[1]}")
    return pool


def synthesize(pool: FloatArray, n: int, spec: ApiSpec, rng: np.random.Generator,
               scale: float = 0.1) -> FloatArray:
    """Synthetic queries around the pool: convex mixes of two pool rows plus small noise."""
    a = pool[rng.integers(0, len(pool), n)]
    b = pool[rng.integers(0, len(pool), n)]
    lam = rng.uniform(0.0, 1.0, size=(n, 1))
    noise = rng.normal(0.0, scale, size=a.shape) * (spec.high - spec.low)
    out = np.clip(lam * a + (1 - lam) * b + noise, spec.low, spec.high)
    return np.round(out) if spec.integer_features else out


def draw_queries(source: str, n: int, spec: ApiSpec, pool: FloatArray | None,
                 rng: np.random.Generator, attack: str) -> FloatArray:
    """``n`` queries from one source: "uniform", "pool" (without repeats) or "synthetic"."""
    if source == "uniform":
        x = spec.uniform(n, rng)
        return np.round(x) if spec.integer_features else x
    data = need_pool(pool, attack, spec)
    if source == "pool":
        if n > len(data):
            raise ConfigError(f"The pool holds {len(data)} rows; {n} pool queries were asked. "
                              "Use source='synthetic' or a smaller budget.")
        return data[rng.choice(len(data), size=n, replace=False)]
    if source == "synthetic":
        return synthesize(data, n, spec, rng)
    raise ConfigError.invalid("source", "'uniform', 'pool' or 'synthetic'", source)


QUERY_SOURCES = ("uniform", "pool", "synthetic")
