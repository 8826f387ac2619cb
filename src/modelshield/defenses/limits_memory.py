"""The in-process rate-limit storage: the ``limits`` library's memory storage, with its
old entries expired by one background thread once a second.

The library's own storage starts a new timer thread every 10 ms while any limit holds
entries. On 2 cores that churn (thread start-up and the interpreter lock) slowed the tail
of every request: ``bench/shield_stages.py`` measures it. Expiring less
often changes no decision: every check compares the entries' timestamps (moving window)
or the key's expiry time (fixed and sliding windows) when it reads them. It only lets
memory of expired entries be freed up to a second later.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from limits.storage import MemoryStorage
from limits.storage.memory import Entry


class SweptMemoryStorage(MemoryStorage):
    STORAGE_SCHEME = ["modelshield-memory"]  # noqa: RUF012 (the library reads it)

    def __init__(self, uri: str | None = None, sweep_seconds: float = 1.0, **options: Any):
        super().__init__(uri, **options)
        self.sweep_seconds = sweep_seconds
        self._sweeper: threading.Thread | None = None
        self._sweeper_lock = threading.Lock()

    def _MemoryStorage__schedule_expiry(self) -> None:  # replaces the per-10-ms timer
        if self._sweeper is not None:
            return
        with self._sweeper_lock:
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=_sweep, args=(weakref.ref(self),),
                                                 daemon=True, name="limits-expiry")
                self._sweeper.start()


def _sweep(ref: weakref.ref[SweptMemoryStorage]) -> None:
    """Expire old entries once per ``sweep_seconds`` until the storage is gone."""
    stop = threading.Event()
    while True:
        storage = ref()
        if storage is None:
            return
        seconds = storage.sweep_seconds
        storage._MemoryStorage__expire_events()  # type: ignore[attr-defined]
        del storage
        stop.wait(seconds)


class VirtualClock:
    """Wall-clock time plus the waits an audit skipped: a paced attacker that waits out a
    rate limit advances it instead of sleeping, so the audit can measure how long a
    low-and-slow attack takes without taking that long."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += max(0.0, seconds)


class ClockedMemoryStorage(MemoryStorage):
    """The moving-window storage read on ``clock`` instead of ``time.time``: the audit's
    Shield counts its limits on a :class:`VirtualClock`. Moving window only (exact); only
    the newest ``limit`` entries of a key are ever read, so older ones are dropped as new
    ones arrive and no sweeper runs."""

    STORAGE_SCHEME = ["modelshield-clocked"]  # noqa: RUF012 (the library reads it)

    def __init__(self, clock: Callable[[], float], **options: Any) -> None:
        super().__init__(None, **options)
        self.clock = clock

    def _MemoryStorage__schedule_expiry(self) -> None:
        return

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        with self.locks[key]:
            events = self.events.setdefault(key, [])
            now = self.clock()
            if len(events) > limit - amount and events[limit - amount].atime >= now - expiry:
                return False
            entry = Entry.__new__(Entry)
            entry.atime, entry.expiry = now, now + expiry
            events[:0] = [entry] * amount
            del events[limit:]
            return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = self.clock()
        events = self.events.get(key, [])
        live = [e for e in events if e.atime >= now - expiry]
        return (live[-1].atime, len(live)) if live else (now, 0)
