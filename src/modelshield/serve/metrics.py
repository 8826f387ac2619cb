"""The gateway's Prometheus metrics, served as text at ``/metrics``.

Every answer and every refusal is counted by its route's ``metric`` label
(:mod:`modelshield.serve.routing`) and status.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    """One app's counters, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("modelshield_requests_total", "Requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.rows = Counter("modelshield_rows_total", "Rows answered", registry=self.registry)
        self.flags = Counter("modelshield_flags_total", "Detector flags", ["detector"],
                             registry=self.registry)
        self.latency = Histogram("modelshield_request_seconds", "Request latency", ["route"],
                                 registry=self.registry)

    def count(self, route: str, status: int) -> None:
        """One request of ``route`` answered with ``status``."""
        self.requests.labels(route, str(status)).inc()

    def answered(self, route: str, rows: int, flags: Iterable[str], seconds: float) -> None:
        """A classifier's answer of ``rows`` rows, with the detectors that flagged it."""
        self.count(route, 200)
        self.rows.inc(rows)
        for detector in flags:
            self.flags.labels(detector).inc()
        self.latency.labels(route).observe(seconds)

    def text(self) -> str:
        """The Prometheus exposition of every counter."""
        return generate_latest(self.registry).decode()
