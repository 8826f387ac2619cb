"""Where detectors keep per-account state: process memory, or Redis shared by every replica.

Three primitives cover what the detectors need:

* ``incr(key, field, n)`` / ``incr_many(key, {field: n})`` — atomic counters;
* ``push(key, rows, maxlen)`` / ``rows(key)`` — a capped list of float rows;
* ``get(key)`` / ``set(key, value)`` — small JSON values (last verdicts, running moments).

Chosen by URL like the rate-limit storage: ``memory://`` or ``redis://host:port/db``.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from typing import Any, Protocol

import numpy as np

from modelshield.answer import FloatArray
from modelshield.errors import ConfigError


class DetectorState(Protocol):
    def incr(self, key: str, field: str, n: int = 1) -> int: ...
    def incr_many(self, key: str, amounts: dict[str, int]) -> dict[str, int]: ...
    def push(self, key: str, rows: FloatArray, maxlen: int | None = None) -> None: ...
    def rows(self, key: str, d: int) -> FloatArray: ...
    def get(self, key: str) -> Any: ...
    def set(self, key: str, value: Any) -> None: ...


class MemoryState:
    """Per-process state; each replica sees only its own traffic."""

    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._rows: dict[str, _Buffer] = {}
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()

    def incr(self, key: str, field: str, n: int = 1) -> int:
        with self._lock:
            self._counts[key][field] += n
            return self._counts[key][field]

    def incr_many(self, key: str, amounts: dict[str, int]) -> dict[str, int]:
        with self._lock:
            counts = self._counts[key]
            for field, n in amounts.items():
                counts[field] += n
            return {field: counts[field] for field in amounts}

    def push(self, key: str, rows: FloatArray, maxlen: int | None = None) -> None:
        rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
        with self._lock:
            buf = self._rows.get(key)
            if buf is None:
                buf = self._rows[key] = _Buffer(rows.shape[1])
            buf.extend(rows, maxlen)

    def rows(self, key: str, d: int) -> FloatArray:
        with self._lock:
            buf = self._rows.get(key)
            return buf.view() if buf is not None else np.empty((0, d))

    def get(self, key: str) -> Any:
        return self._values.get(key)

    def set(self, key: str, value: Any) -> None:
        self._values[key] = value


class RedisState:
    """State in Redis: counters are HINCRBY, row lists are capped lists of float64 bytes."""

    def __init__(self, url: str, prefix: str = "modelshield:det:") -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    def incr(self, key: str, field: str, n: int = 1) -> int:
        return int(self.client.hincrby(self.prefix + key, field, n))  # type: ignore[arg-type]

    def incr_many(self, key: str, amounts: dict[str, int]) -> dict[str, int]:
        """Several counters of one key in one round trip."""
        pipe = self.client.pipeline()
        for field, n in amounts.items():
            pipe.hincrby(self.prefix + key, field, n)
        return {field: int(v) for field, v in zip(amounts, pipe.execute(), strict=True)}

    def push(self, key: str, rows: FloatArray, maxlen: int | None = None) -> None:
        data = [np.ascontiguousarray(r, dtype=np.float64).tobytes() for r in np.atleast_2d(rows)]
        pipe = self.client.pipeline()
        pipe.rpush(self.prefix + key, *data)
        if maxlen is not None:
            pipe.ltrim(self.prefix + key, -maxlen, -1)
        pipe.execute()

    def rows(self, key: str, d: int) -> FloatArray:
        raw: list[bytes] = self.client.lrange(self.prefix + key, 0, -1)  # type: ignore[assignment]
        if not raw:
            return np.empty((0, d))
        return np.frombuffer(b"".join(raw), dtype=np.float64).reshape(len(raw), -1)

    def get(self, key: str) -> Any:
        raw: bytes | None = self.client.get(self.prefix + key)  # type: ignore[assignment]
        return None if raw is None else json.loads(raw)

    def set(self, key: str, value: Any) -> None:
        self.client.set(self.prefix + key, json.dumps(value))


def state_from_url(url: str) -> DetectorState:
    if url.startswith("memory://"):
        return MemoryState()
    if url.startswith(("redis://", "rediss://", "redis+unix://")):
        return RedisState(url.replace("redis+unix://", "unix://"))
    raise ConfigError.invalid("storage.limits", "memory:// or a redis:// URL", url)


class _Buffer:
    """Rows appended in amortised O(1); views handed out stay valid (rows are never
    overwritten in place: growth and trimming copy to a new array)."""

    def __init__(self, d: int) -> None:
        self._data = np.empty((16, d))
        self._start = 0
        self._end = 0

    def extend(self, rows: FloatArray, maxlen: int | None) -> None:
        n = len(rows)
        if self._end + n > len(self._data):
            live = self._data[self._start : self._end]
            if maxlen is not None:
                live = live[-maxlen:]
            size = max(16, 2 * (len(live) + n))
            data = np.empty((size, self._data.shape[1]))
            data[: len(live)] = live
            self._data, self._start, self._end = data, 0, len(live)
        self._data[self._end : self._end + n] = rows
        self._end += n
        if maxlen is not None:
            self._start = max(self._start, self._end - maxlen)

    def view(self) -> FloatArray:
        return self._data[self._start : self._end]
