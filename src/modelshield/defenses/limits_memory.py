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
import weakref
from typing import Any

from limits.storage import MemoryStorage


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
