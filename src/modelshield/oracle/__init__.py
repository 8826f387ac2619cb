"""Oracles: the attacker's window onto a model (in-process here; HTTP with the gateway)."""

from modelshield.oracle.base import BaseOracle, Oracle, QueryLog
from modelshield.oracle.local import LocalOracle

__all__ = ["BaseOracle", "LocalOracle", "Oracle", "QueryLog"]
