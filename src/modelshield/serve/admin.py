"""What an operator asks of a gateway's config and state without serving it: how each
tier's detectors are calibrated, the models honest customers are played against, the
names the gateway gives its models, and the state of a key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelshield.answer import ApiSpec, FloatArray
from modelshield.defenses.config import Model, ShieldConfig
from modelshield.defenses.shield import Shield
from modelshield.errors import ConfigError
from modelshield.serve.factory import build_gateway, load_model
from modelshield.store.sql import ApiKey, AuditStore


def detector_calibration(cfg: ShieldConfig, model: str | None = None
                         ) -> list[dict[str, Any]]:
    """One row per detector of each tier of each model (or of ``model``): the model, the
    tier, the detector, what it sees, the tier's fpr and the detector's calibration."""
    shields = build_gateway(cfg)
    rows: list[dict[str, Any]] = []
    try:
        for sh in shields:
            if model is not None and sh.spec.name != model:
                continue
            for tier, dets in sh.detectors.items():
                rows.extend({"model": sh.spec.name, "tier": tier, "detector": d.name,
                             "sees": d.sees, "fpr": cfg.all_tiers()[tier].fpr,
                             **d.calibration()} for d in dets)
    finally:
        for sh in shields:
            sh.close()
    return rows


def calibration_models(cfg: ShieldConfig, only: str | None = None
                       ) -> Iterator[tuple[ShieldConfig, Any, ApiSpec, FloatArray]]:
    """(the config it is served with, the model, its contract, its calibration rows) of
    each model (or ``only``) that has calibration rows and classes: what an honest check
    (:func:`modelshield.audit.calibration.honest_check`) plays customers against."""
    for one in ([cfg.for_model(e) for e in cfg.models] if cfg.models else [cfg]):
        model, spec, rows = load_model(one)
        if only is not None and spec.name != only:
            continue
        if rows is None or spec.n_classes < 1:
            continue
        yield one, model, spec, rows


def gateway_model_names(cfg: ShieldConfig) -> list[str]:
    """Each served model's name as the gateway gives it, without loading the model."""
    return [served_name(m) for m in served_models(cfg)]


def served_name(m: Model) -> str:
    """The name the gateway gives ``m`` (as :mod:`.factory` does), without loading it."""
    if m.name:
        return m.name
    if m.lm:  # a Hugging Face directory is named by its folder, a built-in by its name
        return Path(m.lm).name if Path(m.lm).is_dir() else m.lm
    if m.lm_upstream:
        return m.upstream_model or ""
    if m.file:
        return Path(m.file).stem
    return "model" if m.upstream else m.builtin or "model"


def served_models(cfg: ShieldConfig) -> list[Model]:
    """The config's models: ``models:``, or the one ``model``."""
    return [*cfg.models] or [cfg.model]


def model_labels(cfg: ShieldConfig) -> list[str]:
    """What each served model is, in a word, for the operator: its name, else what it
    is loaded from."""
    return [m.name or m.lm or m.upstream_model or m.file or m.upstream or m.builtin or "model"
            for m in served_models(cfg)]


def key_state(key: ApiKey, cfg: ShieldConfig, now: float | None = None) -> str:
    """active, revoked or expired; a flagged active key, by what its tier does on a flag:
    suspended, throttled, degraded or flagged, with the detector that flagged it."""
    if key.revoked_at:
        return "revoked"
    if not key.usable(time.time() if now is None else now):
        return "expired"
    if key.flag is None:
        return "active"
    tier = cfg.all_tiers().get(key.tier)
    action = tier.on_flag if tier is not None else "alert"
    return {"deny": "suspended", "throttle": "throttled", "degrade": "degraded"}.get(
        action, "flagged") + f" ({key.flag['detector']})"


def reinstate_key(cfg: ShieldConfig, store: AuditStore, key_id: str) -> list[str]:
    """Lift the flags that keep ``key_id`` suspended: its own and its groups' (its owner's,
    the /24s it was seen from), in the store and, unless the limits live in memory, in the
    shared state under every model's scope. The accounts and groups lifted (none: the key
    had no flag)."""
    key = next((k for k in store.list_keys() if k.key_id == key_id), None)
    if key is None:
        raise ConfigError(f"No key with id {key_id!r} (see `modelshield keys list`).")
    idents = [key_id, *_groups(cfg, store, key)]
    lifted = [ident for ident in idents if store.clear_flag(ident)]
    if not cfg.storage.limits.startswith("memory://"):
        lifted += [ident for ident in idents
                   if _clear_shared(cfg.storage.limits, ident) and ident not in lifted]
    return lifted


def _groups(cfg: ShieldConfig, store: AuditStore, key: ApiKey) -> list[str]:
    """The groups a tier's ``group_by`` watches the key in, on any model."""
    ways = {t.group_by: t for t in cfg.all_tiers().values() if t.group_by != "none"}
    ips = store.client_ips(key.key_id) if "ip" in ways else []
    found = [Shield.group_of(ways["owner"], key, "")] if "owner" in ways else []
    found += [Shield.group_of(ways["ip"], key, ip) for ip in ips]
    return [g for g in dict.fromkeys(found) if g is not None]


def _clear_shared(url: str, ident: str) -> bool:
    """Delete ``ident``'s flag from the shared state under every scope (a model's name as
    the gateway gave it, whatever the config spells). True: one was there."""
    from modelshield.defenses.state import RedisState, state_from_url

    state = state_from_url(url)
    if not isinstance(state, RedisState):
        return False
    glob = "".join("\\" + c if c in "*?[]\\" else c for c in ident)
    found = [k for pattern in (f"{state.prefix}flag:{glob}", f"{state.prefix}*:flag:{glob}")
             for k in state.client.scan_iter(match=pattern)]
    return bool(found) and bool(state.client.delete(*found))
