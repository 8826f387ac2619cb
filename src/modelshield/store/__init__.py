"""The gateway's durable state: API keys, flags and the hash-chained audit log.

``AuditStore`` keeps all three in one SQL database (SQLite in WAL mode, or PostgreSQL).
The Shield reaches it through this package only; nothing here imports the Shield or the
gateway.
"""

from modelshield.store.sql import GENESIS, ApiKey, AuditRecord, AuditStore, make_engine

__all__ = ["GENESIS", "ApiKey", "AuditRecord", "AuditStore", "make_engine"]
