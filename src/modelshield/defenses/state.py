"""Where detectors keep per-account state: process memory, or Redis shared by every replica.

Three primitives cover what the detectors need:

* ``incr(key, field, n)`` / ``incr_many(key, {field: n})`` — atomic counters;
* ``push(key, rows, maxlen)`` / ``rows(key)`` — a capped list of float rows;
* ``get(key)`` / ``set(key, value)`` — small JSON values (last verdicts, running moments).

Chosen by URL like the rate-limit storage: ``memory://`` or ``redis://host:port/db``.

A request's detectors run inside ``with state.batch(reads):``. In memory that does nothing.
In Redis it fetches every key named in ``reads`` in one round trip, serves the detectors
from that snapshot, and sends all their writes in one more round trip when the block ends.
Counters the request sees are the snapshot plus its own increments (Redis still adds every
increment atomically); a key not named in ``reads`` is read from Redis when asked, after
the writes queued so far are sent.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, Literal, Protocol

import numpy as np
from limits.errors import StorageError
from redis.exceptions import RedisError

from modelshield.answer import FloatArray
from modelshield.errors import ConfigError

Read = tuple[Literal["hash", "rows", "value"], str]
"""A key a request will read: a counter hash, a row list or a JSON value."""


class DetectorState(Protocol):
    def incr(self, key: str, field: str, n: int = 1) -> int: ...
    def incr_many(self, key: str, amounts: dict[str, int]) -> dict[str, int]: ...
    def count_new(self, key: str, amounts: dict[str, int]) -> tuple[dict[str, int], int]:
        """Add each field's amount, and count in the field ``_n`` the fields seen for the
        first time; atomic. Returns the fields' counts and ``_n`` before this call."""
        ...
    def push(self, key: str, rows: FloatArray, maxlen: int | None = None) -> None: ...
    def rows(self, key: str, d: int) -> FloatArray: ...
    def get(self, key: str) -> Any: ...
    def set(self, key: str, value: Any) -> None: ...
    def delete(self, key: str) -> None: ...
    def batch(self, reads: list[Read]) -> contextlib.AbstractContextManager[None]: ...
    @property
    def batches(self) -> bool:
        """Whether ``batch`` uses its ``reads`` (else callers need not list them)."""
        ...


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

    def count_new(self, key: str, amounts: dict[str, int]) -> tuple[dict[str, int], int]:
        with self._lock:
            counts = self._counts[key]
            before = counts["_n"]
            for field, n in amounts.items():
                counts[field] += n
                counts["_n"] += counts[field] == n
            return {field: counts[field] for field in amounts}, before

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

    def delete(self, key: str) -> None:
        self._values.pop(key, None)

    def batch(self, reads: list[Read]) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # every access is already in-process

    @property
    def batches(self) -> bool:
        return False


