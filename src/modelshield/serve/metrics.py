"""The gateway's Prometheus metrics, served as text at ``/metrics``.

Every answer and every refusal is counted by its route's ``metric`` label
(:mod:`modelshield.serve.routing`) and status.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    """One app's counters, in a registry of their own; ``audit``: the audit stores whose
    group commits are counted (``modelshield_audit_commits_total`` and
    ``modelshield_audit_records_total``, by process: each worker commits its own)."""

    def __init__(self, audit: Iterable[Any] = ()) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_AuditCommits(list(audit)))
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


class _AuditCommits(Collector):
    """The audit log's transactions and the records they held, read from the stores."""

    def __init__(self, stores: list[Any]) -> None:
        self.stores = stores

    def collect(self) -> Iterator[CounterMetricFamily]:
        pid = str(os.getpid())
        commits = CounterMetricFamily("modelshield_audit_commits", "Audit log transactions "
                                      "committed (group commit: many records each)",
                                      labels=["pid"])
        records = CounterMetricFamily("modelshield_audit_records", "Audit records committed",
                                      labels=["pid"])
        commits.add_metric([pid], sum(getattr(s, "commits", 0) for s in self.stores))
        records.add_metric([pid], sum(getattr(s, "committed", 0) for s in self.stores))
        yield commits
        yield records
