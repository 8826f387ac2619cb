"""Anchors: the audit log's chain head, copied out of reach of the database's writers
(the config's ``audit_anchor``), so that a later check catches a rollback of the whole log
to an earlier genuine head, which the audit keys alone cannot."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from modelshield.errors import ConfigError
from modelshield.store.sql import AuditStore


def read_anchor(path: Path, field: str = "--anchor") -> dict[str, Any]:
    """A chain head saved by ``audit-log head``, or a one-line ConfigError naming
    ``field``."""
    try:
        saved: dict[str, Any] = json.loads(path.read_text())
        int(saved["seq"]), str(saved["hash"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{field} {path}: not a head written by `modelshield "
                          f"audit-log head` ({exc})") from None
    return saved


def save_anchor(store: AuditStore, path: Path) -> dict[str, Any]:
    """Save the log's head at ``path`` (written whole, then moved into place), unless an
    anchor already there is no longer in the log: that one is evidence, kept."""
    if path.exists():
        old = read_anchor(path, "audit_anchor")
        brk = store.check_anchor(old)
        if brk is not None:
            raise ConfigError(f"audit_anchor {path}: the saved anchor is not in the log "
                              f"({brk.describe()}); it is kept, not replaced: run "
                              "`modelshield audit-log verify`.")
    head = {**store.head(), "taken_at": time.time()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(head))
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"audit_anchor {path}: cannot write it ({exc.strerror}).") from None
    return head
