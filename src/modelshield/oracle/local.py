"""LocalOracle: a victim behind an output policy, in the same process.

It holds the victim behind a guard: nothing but the oracle's own answering path may touch it,
so an attack that reaches around the oracle through attributes (``oracle.victim``,
``oracle._victim.model``, ``oracle._victim._target``) fails loudly (:class:`CheatingError`)
instead of quietly reporting numbers no real attacker could get. Python cannot hide an object
from deliberate introspection (``gc.get_referents``, ``object.__getattribute__``); a test
reads every attack's source for those.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, Protocol

from modelshield.answer import Answer, FloatArray, Prediction
from modelshield.errors import CheatingError, ConfigError
from modelshield.oracle.base import BaseOracle
from modelshield.victims.base import Victim

_answering: contextvars.ContextVar[bool] = contextvars.ContextVar("answering", default=False)


class _Guarded:
    """Wraps the victim; any use outside the oracle's answering path raises."""

    __slots__ = ("_target",)

    def __init__(self, target: Victim) -> None:
        object.__setattr__(self, "_target", target)

    def __getattribute__(self, name: str) -> Any:
        # Every attribute, the wrapped victim's slot included, goes through this check.
        if not _answering.get():
            raise CheatingError(
                f"the victim's {name!r} was reached outside oracle.query(): "
                "attacks may use only the answers"
            )
        return getattr(object.__getattribute__(self, "_target"), name)


class Shaper(Protocol):
    """What the oracle needs of an output policy (``modelshield.defenses.policies``)."""

    @property
    def name(self) -> str: ...
    @property
    def needs_tree(self) -> bool: ...
    def apply(self, prediction: Prediction, inputs: FloatArray) -> Answer: ...


class _Full:
    """No policy: every probability at full precision."""

    name = "full"
    needs_tree = False

    def apply(self, prediction: Prediction, inputs: FloatArray) -> Answer:
        return Answer(labels=prediction.labels, probabilities=prediction.probabilities.copy(),
                      policy="full")


class LocalOracle(BaseOracle):
    """Query a Victim in-process through an output policy."""

    def __init__(
        self,
        victim: Victim,
        policy: Shaper | None = None,
        *,
        budget: int | None = None,
        price_per_1k: float = 0.0,
        clock: Callable[[], float] | None = None,
        keep_log: bool = True,
    ) -> None:
        policy = policy or _Full()
        if policy.needs_tree and victim.kind != "tree":
            raise ConfigError(
                f"Output policy {policy.name!r} needs a decision-tree victim; "
                f"{victim.name!r} is a {victim.kind} model."
            )
        kwargs: dict[str, Any] = {"budget": budget, "price_per_1k": price_per_1k}
        if clock is not None:
            kwargs["clock"] = clock
        super().__init__(victim.spec, keep_log=keep_log, **kwargs)
        self.policy = policy
        self._victim = _Guarded(victim)

    @property
    def victim(self) -> Victim:
        raise CheatingError("LocalOracle does not hand out its victim")

    def _answer(self, inputs: FloatArray) -> Answer:
        token = _answering.set(True)
        try:
            prediction = self._victim.predict(inputs)
        finally:
            _answering.reset(token)
        return self.policy.apply(prediction, inputs)
