"""The oracle: everything an attacker can do with the model, and nothing more.

``query(inputs) -> Answer``: one query is one input row. The oracle checks each batch
against the API's contract, counts queries and their dollar cost, refuses a batch that
would go past the budget (answering nothing of it), and logs inputs, answers and times.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from modelshield.answer import Answer, ApiSpec, FloatArray
from modelshield.errors import BudgetExhausted, ConfigError, OracleError


@runtime_checkable
class Oracle(Protocol):
    """The attacker's only window onto a model."""

    spec: ApiSpec

    def query(self, inputs: FloatArray) -> Answer: ...

    @property
    def used(self) -> int: ...

    @property
    def remaining(self) -> int: ...


@dataclass
class QueryLog:
    """Every query an oracle answered: inputs, what came back, and when.

    Arrays grow by batch; ``save``/``load`` round-trip through one ``.npz`` file.
    """

    inputs: list[FloatArray] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    times: list[FloatArray] = field(default_factory=list)

    def append(self, inputs: FloatArray, answer: Answer, when: float) -> None:
        self.inputs.append(inputs)
        self.answers.append(answer)
        self.times.append(np.full(len(answer), when))

    def __len__(self) -> int:
        return sum(len(a) for a in self.answers)

    def arrays(self) -> dict[str, np.ndarray]:
        """The log as flat arrays, one row per query (absent fields are omitted)."""
        if not self.answers:
            return {"inputs": np.empty((0, 0)), "labels": np.empty(0, np.int64)}
        out: dict[str, np.ndarray] = {
            "inputs": np.concatenate(self.inputs),
            "labels": np.concatenate([a.labels for a in self.answers]),
            "times": np.concatenate(self.times),
        }
        for name in ("probabilities", "confidence", "leaf_ids"):
            parts = [getattr(a, name) for a in self.answers]
            if all(p is not None for p in parts):
                out[name] = np.concatenate(parts)
        return out

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        policy = self.answers[0].policy if self.answers else ""
        arrays: dict[str, Any] = {"policy": np.array(policy), **self.arrays()}
        np.savez_compressed(p, **arrays)
        return p if p.suffix == ".npz" else p.with_name(p.name + ".npz")

    @classmethod
    def load(cls, path: str | Path) -> QueryLog:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        policy = str(arrays.pop("policy", ""))
        if len(arrays.get("labels", ())) == 0:
            return cls()
        answer = Answer(
            labels=arrays["labels"],
            probabilities=arrays.get("probabilities"),
            confidence=arrays.get("confidence"),
            leaf_ids=arrays.get("leaf_ids"),
            policy=policy,
        )
        return cls([arrays["inputs"]], [answer], [arrays["times"]])


class BaseOracle(ABC):
    """Budget, price, input checks and the query log; subclasses supply the answers.

    budget: the most queries this oracle answers (``None``: unlimited).
    price_per_1k: dollars per 1,000 queries, for ``cost``.
    clock: seconds since some epoch; injected so tests need no real time.
    """

    def __init__(
        self,
        spec: ApiSpec,
        *,
        budget: int | None = None,
        price_per_1k: float = 0.0,
        clock: Callable[[], float] = time.time,
        keep_log: bool = True,
    ) -> None:
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise ConfigError.invalid("budget", "an integer >= 0 or None", budget)
        if price_per_1k < 0:
            raise ConfigError.invalid("price_per_1k", "a number >= 0", price_per_1k)
        self.spec = spec
        self.budget = budget
        self.price_per_1k = float(price_per_1k)
        self.clock = clock
        self.log = QueryLog()
        self.keep_log = keep_log
        self._used = 0

    @property
    def used(self) -> int:
        """Queries answered so far."""
        return self._used

    @property
    def remaining(self) -> int:
        """Queries left in the budget (a very large number when unlimited)."""
        return 2**62 if self.budget is None else self.budget - self._used

    @property
    def cost(self) -> float:
        """Dollars spent at ``price_per_1k``."""
        return self._used * self.price_per_1k / 1000.0

    def query(self, inputs: FloatArray) -> Answer:
        """Answer one batch: one row, one query. A batch over the API's ``max_batch`` goes
        out in requests of that size, as a client that read the API's limits would send it."""
        x = self._check(inputs)
        if len(x) > self.remaining:
            raise BudgetExhausted(len(x), self._used, self.budget or 0)
        step = self.max_batch or len(x)
        parts = []
        for start in range(0, len(x), step):
            chunk = x[start:start + step]
            answer = self._answer(chunk)
            if len(answer) != len(chunk):
                raise OracleError(f"the model answered {len(answer)} rows for {len(chunk)} "
                                  "queries")
            self._used += len(chunk)
            if self.keep_log:
                self.log.append(chunk.copy(), answer, self.clock())
            parts.append(answer)
        return parts[0] if len(parts) == 1 else concat_answers(parts)

    @abstractmethod
    def _answer(self, inputs: FloatArray) -> Answer:
        """Answer a checked batch."""

    max_batch: int | None = None  # rows per request the API accepts (None: any)

    def _check(self, inputs: FloatArray) -> FloatArray:
        x = np.asarray(inputs, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        d = self.spec.n_features
        if x.ndim != 2 or x.shape[1] != d:
            raise OracleError(f"inputs must have shape (n, {d}); got {np.shape(inputs)}")
        if np.isinf(x).any():
            raise OracleError("inputs must be finite; got infinity")
        if np.isnan(x).any() and not self.spec.accepts_missing:
            raise OracleError("this model does not accept missing features (NaN)")
        return x


def concat_answers(parts: list[Answer]) -> Answer:
    """Answers of consecutive batches as one."""
    def cat(name: str) -> np.ndarray | None:
        arrays = [getattr(p, name) for p in parts]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    labels = cat("labels")
    assert labels is not None
    return Answer(labels=labels, probabilities=cat("probabilities"),
                  confidence=cat("confidence"), leaf_ids=cat("leaf_ids"),
                  policy=parts[-1].policy)
