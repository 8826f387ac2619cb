"""Where detectors keep per-account state: process memory, or Redis shared by every replica.

Three primitives cover what the detectors need:

* ``incr(key, field, n)`` / ``incr_many(key, {field: n})`` — atomic counters;
* ``push(key, rows, maxlen)`` / ``rows(key)`` — a capped list of float rows (the latest
  ``maxlen``);
* ``get(key)`` / ``set(key, value)`` — small JSON values (last verdicts, running moments).

Chosen by URL like the rate-limit storage: ``memory://`` or ``redis://host:port/db``.

A request's detectors run inside ``with state.batch(reads):``. In memory that does nothing.
In Redis it fetches every key named in ``reads`` in one round trip, serves the detectors
from that snapshot, and sends all their writes in one more round trip when the block ends.
Counters the request sees are the snapshot plus its own increments (Redis still adds every
increment atomically); a key not named in ``reads`` is read from Redis when asked, after
the writes queued so far are sent.

Row sets in Redis are streams, one entry a push, and each worker keeps the sets it has
read (``_RowSets``): a read fetches only the entries added after the last one it holds,
whichever worker added them. PRADA's sets reach 2,000 rows of 64 floats a class; read
whole, each request moved about 1 MB out of Redis and decoded it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from typing import Any, Literal, Protocol

import numpy as np
from limits.errors import StorageError
from redis.exceptions import RedisError

from modelshield.answer import FloatArray
from modelshield.errors import ConfigError

Counted = tuple[tuple[str, int], ...]
Read = tuple[Literal["hash", "rows", "value"], str] | tuple[Literal["count"], str, Counted]
"""A key a request will read: a counter hash, a row list or a JSON value; or a
``count_new`` of the given (field, amount) pairs, done in the same round trip (the next
``count_new`` of that key with those amounts in the batch returns its result)."""


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
    """State in Redis: counters are HINCRBY, row lists are capped streams of float64 bytes
    (their entries read once per worker, see ``_RowSets``)."""

    def __init__(self, url: str, prefix: str = "modelshield:det:",
                 cache_bytes: int = 256 * 2**20) -> None:
        import redis

        self.client = redis.Redis.from_url(url, **redis_timeouts())
        self.prefix = prefix
        self._local = threading.local()  # this thread's open batch, if any
        self._count_new: Any = None
        self._sets = _RowSets(cache_bytes)

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
        wanted = list(dict.fromkeys(reads))
        snap = _Snapshot(self.client.pipeline(transaction=False))
        if wanted:
            self._read(wanted, snap)
        self._local.snap = snap
        try:
            yield
        finally:  # a refusal raised in the block (a deny) keeps the flag it just set
            self._local.snap = None
            if len(snap.writes):
                snap.writes.execute()

    def _read(self, wanted: list[Read], snap: _Snapshot) -> None:
        """The batch's reads (and counts) in one pipeline, into ``snap``."""
        pipe = self.client.pipeline(transaction=False)
        since: dict[str, str] = {}
        for read in wanted:
            kind, key = read[0], read[1]
            if read[0] == "count":
                # EVAL, not a Script: redis-py's pipeline asks SCRIPT EXISTS each time (a
                # round trip); Redis keeps the compiled script by its digest either way.
                pipe.eval(COUNT_NEW_LUA, 1, self.prefix + key,
                          *[v for pair in read[2] for v in pair])
            elif kind == "rows":
                since[key] = self._sets.since(key)
                pipe.xrange(self._rows_key(key), min=since[key])
            else:
                (pipe.hgetall if kind == "hash" else pipe.get)(self.prefix + key)
        for read, raw in zip(wanted, pipe.execute(), strict=True):
            kind, key = read[0], read[1]
            if read[0] == "count":
                snap.counted[key, read[2]] = _counted(read[2], raw)
            elif kind == "hash":
                snap.hashes[key] = {k.decode(): int(v) for k, v in raw.items()}
            elif kind == "rows":
                snap.rows[key] = self._merge(key, since[key], raw)
            else:
                snap.values[key] = None if raw is None else json.loads(raw)

    def _count_script(self) -> Any:
        if self._count_new is None:
            self._count_new = self.client.register_script(COUNT_NEW_LUA)
        return self._count_new

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
        """One script call (one round trip), after the writes this batch has queued; none
        where the batch counted these amounts with its reads (their result, once)."""
        snap = self._open()
        pairs = tuple(amounts.items())
        if snap is not None and (key, pairs) in snap.counted:
            return snap.counted.pop((key, pairs))
        self._direct()
        raw = self._count_script()(keys=[self.prefix + key],
                                   args=[v for pair in pairs for v in pair])
        return _counted(pairs, raw)

    def _rows_key(self, key: str) -> str:
        return f"{self.prefix}{key}:rows"

    def _merge(self, key: str, since: str, entries: list[Any]) -> FloatArray | None:
        """The set after a read from ``since``; if this worker's copy moved on in between
        (evicted, or replaced), the whole set is read again."""
        merged, rows = self._sets.merge(key, since, entries)
        if merged:
            return rows
        whole: list[Any] = self.client.xrange(self._rows_key(key))  # type: ignore[assignment]
        return self._sets.merge(key, "-", whole)[1]  # a whole read always merges

    def push(self, key: str, rows: FloatArray, maxlen: int | None = None) -> None:
        """One stream entry: the rows' bytes, their width and the cap. Redis keeps at
        least ``maxlen`` entries (trimmed by whole nodes, cheaply); a reader keeps the
        latest ``maxlen`` rows."""
        rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
        entry = {"r": np.ascontiguousarray(rows).tobytes(), "d": rows.shape[1],
                 "m": maxlen or 0}
        snap = self._open()
        pipe = snap.writes if snap is not None else self.client
        pipe.xadd(self._rows_key(key), entry,  # type: ignore[arg-type]
                  maxlen=maxlen, approximate=True)
        if snap is not None and key in snap.rows:
            have = snap.rows[key]
            joined = rows if have is None or len(have) == 0 else np.concatenate([have, rows])
            snap.rows[key] = joined[-maxlen:] if maxlen is not None else joined

    def rows(self, key: str, d: int) -> FloatArray:
        snap = self._open()
        if snap is not None and key in snap.rows:
            have = snap.rows[key]
            return np.empty((0, d)) if have is None else have
        self._direct()
        since = self._sets.since(key)
        entries: list[Any] = self.client.xrange(self._rows_key(key), min=since)  # type: ignore[assignment]
        out = self._merge(key, since, entries)
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


