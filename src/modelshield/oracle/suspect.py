"""A suspect model to test for a watermark: a model file, or an API that serves it.

Either way the suspect is one function, rows -> its answer (labels, and every class's
score where it gives them), and a close.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modelshield.answer import Answer, FloatArray, Prediction
from modelshield.errors import ConfigError


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Suspect:
    """What a watermark test asks: ``predict(rows)``; ``close()`` when done."""

    predict: Callable[[FloatArray], Answer | Prediction]
    close: Callable[[], None] = _nothing


def is_url(where: str) -> bool:
    return where.startswith(("http://", "https://"))


def open_suspect(where: str, n_features: int, *, protocol: str = "rest",
                 key: str | None = None, name: str | None = None) -> Suspect:
    """The suspect at ``where``: a URL (queried with ``key``, the model ``name`` there,
    over ``protocol``) or a model file. A URL suspect must take ``n_features`` features."""
    if not is_url(where):
        from modelshield.victims import load_model_file

        return Suspect(load_model_file(where).predict)
    from modelshield.oracle.http import HttpOracle

    if not key:
        raise ConfigError("--suspect-key: a URL suspect needs an API key (or set "
                          "MODELSHIELD_SUSPECT_KEY).")
    oracle = HttpOracle(where, key, model=name, protocol=protocol)
    if oracle.spec.n_features != n_features:
        oracle.close()
        raise ConfigError(f"--suspect: it takes {oracle.spec.n_features} features; our "
                          f"model takes {n_features}.")
    return Suspect(oracle.query, oracle.close)
