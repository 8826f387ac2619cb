"""Requests without a valid key (none, a key that is not valid, or refused because their
address is past its failed-authentication limit), counted per client address and written
to the audit log as one sealed summary per address and window, not one record each: a
flood of keyless requests cannot grow the log by a record a request.

A summary is written when its window (``window`` seconds from the address's first failure
in it) has passed, by a background thread, and every open window on :meth:`close`. Each
gateway process writes its own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from modelshield.store import AuditRecord, AuditStore

log = logging.getLogger("modelshield.gateway")

CODES = ("missing_key", "invalid_key", "too_many_auth_failures")
"""The refusals summarised here instead of recorded one by one."""
MAX_OPEN = 10_000
"""Open windows at most: past this many addresses, every window is written at once."""


@dataclass
class _Tally:
    start: float
    last: float
    counts: Counter[str] = field(default_factory=Counter)


class AuthFailures:
    """The open windows of failed authentications, by client address."""

    def __init__(self, store: AuditStore, clock: Callable[[], float], model: str,
                 window: float = 60.0) -> None:
        self.store, self.clock, self.model, self.window = store, clock, model, window
        self._open: dict[str, _Tally] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._flusher: threading.Thread | None = None

    def note(self, ip: str, code: str) -> None:
        """Count one refusal of ``code`` from ``ip``."""
        now = self.clock()
        with self._lock:
            tally = self._open.get(ip)
            if tally is None:
                tally = self._open[ip] = _Tally(now, now)
            tally.last = now
            tally.counts[code] += 1
            crowded = len(self._open) > MAX_OPEN
        if crowded:
            self.flush(everything=True)
        self._start()

    def flush(self, everything: bool = False) -> int:
        """Write the summaries of the windows that have passed (or of all): how many."""
        now = self.clock()
        with self._lock:
            due = {ip: t for ip, t in self._open.items()
                   if everything or now - t.start >= self.window}
            for ip in due:
                del self._open[ip]
        if due:
            records = [self._record(ip, t) for ip, t in due.items()]
            try:
                self.store.commit(records)
            except Exception:  # the refusals stand; the log's outage is seen elsewhere
                log.warning("%d summaries of failed authentications not written", len(due),
                            exc_info=True)
        return len(due)

    def close(self) -> None:
        """Stop the background writer and write every open window."""
        self._closing.set()
        if self._flusher is not None:
            self._flusher.join(10)
        self.flush(everything=True)

    def _record(self, ip: str, t: _Tally) -> AuditRecord:
        n = sum(t.counts.values())
        return AuditRecord(
            ts=t.last, key_id=None, client_ip=ip, model=self.model, rows=0, inputs=None,
            answer=None, decision={
                "action": "refuse", "status": 401, "code": "auth_failures",
                "reason": f"{n} request(s) without a valid key from this address",
                "counts": dict(t.counts), "first": t.start, "last": t.last})

    def _start(self) -> None:
        if self._flusher is not None or self._closing.is_set():
            return
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(target=self._loop, daemon=True,
                                             name="auth-failures")
        self._flusher.start()

    def _loop(self) -> None:
        while not self._closing.wait(min(self.window, 5.0)):
            with contextlib.suppress(Exception):
                self.flush()
