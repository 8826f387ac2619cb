"""A request's rate limits charged all or nothing: a request is counted against every
limit it names (per key, per address, global; requests, rows, tokens) only if every one of
them admits it. A key or an address past its own limit spends nothing of the global budget,
so one over-limit key cannot lock every other customer out.

* Redis, moving window: one Lua script checks every limit, then charges all of them or
  none, and returns each window's state for the ``RateLimit-*`` headers: one round trip,
  atomic across every replica (:class:`RedisMovingWindowBatch`).
* Anything else (memory, or Redis with the fixed or sliding window): :class:`LockedCharge`
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
from collections.abc import Callable, Sequence
from typing import Any

from limits import RateLimitItem
from limits.storage import RedisStorage
from limits.strategies import RateLimiter

Hit = tuple[RateLimitItem, str, int, bool]
"""(limit, identifier, cost, whether the caller needs the window's state back)."""
Outcome = tuple[bool, float, int] | None
"""(admitted by this limit, window reset time, remaining), or None when not asked for."""

# KEYS: one list per limit. ARGV: now, then (limit, expiry, cost) per key.
# Returns {charged (1/0), then per key: admitted (1/0), oldest entry in window, count}.
ALL_OR_NOTHING_LUA = """
local now = tonumber(ARGV[1])
local n = #KEYS
local ok = {}
local all = 1
for i = 1, n do
  local limit = tonumber(ARGV[3 * i - 1])
  local expiry = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
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
  local limit = tonumber(ARGV[3 * i - 1])
  local expiry = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  if all == 1 then
    local entries = {}
    for j = 1, cost do entries[j] = now end
    for j = 1, #entries, 5000 do
      redis.call('lpush', KEYS[i], unpack(entries, j, math.min(j + 4999, #entries)))
    end
    redis.call('ltrim', KEYS[i], 0, limit - 1)
    redis.call('expire', KEYS[i], expiry)
  end
  -- the window's state: the oldest entry still inside it, and how many are
  local low, high, found = 0, redis.call('llen', KEYS[i]) - 1, -1
  while low <= high do
    local mid = math.floor((low + high) / 2)
    local v = tonumber(redis.call('lindex', KEYS[i], mid))
    if v and v >= now - expiry then found = mid; low = mid + 1 else high = mid - 1 end
  end
  local oldest = now
  if found >= 0 then oldest = tonumber(redis.call('lindex', KEYS[i], found)) end
  out[#out + 1] = ok[i]
  out[#out + 1] = tostring(oldest)
  out[#out + 1] = found + 1
end
return out
"""


class RedisMovingWindowBatch:
    """Every moving-window limit of a request in one Lua script call: charged all or none.

    The entries are the `limits` library's own (a list per limit, newest first, one
    timestamp per unit of cost), so its other readers see the same windows."""

    def __init__(self, storage: RedisStorage, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.clock = clock
        self._script: Any = None

    def charge(self, hits: Sequence[Hit]) -> list[Outcome]:
        """Charge every hit or none; each hit's (admitted, reset, remaining)."""
        if not hits:
            return []
        if self._script is None:  # EVALSHA, and SCRIPT LOAD only when Redis lacks it
            self._script = self.storage.get_connection().register_script(  # type: ignore[attr-defined]
                ALL_OR_NOTHING_LUA)
        st = self.storage
        now = self.clock()
        keys = [st.prefixed_key(item.key_for(ident)) for item, ident, _, _ in hits]
        args: list[Any] = [now]
        for item, _, cost, _ in hits:
            args += [item.amount, item.get_expiry(), cost]
        raw = self._script(keys=keys, args=args)
        out: list[Outcome] = []
        for i, (item, _, _, _) in enumerate(hits):
            ok, oldest, count = raw[1 + 3 * i: 4 + 3 * i]
            out.append((bool(int(ok)), float(oldest) + item.get_expiry(),
                        item.amount - int(count)))
        return out


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
