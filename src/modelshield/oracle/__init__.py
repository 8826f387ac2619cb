"""Oracles: the attacker's window onto a model (in-process here; HTTP with the gateway)."""

from modelshield.errors import Blocked
from modelshield.oracle.base import BaseOracle, Oracle, QueryLog
from modelshield.oracle.http import HttpOracle
from modelshield.oracle.local import LocalOracle
from modelshield.oracle.shielded import ShieldOracle

__all__ = ["BaseOracle", "Blocked", "HttpOracle", "LocalOracle", "Oracle", "QueryLog", "ShieldOracle"]