class RedisState:
    """State in Redis: counters are HINCRBY, row lists are capped lists of float64 bytes."""

    def __init__(self, url: str, prefix: str = "modelshield:det:") -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = prefix
        self._local = threading.local()  # this thread's open batch, if any
        self._count_new: Any = None

    @property
    def batches(self) -> bool:
        return True

    def _open(self) -> _Snapshot | None:
        snap: _Snapshot | None = getattr(self._local, "snap", None)
        return snap

    def _direct(self) -> None:
        """Before reading a key the batch did not fetch: send the writes queued so far,
        so the read sees them (read your own writes)."""
        snap = self._open()
        if snap is not None and len(snap.writes):
            snap.writes.execute()

    @contextlib.contextmanager
    def batch(self, reads: list[Read]) -> Iterator[None]:
        """One round trip for ``reads`` now, one for the block's writes at its end."""
        if self._open() is not None:  # nested: the outer batch carries on
            yield
            return
        pipe = self.client.pipeline(transaction=False)
        wanted = list(dict.fromkeys(reads))
        fetch = {"hash": pipe.hgetall, "rows": lambda k: pipe.lrange(k, 0, -1),
                 "value": pipe.get}
        for kind, key in wanted:
            fetch[kind](self.prefix + key)
        snap = _Snapshot(self.client.pipeline(transaction=False))
        for (kind, key), raw in zip(wanted, pipe.execute() if wanted else [], strict=True):
            if kind == "hash":
                snap.hashes[key] = {k.decode(): int(v) for k, v in raw.items()}
            elif kind == "rows":
                snap.rows[key] = _decode_rows(raw, None)
            else:
                snap.values[key] = None if raw is None else json.loads(raw)
        self._local.snap = snap
        try:
            yield
        finally:  # a refusal raised in the block (a deny) keeps the flag it just set
            self._local.snap = None
            if len(snap.writes):
                snap.writes.execute()

    def incr(self, key: str, field: str, n: int = 1) -> int:
        return self.incr_many(key, {field: n})[field]

    def incr_many(self, key: str, amounts: dict[str, int]) -> dict[str, int]:
        """Several counters of one key in one round trip (none inside a batch that read it)."""
        snap = self._open()
        if snap is not None and key in snap.hashes:
            counts = snap.hashes[key]
            for field, n in amounts.items():
                counts[field] = counts.get(field, 0) + n
                snap.writes.hincrby(self.prefix + key, field, n)
            return {field: counts[field] for field in amounts}
        self._direct()
        pipe = self.client.pipeline()
        for field, n in amounts.items():
            pipe.hincrby(self.prefix + key, field, n)
        return {field: int(v) for field, v in zip(amounts, pipe.execute(), strict=True)}

    def count_new(self, key: str, amounts: dict[str, int]) -> tuple[dict[str, int], int]:
        """One script call (one round trip), after the writes this batch has queued."""
        self._direct()
        if self._count_new is None:
            self._count_new = self.client.register_script(COUNT_NEW_LUA)
        args: list[Any] = [v for field, n in amounts.items() for v in (field, n)]
        raw = self._count_new(keys=[self.prefix + key], args=args)
        return {field: int(v) for field, v in zip(amounts, raw, strict=False)}, int(raw[-1])

    def push(self, key: str, rows: FloatArray, maxlen: int | None = None) -> None:
        rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
        data = [np.ascontiguousarray(r).tobytes() for r in rows]
        snap = self._open()
        pipe = snap.writes if snap is not None else self.client.pipeline()
        pipe.rpush(self.prefix + key, *data)
        if maxlen is not None:
            pipe.ltrim(self.prefix + key, -maxlen, -1)
        if snap is None:
            pipe.execute()
        elif key in snap.rows:
            have = snap.rows[key]
            joined = rows if have is None or len(have) == 0 else np.concatenate([have, rows])
            snap.rows[key] = joined[-maxlen:] if maxlen is not None else joined

    def rows(self, key: str, d: int) -> FloatArray:
        snap = self._open()
        if snap is not None and key in snap.rows:
            have = snap.rows[key]
            return np.empty((0, d)) if have is None else have
        self._direct()
        raw: list[bytes] = self.client.lrange(self.prefix + key, 0, -1)  # type: ignore[assignment]
        out = _decode_rows(raw, d)
        return np.empty((0, d)) if out is None else out

    def prime(self, values: dict[str, Any]) -> None:
        """Values this thread's request has read already (with its limits, in the same
        script call): the next ``get`` of each returns it, once, without a round trip."""
        self._local.primed = values

    def get(self, key: str) -> Any:
        snap = self._open()
        if snap is not None and key in snap.values:
            return snap.values[key]
        primed: dict[str, Any] | None = getattr(self._local, "primed", None)
        if primed and key in primed:
            return primed.pop(key)
        self._direct()
        raw: bytes | None = self.client.get(self.prefix + key)  # type: ignore[assignment]
        return None if raw is None else json.loads(raw)

    def set(self, key: str, value: Any) -> None:
        snap = self._open()
        if snap is None:
            self.client.set(self.prefix + key, json.dumps(value))
            return
        snap.writes.set(self.prefix + key, json.dumps(value))
        snap.values[key] = value

    def delete(self, key: str) -> None:
        self._direct()
        self.client.delete(self.prefix + key)


COUNT_NEW_LUA = """
local out, new = {}, 0
for i = 1, #ARGV, 2 do
  local n = tonumber(ARGV[i + 1])
  local c = redis.call('hincrby', KEYS[1], ARGV[i], n)
  out[#out + 1] = c
  if c == n then new = new + 1 end
end
out[#out + 1] = redis.call('hincrby', KEYS[1], '_n', new) - new
return out
"""


class _Snapshot:
    """What one batch read, and the writes it has queued."""

    def __init__(self, writes: Any) -> None:
        self.hashes: dict[str, dict[str, int]] = {}
        self.rows: dict[str, FloatArray | None] = {}  # None: an empty list (width unknown)
        self.values: dict[str, Any] = {}
        self.writes = writes


def _decode_rows(raw: list[bytes], d: int | None) -> FloatArray | None:
    if not raw:
        return None if d is None else np.empty((0, d))
    return np.frombuffer(b"".join(raw), dtype=np.float64).reshape(len(raw), -1)


def state_from_url(url: str, scope: str = "") -> DetectorState:
    """The state store at ``url``; ``scope`` (a model's name) keeps one model's detector
    state apart from another's in a shared Redis."""
    if url.startswith("memory://"):
        return MemoryState()
    if url.startswith(("redis://", "rediss://", "redis+unix://")):
        return RedisState(url.replace("redis+unix://", "unix://"),
                          prefix=f"modelshield:det:{scope + ':' if scope else ''}")
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


STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, StorageError, ConnectionError,
                                                 TimeoutError)
"""What a shared store raises when it is unreachable or fails: only these make the Shield
fail open or closed; any other exception is a bug and surfaces as one (a 500)."""
