"""The gateway's durable state: API keys, flags and the audit log, sealed by a
keyed hash chain.

``AuditStore`` keeps all three in one SQL database (SQLite in WAL mode, or PostgreSQL).
The Shield reaches it through this package only; nothing here imports the Shield or the
gateway.
"""

from modelshield.store.chain import GENESIS, Break, Verdict
from modelshield.store.sql import ApiKey, AuditRecord, AuditStore, make_engine, seeded_key_id

__all__ = ["GENESIS", "ApiKey", "AuditRecord", "AuditStore", "Break", "Verdict", "make_engine",
           "seeded_key_id"]
