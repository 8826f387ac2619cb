"""The audit record's canonical JSON is built by one reused encoder: the bytes sealed stay
exactly those of ``json.dumps(..., sort_keys=True, separators=(",", ":"))``, so the logs
written before still verify. Seals of a fixed record are pinned (computed with the
json.dumps path), over the edge cases: short and tiny floats, NaN and infinities, -0.0,
integers past 64 bits, non-ASCII text, quotes and control characters, numpy arrays."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from modelshield.store.chain import canonical_json, seal
from modelshield.store.sql import AuditRecord


def _record() -> AuditRecord:
    return AuditRecord(
        ts=1765000000.125, key_id="k1", client_ip="10.0.0.1", model="m", rows=2,
        inputs=np.array([[0.1, 1e-7, float("nan")], [2**70, -0.0, 1e300]], dtype=object),
        answer={"labels": np.array([3, 1]),
                "probabilities": np.array([[0.5, None], [float("inf"), 1 / 3]], dtype=object),
                "note": "é ☃ \U0001F600 \"q\" \\ \n"},
        decision={"tier": "t", "action": "allow", "policy": "round:3", "big": 2**80,
                  "flags": [{"detector": "prada", "score": 0.1234, "reason": "ü"}]})


@pytest.mark.parametrize(("version", "keys", "log", "expected"), [
    ("v1", {"v1": b"secret"}, "cd" * 16,
     "cd6222d7ed71088ce3311e02b63b9eeb146a53a16b59d1f73acc59e1e860ba95"),
    ("sha256", {}, "", "93733af5f31b3c86657137323fd321ee0efdac5ab04311ba482ec8a4b4e5bfc9"),
    ("", {}, "", "0035fe857db274acdff949f8723b381aea25786ba5132746d258fddcfaedfce3")])
def test_a_record_seals_as_it_did(version: str, keys: dict[str, bytes], log: str,
                                  expected: str) -> None:
    assert seal(keys, version, "ab" * 32, 7, _record().content(), log) == expected


def _reference(value: Any) -> str:
    def default(v: Any) -> Any:
        if hasattr(v, "tolist"):
            return v.tolist()
        raise TypeError(type(v).__name__)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=default)


@pytest.mark.parametrize("value", [
    0.1, 1e-7, 1e22, 5e-324, -0.0, float("nan"), float("-inf"), 2**64 + 1, -(2**100),
    "é☃\U0001F600\x00\x1f\u2028\"\\/", None, True, [], {}, {"b": 1, "a": [1.5, None]},
    {"z": {"y": [{"x": "ü"}]}, "a": 0}, np.array([[0.1, 1e-7], [3.0, -2.5]]),
    np.array([1, 2**40]), [np.float64(0.1), np.int64(7)], np.float64(1 / 3)])
def test_the_encoder_writes_what_json_dumps_writes(value: Any) -> None:
    assert canonical_json(value) == _reference(value)


def test_what_cannot_be_recorded_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="set"):
        canonical_json({"a": {1, 2}})
