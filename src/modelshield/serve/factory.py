"""From a gateway config to a running Shield: the served model, its API contract, the
store, and the natural data the detectors are calibrated on.

The model is one of: a built-in victim, a model file (joblib, TorchScript, ONNX, an XGBoost
or LightGBM booster) with the contract spelt out in the config and checked against the
file's answers, a KServe v2 server this gateway fronts, a language model
(built-in or a Hugging Face directory), or one behind an OpenAI-compatible server (vLLM).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from modelshield.answer import ApiSpec
from modelshield.defenses.config import Model, ShieldConfig, load_config
from modelshield.defenses.shield import Shield, lm_spec, make_limiter
from modelshield.errors import ConfigError, OracleError
from modelshield.store import AuditStore


def build_gateway(source: Any = None, **kwargs: Any) -> list[Shield]:
    """One Shield per model of the config (``models:``, or the one ``model``), sharing
    the key and audit store and the rate limiter: a key's limits and detectors are per
    model, global and per-address limits count every model's requests."""
    config = source if isinstance(source, ShieldConfig) else load_config(source)
    if not config.models:
        return [build_shield(config, **kwargs)]
    store = kwargs.pop("store", None) or open_store(config)
    limiter = make_limiter(config)
    shields: list[Shield] = []
    try:
        for i, entry in enumerate(config.models):
            try:
                shields.append(build_shield(config.for_model(entry), store=store,
                                            limiter=limiter, scoped=True, **kwargs))
            except ConfigError as exc:
                raise ConfigError(f"models[{i}]: {exc}") from None
        names = [s.spec.name for s in shields]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"models: more than one model is named {twice[0]!r}; give each "
                              "a distinct name (models[i].name).")
    except ConfigError:
        for s in shields:
            s.close()
        raise
    return shields


def build_shield(source: Any = None, **kwargs: Any) -> Shield:
    """A Shield from a YAML path, a dict or a ShieldConfig: model, store and all stages.

    ``store``, ``spec`` and ``benign`` (calibration rows) may be given; other keyword
    arguments go to :class:`Shield`.
    """
    config = source if isinstance(source, ShieldConfig) else load_config(source)
    spec, benign = kwargs.pop("spec", None), kwargs.pop("benign", None)
    if config.model.lm or config.model.lm_upstream:
        marked = [n for n, t in config.tiers.items() if t.watermark is not None]
        if marked:
            raise ConfigError(f"tiers.{marked[0]}.watermark: the serve-time watermark labels a "
                              "classifier's answers; a language model has no classes to label")
    if config.model.lm_upstream:
        marked = [n for n, t in config.tiers.items() if t.llm.watermark_delta > 0]
        if marked:
            raise ConfigError(f"tiers.{marked[0]}.llm.watermark_delta: the text watermark "
                              "biases the logits as tokens are chosen, and the upstream server "
                              "chooses them; serve the model locally (model.lm) to watermark")
    model, spec, found = load_model(config, spec)
    store = kwargs.pop("store", None) or open_store(config)
    return Shield(config, model, spec, store, benign=found if benign is None else benign,
                  **kwargs)


def open_store(config: ShieldConfig) -> AuditStore:
    """The config's audit store, with its audit keys."""
    return AuditStore(config.audit_url, sync=config.audit_sync,
                      key_cache_seconds=config.key_cache_seconds, keys=config.audit_keys,
                      key_version=config.audit_key_version)


def load_model(config: ShieldConfig, spec: ApiSpec | None = None) -> tuple[Any, ApiSpec, Any]:
    """(model, API contract, natural calibration rows or None) of the config's model."""
    m = config.model
    if m.lm:
        from modelshield.victims.lm import load_lm

        lm = load_lm(m.lm, m.seed)
        return lm, lm_spec(m.name or lm.name), None
    if m.lm_upstream:
        return _lm_upstream(m)
    from modelshield.victims.loaders import load_calibration

    if m.file or m.upstream:
        spec = spec or spec_from_config(config)
        rows = None if m.calibration is None else load_calibration(m.calibration,
                                                                    spec.n_features)
        if m.file:
            from modelshield.victims.loaders import check_contract, load_model_file

            model = load_model_file(m.file)
            check_contract(model, spec)
            return model, spec, rows
        from modelshield.victims.upstream import V2Upstream

        return V2Upstream(m.upstream or "", spec.name, output=m.upstream_output), spec, rows
    from modelshield.victims import load_victim

    victim = load_victim(m.builtin or "digits-mlp", m.seed)
    spec = victim.spec if not m.name else dataclasses.replace(victim.spec, name=m.name)
    # A built-in victim ships held-out rows (half its test set) as the owner's data.
    rows = victim.calibration if m.calibration is None else load_calibration(
        m.calibration, spec.n_features)
    return victim.model, spec, rows


def _lm_upstream(m: Model) -> tuple[Any, ApiSpec, None]:
    from modelshield.victims.upstream import OpenAIUpstream

    key = os.environ.get(m.upstream_api_key_env) if m.upstream_api_key_env else None
    upstream_name = m.upstream_model or m.name or ""
    if not upstream_name:
        raise ConfigError("model.upstream_model: name the model as the upstream server "
                          "serves it.")
    try:
        model = OpenAIUpstream(m.lm_upstream or "", upstream_name, api_key=key,
                               vocab=m.upstream_vocab)
    except OracleError as exc:
        raise ConfigError(f"model.lm_upstream: {exc}") from None
    return model, lm_spec(m.name or upstream_name), None


def spec_from_config(config: ShieldConfig) -> ApiSpec:
    """The API contract of a model file or upstream, from the ``model`` section."""
    m = config.model
    missing = [f for f in ("classes", "low", "high") if getattr(m, f) is None]
    if missing:
        raise ConfigError(f"model: a model file or upstream needs {', '.join(missing)} "
                          "(the classes and the input domain).")
    lengths = {len(v) for v in (m.low, m.high) if isinstance(v, list)}
    if m.n_features is not None:
        lengths.add(m.n_features)
    if len(lengths) != 1:
        raise ConfigError("model: give n_features, or low/high lists of one length; got "
                          f"lengths {sorted(lengths) or 'none'}.")
    d = lengths.pop()
    name = m.name or (Path(m.file).stem if m.file else "model")
    return ApiSpec(n_features=d, classes=tuple(m.classes or ()),
                   low=np.broadcast_to(np.asarray(m.low, dtype=float), (d,)).copy(),
                   high=np.broadcast_to(np.asarray(m.high, dtype=float), (d,)).copy(),
                   accepts_missing=m.accepts_missing, integer_features=m.integer_features,
                   name=name)
