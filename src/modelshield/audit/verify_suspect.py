"""The serve-time watermark test of a suspect model against a gateway config: which of
the config's models, which tiers watermark and with what settings, and the test of the
suspect against every account of those tiers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelshield.answer import ApiSpec
from modelshield.audit.ownership import OwnershipReport, verify
from modelshield.defenses.config import ShieldConfig
from modelshield.defenses.watermark import MAX_CONTROL, ServeWatermark
from modelshield.errors import ConfigError
from modelshield.oracle.suspect import open_suspect
from modelshield.store import AuditStore


def one_model(cfg: ShieldConfig, model: str | None) -> ShieldConfig:
    """The config ``model`` is served with; a config of one model is itself."""
    if not cfg.models:
        return cfg
    names = [m.name or m.builtin or m.file or "" for m in cfg.models]
    if model not in names:
        raise ConfigError(f"--model: the config serves several models; name one of: "
                          f"{', '.join(names)}.")
    return cfg.for_model(cfg.models[names.index(model)])


@dataclass(frozen=True)
class WatermarkPlan:
    """The watermarked tiers of one model's config and their one setting."""

    secret: str
    tiers: list[str]
    rate: float
    cell: float
    projections: int

    def watermark(self, spec: ApiSpec) -> ServeWatermark:
        return ServeWatermark(self.secret, spec, self.rate, self.cell, self.projections)


def watermark_plan(cfg: ShieldConfig) -> WatermarkPlan:
    """The config's watermarked tiers; they must exist and share one setting."""
    tiers = {n: t.watermark for n, t in cfg.tiers.items() if t.watermark is not None}
    if not tiers or not cfg.watermark_secret:
        raise ConfigError("The config has no tier with a watermark (tiers.NAME.watermark), "
                          "so there is nothing to verify.")
    settings = {(w.rate, w.cell, w.projections) for w in tiers.values()}
    if len(settings) > 1:
        raise ConfigError("verify: the watermarked tiers use different settings; give them "
                          "one rate, cell and projections.")
    rate, cell, projections = settings.pop()
    return WatermarkPlan(cfg.watermark_secret, list(tiers), rate, cell, projections)


@dataclass(frozen=True)
class SuspectAt:
    """Where the suspect is (a model file or a URL) and, for a URL, how to ask it."""

    where: str
    protocol: str = "rest"
    key: str | None = None
    model: str | None = None


def verify_suspect(plan: WatermarkPlan, own: Any, spec: ApiSpec, store: AuditStore,
                   suspect: SuspectAt, *, account: str | None = None, alpha: float = 1e-3,
                   controls: int = MAX_CONTROL, jitter: float = 0.0) -> OwnershipReport:
    """Test ``suspect`` against the watermark of every account of the plan's tiers (or of
    ``account`` alone) that the model ``own`` (contract ``spec``) answered, as the audit
    log in ``store`` holds them."""
    s = open_suspect(suspect.where, spec.n_features, protocol=suspect.protocol,
                     key=suspect.key, name=suspect.model)
    try:
        return verify(plan.watermark(spec), store, own, spec.name, s.predict, suspect.where,
                      plan.tiers, account=account, alpha=alpha, controls=controls,
                      jitter=jitter)
    finally:
        s.close()
