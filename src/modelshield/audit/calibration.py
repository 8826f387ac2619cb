"""Calibration data from past traffic: the rows customers sent, read from the audit log.

``modelshield calibrate --from-audit-log`` writes them to an .npz the gateway config names
in ``model.calibration``. Keys that were ever flagged are left out (their rows may be an
attacker's), as are rows with missing features; each distinct row is kept once. The
accounts' volumes are reported too: the volume detector's ``max_rows`` is a business
figure an owner sets from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelshield.answer import FloatArray


@dataclass
class Traffic:
    """What the audit log held between two times, for one model."""

    rows: FloatArray
    records: int = 0
    accounts: dict[str, int] = field(default_factory=dict)  # key id -> rows sent
    flagged_keys: list[str] = field(default_factory=list)
    skipped_rows: int = 0  # rows of flagged keys, or with missing features

    def volumes(self) -> dict[str, float]:
        """Percentiles of the rows per account (what ``volume: max_rows`` is set from)."""
        v = np.asarray(list(self.accounts.values()), dtype=float)
        if len(v) == 0:
            return {}
        return {"accounts": float(len(v)), "median": float(np.median(v)),
                "p99": float(np.quantile(v, 0.99)), "p99.9": float(np.quantile(v, 0.999)),
                "max": float(v.max())}


def traffic_from_log(store: Any, model: str, since: float | None = None,
                     until: float | None = None, max_rows: int = 1_000_000) -> Traffic:
    """The distinct complete rows unflagged keys sent to ``model`` (at most ``max_rows``)."""
    flagged = {f["ident"] for f in store.flags()}
    seen: set[bytes] = set()
    out: list[FloatArray] = []
    traffic = Traffic(rows=np.empty((0, 0)))
    for rec in store.scan(since=since, until=until, model=model):
        inputs = rec["inputs"]
        if not isinstance(inputs, list) or not inputs:
            continue
        traffic.records += 1
        key = rec["key_id"] or ""
        if key in flagged:
            traffic.skipped_rows += len(inputs)
            if key not in traffic.flagged_keys:
                traffic.flagged_keys.append(key)
            continue
        traffic.accounts[key] = traffic.accounts.get(key, 0) + len(inputs)
        x = np.asarray([[math.nan if v is None else v for v in r] for r in inputs],
                       dtype=np.float64)
        complete = np.isfinite(x).all(axis=1)
        traffic.skipped_rows += int((~complete).sum())
        for row in x[complete]:
            b = row.tobytes()
            if b not in seen and len(out) < max_rows:
                seen.add(b)
                out.append(row)
    traffic.rows = np.asarray(out) if out else np.empty((0, 0))
    return traffic


def honest_check(config: Any, model: Any, spec: Any, rows: FloatArray, accounts: int = 20,
                 seed: int = 0) -> dict[str, dict[str, dict[str, int]]]:
    """Each tier's detectors against honest customers of every kind, before deploying.

    The owner's rows are split in two at random: the tier's detectors are calibrated on one
    half, exactly as the gateway would on all of them, and ``accounts`` customers of each
    kind (modelshield.data.honest) send the other half through a Shield of that config (a
    temporary SQLite log, state in memory). Returns {tier: {kind: {"accounts", "flagged",
    "refused"}}} for the tiers with detectors.
    """
    import tempfile

    from modelshield.data.honest import ARCHETYPES, honest_accounts
    from modelshield.defenses.shield import Shield
    from modelshield.errors import Denied
    from modelshield.store import AuditStore

    order = np.random.default_rng(seed).permutation(len(rows))
    calib, held = rows[order[: len(rows) // 2]], rows[order[len(rows) // 2 :]]
    labels = model.predict(held).labels
    out: dict[str, dict[str, dict[str, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="modelshield-check-") as tmp:
        cfg = config.model_copy(update={"audit_url": f"sqlite:///{tmp}/check.db",
                                        "storage": config.storage.model_copy(
                                            update={"limits": "memory://"})})
        shield = Shield(cfg, model, spec, AuditStore(cfg.audit_url), benign=calib)
        try:
            for tier, dets in shield.detectors.items():
                if not any(d.kind == "classifier" for d in dets):
                    continue
                max_batch = cfg.tiers[tier].max_batch
                out[tier] = {}
                for i, kind in enumerate(ARCHETYPES):
                    row = {"accounts": 0, "flagged": 0, "refused": 0}
                    for acc in honest_accounts(held, kind, accounts, seed=seed * 100 + i,
                                               labels=labels, low=spec.low, high=spec.high,
                                               integer=spec.integer_features):
                        key, record = shield.store.create_key(tier)
                        try:
                            for req in acc.chunked(max_batch).requests:
                                shield.handle(key, req)
                        except Denied as exc:
                            row["refused"] += int(exc.status == 403)
                        row["accounts"] += 1
                        row["flagged"] += int(record.key_id in shield.flagged)
                    out[tier][kind] = row
        finally:
            shield.close()
    return out
