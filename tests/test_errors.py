"""Every modelshield error survives pickling: attacks and audits run in worker processes,
and an error raised there must reach the parent as itself, with its fields."""

from __future__ import annotations

import pickle

from modelshield.errors import (
    AttackRefused,
    Blocked,
    BudgetExhausted,
    ConfigError,
    Denied,
    UnknownNameError,
)


def test_errors_cross_process_boundaries_whole() -> None:
    denied = Denied(429, "rate_limited", "slow down", {"Retry-After": "3"})
    errors = [AttackRefused("relu-exact", "probabilities", "label"), denied,
              Blocked(denied, used=7), BudgetExhausted(10, 5, 12),
              UnknownNameError("victim", "nope", ["a", "b"]),
              ConfigError.invalid("rate", "a number in (0, 1)", 2)]
    for err in errors:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert back.__dict__ == err.__dict__
    refused = pickle.loads(pickle.dumps(errors[0]))
    assert (refused.attack, refused.needs, refused.policy) == ("relu-exact", "probabilities",
                                                               "label")
    assert pickle.loads(pickle.dumps(denied)).headers == {"Retry-After": "3"}
