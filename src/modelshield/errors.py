"""The one exception family of modelshield.

Every error the package raises on purpose derives from :class:`ModelShieldError`::

    ModelShieldError
     ├── ConfigError            a parameter, name or file is not one of the allowed values
     │    └── UnknownNameError  a registry lookup (victim, attack, policy) failed
     ├── OracleError            the attacker's window onto the model refused a query
     │    ├── BudgetExhausted   the query budget would be exceeded
     │    ├── CheatingError     code tried to reach the victim around the oracle
     │    ├── Blocked           the Shield refused a classifier query (as an attack sees it)
     │    ├── Refused           a language-model API refused a request (status, code, param)
     │    └── UpstreamError     a model server the gateway fronts answered an error status
     ├── AttackRefused          the answers the policy lets out are not enough for the attack
     ├── AttackFailed           the attack ran but could not build a clone within its budget
     │    └── VariantBlocked    the API does not let one language-model variant through
     └── Denied                 the Shield refused a request (carries the HTTP status)

Each carries an ``exit_code`` so the CLI can print it and exit without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ModelShieldError(Exception):
    """Root of every error modelshield raises on purpose."""

    exit_code = 1

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other arguments than their message; rebuild from the state, so
        # an error raised in a worker process reaches the parent whole (a plain Exception
        # is pickled as type(self)(*self.args), which their __init__ refuses).
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[ModelShieldError], args: tuple[Any, ...],
             state: dict[str, Any]) -> ModelShieldError:
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class ConfigError(ModelShieldError, ValueError):
    """A parameter or configuration value is not allowed."""

    exit_code = 2

    @classmethod
    def invalid(cls, field: str, allowed: str, got: object) -> ConfigError:
        """Build the standard message: "The 'field' parameter must be ... Got ... instead."."""
        return cls(f"The '{field}' parameter must be {allowed}. Got {got!r} instead.")


class UnknownNameError(ConfigError, KeyError):
    """A name that no registry holds."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"Unknown {kind} {name!r}. Choose one of: {', '.join(self.known)}.")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class OracleError(ModelShieldError):
    """The oracle refused a query.

    ``checkpoints``: the clones the attack had saved before the refusal (set by the attack's
    session), so an evaluation can still score what the attacker got before it was stopped.
    """

    checkpoints: list[Any] = []  # noqa: RUF012 (replaced per instance, never mutated)


class BudgetExhausted(OracleError):
    """A query would take the oracle past its budget; nothing was answered."""

    def __init__(self, asked: int, used: int, budget: int) -> None:
        self.asked, self.used, self.budget = asked, used, budget
        super().__init__(
            f"Query budget exhausted: asked for {asked} more queries, "
            f"{used} of {budget} already used ({budget - used} left)."
        )


class CheatingError(OracleError):
    """Something outside the oracle's query path touched the victim."""


class AttackRefused(ModelShieldError):
    """The attack needs outputs that the output policy withholds."""

    exit_code = 3

    def __init__(self, attack: str, needs: str, policy: str) -> None:
        self.attack, self.needs, self.policy = attack, needs, policy
        super().__init__(
            f"Attack {attack!r} needs {needs}, which the output policy {policy!r} withholds."
        )


class AttackFailed(ModelShieldError):
    """The attack ran but could not build a clone (too few usable answers for the budget)."""

    exit_code = 3


class Denied(ModelShieldError):
    """The Shield refused a request; ``status`` is the HTTP status the gateway returns."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        self.status, self.code, self.headers = status, code, dict(headers or {})
        super().__init__(message)


class Blocked(OracleError):
    """The Shield refused a query (rate limit, suspended account, bad key)."""

    def __init__(self, denied: Denied, used: int) -> None:
        self.status, self.code, self.used = denied.status, denied.code, used
        super().__init__(f"blocked after {used} queries: HTTP {denied.status} {denied.code}: "
                         f"{denied}")


class Refused(OracleError):
    """The API refused a request: ``status``, ``code`` and the parameter it named."""

    def __init__(self, status: int, code: str, message: str, param: str | None,
                 used: int) -> None:
        self.status, self.code, self.param, self.used = status, code, param, used
        super().__init__(f"HTTP {status} {code}" + (f" ({param})" if param else "")
                         + f": {message}")


class UpstreamError(OracleError):
    """The upstream answered with an error status (kept, so the gateway can pass it on),
    and the request parameter it named, if any."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param

    @property
    def client_status(self) -> int:
        """The status for the gateway's own client: a fault in the request itself passes
        on; anything else (the upstream refusing the gateway's key, say) is a 502."""
        return self.status if self.status in (400, 404, 413, 422) else 502


class VariantBlocked(AttackFailed):
    """The API does not let one variant through (with the API's own reason)."""
