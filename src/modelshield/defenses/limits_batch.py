"""All of a request's moving-window rate limits in one Redis round trip.

The `limits` library checks one limit per call: with per-key, per-address and global limits
on requests and rows, and the window's state for the ``RateLimit-*`` headers, a request made
six round trips to Redis. This sends the library's own Lua scripts (acquire an entry, then
read the window) for every limit of the request in one pipeline: the same keys, the same
atomic scripts, the same decisions for each limit.

One difference from checking them one by one: a request refused by one limit has still
been counted by the others it passed (they are all sent at once). A refused request
costs its sender budget it would otherwise keep; no request is let past a limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from limits import RateLimitItem
from limits.storage import RedisStorage
from redis.exceptions import NoScriptError


class RedisMovingWindowBatch:
    """Moving-window hits on a `limits` Redis storage, sent together."""

    def __init__(self, storage: RedisStorage, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.clock = clock

    def hit(self, hits: Sequence[tuple[RateLimitItem, str, int]]
            ) -> list[tuple[bool, float, int]]:
        """For each (item, identifier, cost): (admitted, window reset time, remaining)."""
        st = self.storage
        acquire, window = st.lua_acquire_moving_window, st.lua_moving_window
        now = self.clock()
        calls = []
        for item, ident, cost in hits:
            key = st.prefixed_key(item.key_for(ident))
            expiry = item.get_expiry()
            calls += [(acquire, key, (now, item.amount, expiry, cost)),
                      (window, key, (now - expiry, item.amount))]
        raw = self._send(calls)
        # A script Redis does not hold (restarted or flushed) ran nowhere: load it and send
        # just those commands again. Anything else that failed is raised.
        missing = [i for i, r in enumerate(raw) if isinstance(r, NoScriptError)]
        if missing:
            for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                st.get_connection().script_load(script.script)  # type: ignore[attr-defined]
            for i, r in zip(missing, self._send([calls[i] for i in missing]), strict=True):
                raw[i] = r
        for r in raw:
            if isinstance(r, Exception):
                raise r
        out = []
        for (item, _, _), acquired, win in zip(hits, raw[0::2], raw[1::2], strict=True):
            start, count = (float(win[0]), int(win[1])) if win else (now, 0)
            out.append((bool(acquired), start + item.get_expiry(), item.amount - count))
        return out

    def _send(self, calls: list[tuple[Any, str, tuple[Any, ...]]]) -> list[Any]:
        # EVALSHA by hand: a pipeline of Script objects would first ask SCRIPT EXISTS, a
        # round trip of its own on every request.
        pipe = self.storage.get_connection().pipeline(transaction=False)  # type: ignore[attr-defined]
        for script, key, args in calls:
            pipe.evalsha(script.sha, 1, key, *args)
        return list(pipe.execute(raise_on_error=False))