def _counted(pairs: Counted, raw: list[Any]) -> tuple[dict[str, int], int]:
    """A ``count_new`` script's reply: each field's count, and ``_n`` before the call."""
    return {field: int(v) for (field, _), v in zip(pairs, raw, strict=False)}, int(raw[-1])


class _Snapshot:
    """What one batch read, and the writes it has queued."""

    def __init__(self, writes: Any) -> None:
        self.counted: dict[tuple[str, Counted], tuple[dict[str, int], int]] = {}
        self.hashes: dict[str, dict[str, int]] = {}
        self.rows: dict[str, FloatArray | None] = {}  # None: an empty list (width unknown)
        self.values: dict[str, Any] = {}
        self.writes = writes


class _RowSets:
    """The row sets one worker has read from Redis, each with its last entry's id.

    A read asks only for the entries after that id (``XRANGE key (id +``), whoever added
    them, and appends their rows, each entry capped by its own ``maxlen`` as
    ``MemoryState`` caps a push: the copy is the set Redis holds. The copies are bounded
    by ``budget`` bytes, the least recently read dropped first (read whole next time).
    """

    def __init__(self, budget: int) -> None:
        self._sets: OrderedDict[str, _Held] = OrderedDict()
        self._budget = budget
        self._bytes = 0
        self._lock = threading.Lock()

    def since(self, key: str) -> str:
        with self._lock:
            held = self._sets.get(key)
        return "-" if held is None else "({}-{}".format(*held[0])

    def merge(self, key: str, since: str, entries: list[Any]
              ) -> tuple[bool, FloatArray | None]:
        """Whether ``entries`` (read from ``since``; ``-``: read whole) were merged, and
        the set's rows (None: no rows yet). Not merged: this copy is gone or older than
        the read's start."""
        with self._lock:
            old = self._sets.pop(key, None)
            start = old
            if since == "-" and (old is None or old[0] <= _entry_id(entries)):
                start = (0, 0), None  # a whole read replaces a copy no newer than it
            elif since != "-" and (old is None or old[0] < _entry_id([], since)):
                if old is not None:
                    self._sets[key] = old
                return False, None
            assert start is not None
            last, buf = start
            for raw_id, fields in entries:
                ident = _entry_id([], raw_id)
                if ident <= last:
                    continue  # another thread of this worker appended it already
                rows = np.frombuffer(fields[b"r"], dtype=np.float64)
                rows = rows.reshape(-1, int(fields[b"d"]))
                buf = buf if buf is not None else _Buffer(rows.shape[1])
                buf.extend(rows, int(fields[b"m"]) or None)
                last = ident
            self._keep(key, old, (last, buf))
            return True, None if buf is None else buf.view()

    def _keep(self, key: str, old: _Held | None, new: _Held) -> None:
        self._sets[key] = new
        self._bytes += _nbytes(new) - (_nbytes(old) if old is not None else 0)
        while self._bytes > self._budget and len(self._sets) > 1:
            _, dropped = self._sets.popitem(last=False)
            self._bytes -= _nbytes(dropped)


_Held = tuple[tuple[int, int], "_Buffer | None"]
"""A worker's copy of one set: its last entry's id and its rows (None: no rows yet)."""


def _nbytes(held: _Held) -> int:
    return held[1].nbytes if held[1] is not None else 0


def _entry_id(entries: list[Any], raw: bytes | str | None = None) -> tuple[int, int]:
    """A stream entry's id as (milliseconds, sequence): ``raw``, else the last entry's."""
    if raw is None:
        if not entries:
            return (0, 0)
        raw = entries[-1][0]
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.lstrip("(").partition("-")
    return int(ms), int(seq or 0)


REDIS_TIMEOUT_SECONDS = 5.0
"""How long a Redis connection or reply may take: a Redis that stops answering is then an
error (the store's ``fail`` setting decides), not a request that waits forever."""


def redis_timeouts() -> dict[str, float]:
    """The socket time-outs of every Redis client the Shield opens."""
    return {"socket_timeout": REDIS_TIMEOUT_SECONDS,
            "socket_connect_timeout": REDIS_TIMEOUT_SECONDS}


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

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)


STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, StorageError, ConnectionError,
                                                 TimeoutError)
"""What a shared store raises when it is unreachable or fails: only these make the Shield
fail open or closed; any other exception is a bug and surfaces as one (a 500)."""
