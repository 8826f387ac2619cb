"""A request's rate limits charged all or nothing: a request is counted against every
limit it names (per key, per address, global; requests, rows, tokens) only if every one of
them admits it. A key or an address past its own limit spends nothing of the global budget,
so one over-limit key cannot lock every other customer out.

* Redis, moving window: one Lua script checks every limit, then charges all of them or
  none, and returns each window's state for the ``RateLimit-*`` headers: one round trip,
  atomic across every replica (:class:`RedisMovingWindowBatch`).
* Memory, moving window: :class:`MemoryMovingWindow`, exact queues of (time, cost) under
  one lock, the same rule as the library's (and as the script's).
* Anything else (the fixed or sliding window, an audit's clocked storage): :class:`LockedCharge`
  tests every limit, then hits every one, under one lock per limiter. In memory that is
  exact (the lock holds every thread of the process that owns the counters). With the fixed
  or sliding window on Redis, two replicas may race between the test and the hit: each hit
  is still atomic, so no request passes a limit, but a request refused by a later hit has
  been counted by the earlier ones.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from limits import RateLimitItem
from limits.storage import RedisStorage
from limits.strategies import RateLimiter

from modelshield.defenses.limits_memory import SweptMemoryStorage

Hit = tuple[RateLimitItem, str, int, bool]
"""(limit, identifier, cost, whether the caller needs the window's state back)."""
Outcome = tuple[bool, float, int] | None
"""(admitted by this limit, window reset time, remaining), or None when not asked for."""

# KEYS: one list per limit, then the keys to read. ARGV: now, the number of limits, then
# (limit, expiry, cost, want) per limit. Returns {charged (1/0), then per limit: admitted
# (1/0), oldest entry in the window, count (searched only when wanted or refused), then the
# value of each key to read ('' when absent)}.
ALL_OR_NOTHING_LUA = """
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local ok = {}
local all = 1
for i = 1, n do
  local limit = tonumber(ARGV[4 * i - 1])
  local expiry = tonumber(ARGV[4 * i])
  local cost = tonumber(ARGV[4 * i + 1])
  ok[i] = 1
  if cost > limit then
    ok[i] = 0
  else
    local entry = redis.call('lindex', KEYS[i], limit - cost)
    if entry and tonumber(entry) >= now - expiry then ok[i] = 0 end
  end
  if ok[i] == 0 then all = 0 end
end
local out = {all}
for i = 1, n do
  local limit = tonumber(ARGV[4 * i - 1])
  local expiry = tonumber(ARGV[4 * i])
  local cost = tonumber(ARGV[4 * i + 1])
  if all == 1 then
    local entries = {}
    for j = 1, cost do entries[j] = now end
    for j = 1, #entries, 5000 do
      redis.call('lpush', KEYS[i], unpack(entries, j, math.min(j + 4999, #entries)))
    end
    redis.call('ltrim', KEYS[i], 0, limit - 1)
    redis.call('expire', KEYS[i], expiry)
  end
  local oldest, found = now, -1
  if ARGV[4 * i + 2] == '1' or ok[i] == 0 then
    -- the window's state: the oldest entry still inside it, and how many are
    local low, high = 0, redis.call('llen', KEYS[i]) - 1
    while low <= high do
      local mid = math.floor((low + high) / 2)
      local v = tonumber(redis.call('lindex', KEYS[i], mid))
      if v and v >= now - expiry then found = mid; low = mid + 1 else high = mid - 1 end
    end
    if found >= 0 then oldest = tonumber(redis.call('lindex', KEYS[i], found)) end
  end
  out[#out + 1] = ok[i]
  out[#out + 1] = tostring(oldest)
  out[#out + 1] = found + 1
end
for i = n + 1, #KEYS do
  out[#out + 1] = redis.call('get', KEYS[i]) or ''
end
return out
"""


class RedisMovingWindowBatch:
    """Every moving-window limit of a request in one Lua script call: charged all or none.

    The entries are the `limits` library's own (a list per limit, newest first, one
    timestamp per unit of cost), so its other readers see the same windows. The same call
    can read keys a request needs next (its suspension flags): one round trip for both."""

    def __init__(self, storage: RedisStorage, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.clock = clock
        self._script: Any = None

    def charge(self, hits: Sequence[Hit]) -> list[Outcome]:
        """Charge every hit or none; each hit's (admitted, reset, remaining)."""
        return self.charge_and_get(hits, [])[0] if hits else []

    def charge_and_get(self, hits: Sequence[Hit], gets: Sequence[str]
                       ) -> tuple[list[Outcome], list[bytes | None]]:
        """``charge``, and the values of the Redis keys ``gets`` (None where absent)."""
        if self._script is None:  # EVALSHA, and SCRIPT LOAD only when Redis lacks it
            client: Any = self.storage.get_connection()
            self._script = client.register_script(ALL_OR_NOTHING_LUA)
        st = self.storage
        now = self.clock()
        keys = [st.prefixed_key(item.key_for(ident)) for item, ident, _, _ in hits]
        args: list[Any] = [now, len(hits)]
        for item, _, cost, want in hits:
            args += [item.amount, item.get_expiry(), cost, int(want)]
        raw = self._script(keys=[*keys, *gets], args=args)
        out: list[Outcome] = []
        for i, (item, _, _, want) in enumerate(hits):
            ok, oldest, count = raw[1 + 3 * i: 4 + 3 * i]
            out.append((bool(int(ok)), float(oldest) + item.get_expiry(),
                        item.amount - int(count)) if want or not int(ok) else None)
        return out, [v or None for v in raw[1 + 3 * len(hits):]]


class MemoryMovingWindow:
    """Exact moving windows in process memory, charged all or none under one lock.

    The `limits` library's memory storage keeps one list entry per unit of cost, inserted at
    the list's head (a copy of the whole list per hit) and found by bisection; a request
    with five limits made ten library calls. Here each window is a queue of (time, cost)
    with its running total: admit when the total still inside the window plus the cost is
    within the limit (the library's rule), charge in O(1), and report the oldest entry
    still inside (the reset time) and what remains. Queues of idle keys are dropped once
    per ``sweep_seconds``."""

    def __init__(self, clock: Callable[[], float] = time.time, sweep_seconds: float = 1.0
                 ) -> None:
        self.clock = clock
        self.sweep_seconds = sweep_seconds
        self._windows: dict[tuple[str, int, int], _Window] = {}
        self._lock = threading.Lock()
        self._swept = clock()

    def charge(self, hits: Sequence[Hit]) -> list[Outcome]:
        now = self.clock()
        with self._lock:
            windows = [self._window(ident, item.amount, item.get_expiry(), now)
                       for item, ident, _, _ in hits]
            admitted = [w.total + cost <= item.amount
                        for w, (item, _, cost, _) in zip(windows, hits, strict=True)]
            if all(admitted):
                for w, (_, _, cost, _) in zip(windows, hits, strict=True):
                    w.add(now, cost)
            out: list[Outcome] = [
                (ok, w.reset(now), max(0, item.amount - w.total)) if report or not ok
                else None
                for w, ok, (item, _, _, report) in zip(windows, admitted, hits, strict=True)]
            if now - self._swept >= self.sweep_seconds:
                self._sweep(now)
        return out

    def _window(self, ident: str, limit: int, expiry: int, now: float) -> _Window:
        key = (ident, limit, expiry)
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window(expiry)
        w.expire(now)
        return w

    def _sweep(self, now: float) -> None:
        """Drop the windows whose every entry has left them (lock held)."""
        self._swept = now
        for key in [k for k, w in self._windows.items() if w.expire(now) == 0]:
            del self._windows[key]


class _Window:
    """One moving window: (time, cost) entries, oldest first, and their total."""

    __slots__ = ("entries", "expiry", "total")

    def __init__(self, expiry: int) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.expiry = expiry
        self.total = 0

    def expire(self, now: float) -> int:
        """Drop the entries older than the window; what is left inside."""
        entries, start = self.entries, now - self.expiry
        while entries and entries[0][0] < start:
            self.total -= entries.popleft()[1]
        return self.total

    def add(self, now: float, cost: int) -> None:
        self.entries.append((now, cost))
        self.total += cost

    def reset(self, now: float) -> float:
        """When the window's oldest entry leaves it (now + expiry when it is empty)."""
        return (self.entries[0][0] if self.entries else now) + self.expiry


_SHARED: weakref.WeakKeyDictionary[RateLimiter, MemoryMovingWindow] = \
    weakref.WeakKeyDictionary()


def charger(limiter: RateLimiter, moving_window: bool
            ) -> RedisMovingWindowBatch | MemoryMovingWindow | LockedCharge:
    """How a Shield charges its requests' limits on ``limiter``: one Lua script (Redis,
    moving window), exact queues in memory (the gateway's own memory storage, moving
    window; shared by every Shield on that limiter), else test-then-hit under a lock."""
    storage = limiter.storage
    if isinstance(storage, RedisStorage) and moving_window:
        return RedisMovingWindowBatch(storage)
    if type(storage) is SweptMemoryStorage and moving_window:
        with _LOCKS_LOCK:
            shared = _SHARED.get(limiter)
            if shared is None:
                shared = _SHARED[limiter] = MemoryMovingWindow()
            return shared
    return LockedCharge(limiter)


_LOCKS: weakref.WeakKeyDictionary[RateLimiter, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _lock_of(limiter: RateLimiter) -> threading.Lock:
    """One lock per limiter: the Shields of a gateway's models share their limiter."""
    with _LOCKS_LOCK:
        lock = _LOCKS.get(limiter)
        if lock is None:
            lock = _LOCKS[limiter] = threading.Lock()
        return lock


class LockedCharge:
    """Test every limit, then hit them all, under the limiter's lock: all or nothing for
    any strategy and storage of the `limits` library (exact in one process)."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.lock = _lock_of(limiter)

    def charge(self, hits: Sequence[Hit]) -> list[Outcome]:
        lim = self.limiter
        with self.lock:
            admitted = [lim.test(item, ident, cost=cost) for item, ident, cost, _ in hits]
            if all(admitted):
                # Each hit is still atomic on its own: in a store shared with other
                # replicas one may refuse after its test passed.
                admitted = [lim.hit(item, ident, cost=cost) for item, ident, cost, _ in hits]
        out: list[Outcome] = []
        for (item, ident, _, report), ok in zip(hits, admitted, strict=True):
            if report or not ok:
                stats = lim.get_window_stats(item, ident)
                out.append((ok, stats.reset_time, stats.remaining))
            else:
                out.append(None)
        return out
