"""The Shield's configuration: a YAML file validated field by field.

A bad value stops loading with a message naming the field's path and what is allowed, e.g.
``tiers.free.policy: Unknown output policy 'blur'. Choose one of: full, label, ...``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from limits import parse_many
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelshield.defenses.detectors import DetectorSpec, detector_spec
from modelshield.defenses.llm import LLMPolicy
from modelshield.defenses.policies import POLICIES, parse_policy
from modelshield.errors import ConfigError, ModelShieldError

TERMS = (
    "By using this API you agree not to: attempt to extract, copy, reconstruct or reverse "
    "engineer the model or its parameters; use its outputs to train, distil or improve a "
    "model that competes with it; or split queries across accounts to evade limits. Queries "
    "and answers are logged and monitored for these patterns; violations end access."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _rates(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    try:
        parse_many(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate such as '100/hour' or '10/second;500/day'") from None
    return value


def http_url(v: str | None) -> str | None:
    """A field validator's check: None, or an http(s) URL."""
    if v is not None and not v.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return v


class Limits(_Strict):
    """Rates in the `limits` syntax: '100/hour', '10/second;1000/day'."""

    requests: str | None = None
    rows: str | None = None
    tokens: str | None = None  # language models: prompt + completion tokens

    @field_validator("requests", "rows", "tokens")
    @classmethod
    def _check(cls, v: str | None) -> str | None:
        return _rates(v, "rate")


class Watermark(_Strict):
    """A tier's serve-time watermark (DAWN): see modelshield.defenses.watermark."""

    # The share of input cells answered with a keyed wrong label (what it costs honest
    # users: this share of their answers is wrong).
    rate: float = Field(default=0.005, gt=0, le=0.2)
    # Cell width along each keyed projection, inputs scaled to [0, 1] on their domain:
    # jitter well inside it keeps an input's answer.
    cell: float = Field(default=0.05, gt=0, le=1)
    projections: int = Field(default=4, ge=1, le=64)


class Tier(_Strict):
    """A named bundle of limits, output policy and detectors."""

    limits: Limits = Limits()
    policy: str = "full"
    detectors: list[DetectorSpec] = Field(default_factory=list)
    on_flag: Literal["alert", "throttle", "degrade", "deny"] = "alert"
    throttled: Limits = Limits(requests="10/hour")
    degrade_policy: str = "label"
    max_batch: int = Field(default=1000, ge=1)
    group_by: Literal["none", "ip", "owner"] = "none"
    # When a classifier's detectors look: "inline", before the answer is shaped (a flag
    # acts on the request that raised it); "after", off the request's path once it is
    # answered (a flag acts from the account's next request on).
    detect: Literal["inline", "after"] = "inline"
    # The share of honest accounts the tier's detectors may flag, all together: each
    # detector that tests the data (sweep, boundary, ood, prada) gets an equal part, and
    # sets its threshold from the model's calibration data to meet it.
    fpr: float = Field(default=0.001, gt=0, le=0.1)
    llm: LLMPolicy = LLMPolicy()
    watermark: Watermark | None = None

    @model_validator(mode="after")
    def _watermark_policy(self) -> Tier:
        if self.watermark is not None:
            for p in (self.policy, self.degrade_policy):
                if p.startswith("leaf"):
                    raise ValueError(f"a watermark cannot go with policy {p!r}: the leaf would "
                                     "show which answers are watermarked; use full, round, "
                                     "top-k or label")
        return self

    @field_validator("policy", "degrade_policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        return check_policy(v)

    @field_validator("detectors")
    @classmethod
    def _detectors(cls, v: list[DetectorSpec]) -> list[DetectorSpec]:
        return check_detectors(v)


class Storage(_Strict):
    limits: str = "memory://"
    fail: Literal["closed", "open"] = "closed"
    strategy: Literal["moving-window", "sliding-window", "fixed-window"] = "moving-window"

    @field_validator("limits")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("memory://", "redis://", "rediss://", "redis+unix://")):
            raise ValueError("must be memory:// or a redis:// URL")
        return v


class Model(_Strict):
    """The served model: a built-in victim, a model file, an upstream v2 server, a language
    model (built-in or a Hugging Face directory), or one behind an upstream OpenAI-compatible
    server (``lm_upstream``, with ``upstream_model``).

    A file or an upstream needs the API contract spelt out: ``classes`` and the input
    domain ``low``/``high`` (one number for every feature, or one per feature), plus
    ``n_features`` when both are single numbers.
    """

    builtin: str | None = "digits-mlp"
    lm: str | None = None  # a built-in language model (lm-h64, ...) or a Hugging Face directory
    file: str | None = None
    upstream: str | None = None
    upstream_output: str | None = None  # the v2 output with the probabilities (predict_proba)
    # A language model behind an OpenAI-compatible server (vLLM): its base URL, the model's
    # name there, the environment variable holding the upstream's API key, and its
    # vocabulary size when /v1/models does not say it.
    lm_upstream: str | None = None
    upstream_model: str | None = None
    upstream_api_key_env: str | None = None
    upstream_vocab: int | None = Field(default=None, ge=1)
    name: str | None = None
    seed: int = 0
    classes: list[str] | None = None
    n_features: int | None = Field(default=None, ge=1)
    low: float | list[float] | None = None
    high: float | list[float] | None = None
    accepts_missing: bool = False
    integer_features: bool = False
    # The owner's natural data the detectors are calibrated on: rows the model was not
    # trained on, as customers send them (a held-out set, or past traffic that
    # `modelshield calibrate --from-audit-log` wrote). An .npz (array X), a .csv or a
    # .parquet of feature columns (a `label` column is left out). Required for a model
    # file or upstream whose tiers have detectors; a built-in victim ships its own.
    calibration: str | None = None
    # A language model's system prompt: put before the messages of every chat request
    # (a tier's llm.system_prompt takes its place), never written to the audit log. Or a
    # file that holds it (system_prompt_file), to keep the secret out of the config.
    system_prompt: str | None = Field(default=None, min_length=1, max_length=20_000)
    system_prompt_file: str | None = None
    # Refuse (422, naming the feature) values outside low/high: the contract customers are
    # told. Off only for a model whose declared domain is a guide, not a limit.
    enforce_domain: bool = True

    @field_validator("upstream", "lm_upstream")
    @classmethod
    def _upstream(cls, v: str | None) -> str | None:
        return http_url(v)

    @model_validator(mode="after")
    def _system_prompt(self) -> Model:
        if self.system_prompt is not None and self.system_prompt_file is not None:
            raise ValueError("set system_prompt or system_prompt_file, not both")
        if (self.system_prompt or self.system_prompt_file) and not (self.lm or self.lm_upstream):
            raise ValueError("system_prompt: only a language model (lm or lm_upstream) has a "
                             "system prompt")
        return self

    def read_system_prompt(self) -> str | None:
        """The model's system prompt, from the config or from its file."""
        if self.system_prompt_file is None:
            return self.system_prompt
        try:
            text = Path(self.system_prompt_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"model.system_prompt_file: cannot read "
                              f"{self.system_prompt_file!r} ({exc.strerror}).") from None
        if not text:
            raise ConfigError(f"model.system_prompt_file: {self.system_prompt_file!r} is empty.")
        return text


class ModelEntry(Model):
    """One model of a gateway that serves several (``models:``), with its own ``tiers``
    or, without them, the config's."""

    tiers: dict[str, Tier] | None = None


class ShieldConfig(_Strict):
    model: Model = Model()
    # Several models behind one gateway, each on its own routes with its own limits and
    # detectors (and its own tiers, or the shared ones); `model` is then not used.
    models: list[ModelEntry] = Field(default_factory=list)
    storage: Storage = Storage()
    audit_url: str = "sqlite:///modelshield-audit.db"
    audit_sync: Literal["normal", "full"] = "normal"
    # The keys that seal the audit log, by version, kept out of the database (here, or in
    # MODELSHIELD_AUDIT_KEYS as "v1:secret;v2:secret"). New records are sealed with
    # audit_key_version (default: the last listed); keep old versions listed so their
    # records still check. Without keys the chain is plain SHA-256: whoever can write the
    # database can rewrite it unseen. `modelshield init` writes one.
    audit_keys: dict[str, str] = Field(default_factory=dict, repr=False)
    audit_key_version: str | None = None
    # Where `modelshield audit-log head` saves the chain head (an anchor), out of reach of
    # the database's writers; `audit-log verify` then checks the log still holds it.
    audit_anchor: str | None = None
    key_cache_seconds: float = Field(default=1.0, ge=0)
    global_limits: Limits = Limits()
    ip_limits: Limits = Limits()
    # Failed authentications per client address (bad or unknown keys); past this, the
    # address's bad keys get 429 instead of 401. None switches it off.
    auth_failure_limits: str | None = "30/minute;300/hour"
    # Proxies (addresses or CIDR networks) whose X-Forwarded-For names the client: behind
    # a load balancer, list it here, or every client has the balancer's address.
    trusted_proxies: list[str] = Field(default_factory=list)
    # The HMAC key of keyed noise (classifier `noise:` policies and language-model logprob
    # noise) and of MAD's surrogate (`mad:`, `mad-argmax:`). Required when a tier uses
    # one; `modelshield init` writes a random one, or set MODELSHIELD_NOISE_SECRET. Anyone
    # who knows it can strip the noise.
    noise_secret: str | None = Field(default=None, min_length=16, repr=False)
    # The key of the serve-time watermark (tiers' `watermark:`). Required when a tier uses
    # one; `modelshield init` writes one, or set MODELSHIELD_WATERMARK_SECRET. With the
    # audit log it rebuilds any account's watermark set: keep it as long as the log.
    watermark_secret: str | None = Field(default=None, min_length=16, repr=False)
    tiers: dict[str, Tier] = Field(default_factory=lambda: {"default": Tier()})
    # Where the gateway runs a classifier's stages: "loop" on its event loop (no thread
    # hop; the audit commit on the log's writer thread, detection after the answer on the
    # loop), "threads" on a request thread each, "auto" the loop for a model in this
    # process whose one-row prediction takes under 2 ms (timed at start), with memory
    # state and a SQLite log, else threads (an upstream server, a slow model, Redis or
    # PostgreSQL: other requests go on while one computes or waits). Requests of more
    # than 16 rows always run on a thread.
    answer_on: Literal["auto", "loop", "threads"] = "auto"
    terms_version: str = "1"
    terms: str = TERMS

    @field_validator("auth_failure_limits")
    @classmethod
    def _auth_rate(cls, v: str | None) -> str | None:
        return _rates(v, "rate")

    @field_validator("audit_keys")
    @classmethod
    def _audit_keys(cls, v: dict[str, str]) -> dict[str, str]:
        for version, secret in v.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", version) or version == "sha256":
                raise ValueError(f"key version {version!r}: use 1-32 letters, digits, '.', '_' "
                                 "or '-' (not 'sha256')")
            if len(secret) < 16:
                raise ValueError(f"the key of version {version!r} is {len(secret)} characters; "
                                 "use a random string of at least 16 (modelshield audit-log "
                                 "new-key writes one)")
        return v

    @model_validator(mode="after")
    def _audit_version(self) -> ShieldConfig:
        if self.audit_key_version is not None and self.audit_key_version not in self.audit_keys:
            raise ValueError(f"audit_key_version {self.audit_key_version!r} is not a version "
                             f"in audit_keys ({', '.join(self.audit_keys) or 'none set'})")
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        import ipaddress

        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network such as "
                                 "'10.0.0.0/8'") from None
        return v

    def for_model(self, entry: ModelEntry) -> ShieldConfig:
        """The config one model of ``models`` is served with."""
        return self.model_copy(update={
            "model": Model(**entry.model_dump(exclude={"tiers"})),
            "tiers": entry.tiers if entry.tiers is not None else self.tiers, "models": []})

    def all_tiers(self) -> dict[str, Tier]:
        """Every tier a key can hold: the shared ones and each model's own."""
        out = dict(self.tiers)
        for entry in self.models:
            out.update(entry.tiers or {})
        return out

    @model_validator(mode="after")
    def _watermark_needs_secret(self) -> ShieldConfig:
        if self.watermark_secret:
            return self
        for name, tier in self.all_tiers().items():
            if tier.watermark is not None or tier.llm.watermark_delta > 0:
                raise ValueError(f"tier {name!r} has a watermark but no watermark_secret is "
                                 "set: put a random string of at least 16 characters in "
                                 "watermark_secret (modelshield init writes one) or in "
                                 "MODELSHIELD_WATERMARK_SECRET")
        return self

    @model_validator(mode="after")
    def _noise_needs_secret(self) -> ShieldConfig:
        if self.noise_secret:
            return self
        tiers = list(self.tiers.items()) + [t for m in self.models
                                             for t in (m.tiers or {}).items()]
        for name, tier in tiers:
            noisy = [p for p in (tier.policy, tier.degrade_policy) if _keyed(p)]
            if tier.llm.logprob_noise > 0:
                noisy.append(f"llm.logprob_noise: {tier.llm.logprob_noise}")
            if noisy:
                raise ValueError(f"tier {name!r} uses a keyed policy ({noisy[0]}) but no "
                                 "noise_secret is set: put a random string of at least 16 "
                                 "characters in noise_secret (modelshield init writes one) or "
                                 "in MODELSHIELD_NOISE_SECRET")
        return self


def check_policy(v: str) -> str:
    """An output policy spec, or ValueError with what is wrong (for pydantic validators)."""
    try:
        parse_policy(v)
    except ModelShieldError as exc:
        raise ValueError(str(exc)) from None
    return v


def check_detectors(v: list[DetectorSpec]) -> list[DetectorSpec]:
    """Detector entries, or ValueError naming the bad one (for pydantic validators)."""
    for entry in v:
        try:
            detector_spec(entry)
        except ModelShieldError as exc:
            raise ValueError(str(exc)) from None
    return v


def _keyed(policy: str) -> bool:
    """Whether an output policy draws on the noise_secret (keyed noise, MAD's surrogate)."""
    name = policy.partition(":")[0].strip()
    return name in POLICIES and any(f.name == "key" for f in dataclasses.fields(POLICIES[name]))


def load_config(source: str | Path | dict[str, Any] | None = None) -> ShieldConfig:
    """Validate a YAML file (or a dict) into a ShieldConfig; ``None`` gives the defaults."""
    data = _with_env_secrets(_config_data(source))
    try:
        return ShieldConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc) from None


def _config_data(source: str | Path | dict[str, Any] | None) -> dict[str, Any]:
    """The config's fields, from a dict or a YAML file."""
    if source is None:
        data: Any = {}
    elif isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("The config must be a mapping of fields (model, tiers, ...).")
    return data


def _with_env_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """The secrets the environment gives where the config leaves them out:
    MODELSHIELD_NOISE_SECRET, MODELSHIELD_WATERMARK_SECRET and MODELSHIELD_AUDIT_KEYS
    ('version:secret;...')."""
    env_secret = os.environ.get("MODELSHIELD_NOISE_SECRET")
    if env_secret and not data.get("noise_secret"):
        data = {**data, "noise_secret": env_secret}
    env_wm = os.environ.get("MODELSHIELD_WATERMARK_SECRET")
    if env_wm and not data.get("watermark_secret"):
        data = {**data, "watermark_secret": env_wm}
    env_keys = os.environ.get("MODELSHIELD_AUDIT_KEYS")
    if env_keys and not data.get("audit_keys"):
        pairs = [p.partition(":") for p in env_keys.split(";") if p.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ConfigError("MODELSHIELD_AUDIT_KEYS: write it as 'version:secret', several "
                              "separated by ';' (e.g. '2026-11:...;2027-01:...')")
        data = {**data, "audit_keys": {v.strip(): k.strip() for v, _, k in pairs}}
    return data


def _config_error(exc: ValidationError) -> ConfigError:
    """The first validation error, named by its field."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or (
        "noise_secret" if "noise_secret" in first["msg"] else
        "watermark_secret" if "watermark_secret" in first["msg"] else
        "audit_key_version" if "audit_key_version" in first["msg"] else "config")
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    return ConfigError(f"{where}: {msg}")


def example_config() -> str:
    """The commented example config, with a fresh random noise_secret."""
    return (EXAMPLE.replace("{noise_secret}", secrets.token_urlsafe(32))
            .replace("{watermark_secret}", secrets.token_urlsafe(32))
            .replace("{audit_key}", secrets.token_urlsafe(32))
            .replace("{audit_key_version}", time.strftime("%Y-%m", time.gmtime())))


EXAMPLE = """\
# modelshield gateway configuration. Every field is optional; these are examples.
model:
  builtin: digits-mlp          # a built-in victim (modelshield victims), or a model file
  # file: model.joblib         # (.joblib/.pkl scikit-learn API, .pt TorchScript, .onnx,
                               # XGBoost .json/.ubj, LightGBM .txt), or
  # upstream: http://127.0.0.1:8080   # a KServe v2 server this gateway fronts
  # name: digits               # with file/upstream, the contract customers are told:
  # classes: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
  # n_features: 64
  # low: 0                     # one number for every feature, or a list per feature
  # high: 16
  # calibration: calib.npz     # the owner's natural rows (not trained on) the detectors
                               # are calibrated on; required with file/upstream and
                               # detectors (modelshield calibrate --from-audit-log writes
                               # one from past traffic; a built-in victim ships its own)
  # lm: lm-h128                # or a language model on the OpenAI routes (docs/llm.md);
                               # each tier then takes an `llm:` section, e.g.
                               # llm: {max_top_logprobs: 5, bias_affects_logprobs: false,
                               #       detect_probing: true}
                               # and `limits: {tokens: 20000/hour}`
  # system_prompt_file: assistant.txt  # a chat assistant's secret system prompt (or
                               # system_prompt: "..."); a tier's llm.leak_filter: {} then
                               # redacts answers that give it away (docs/privacy.md)
  # lm_upstream: http://127.0.0.1:8001  # or a language model behind an OpenAI-compatible
  # upstream_model: my-model            # server (vLLM) this gateway fronts, its name there,
  # upstream_api_key_env: VLLM_API_KEY  # and the variable holding the upstream's key
# Several models behind one gateway: list them under `models:` instead (each on its own
# routes, /v1/models/NAME/predict, with its own limits and detectors, and its own tiers or
# the shared ones below):
# models:
#   - {file: credit.joblib, name: credit, classes: [no, yes], n_features: 12, low: 0,
#      high: 1, tiers: {pro: {policy: label, limits: {requests: 100/hour}}}}
#   - {builtin: digits-mlp, name: digits}
storage:
  limits: memory://            # or redis://localhost:6379/0 to share limits across replicas
  fail: closed                 # if Redis is unreachable: closed = refuse (503), open = allow
  strategy: moving-window      # exact; sliding-window / fixed-window cost less per request
audit_url: sqlite:///modelshield-audit.db   # or postgresql+psycopg://user@host/db
# The keys that seal the audit log, kept outside the database (or in MODELSHIELD_AUDIT_KEYS).
# To rotate, add a version (modelshield audit-log new-key) and keep the old ones listed.
audit_keys:
  "{audit_key_version}": "{audit_key}"
# audit_anchor: /secure/elsewhere/audit-head.json  # `audit-log head` saves the chain head
#                                                  # there; `audit-log verify` checks it
# The key of keyed noise (the enterprise tier's noise:0.01). Random, written by init; keep
# it secret (or set MODELSHIELD_NOISE_SECRET instead): whoever knows it can strip the noise.
noise_secret: "{noise_secret}"
# The key of the serve-time watermark (the pro tier's); with the audit log it rebuilds any
# account's watermark set for `modelshield verify`. Keep it as long as the log.
watermark_secret: "{watermark_secret}"
auth_failure_limits: 30/minute;300/hour   # bad keys per client address before a 429
# trusted_proxies: [10.0.0.0/8]  # a load balancer whose X-Forwarded-For names the client
audit_sync: normal           # SQLite: normal survives a killed process; full also a machine crash
key_cache_seconds: 1         # a revoked key stops working within this many seconds
global_limits:
  requests: 2000/second
ip_limits:
  requests: 100/second
terms_version: "1"
tiers:
  free:
    limits: {requests: 100/hour, rows: 100/hour}
    policy: top-k:1              # only the top class and its score
    detectors: [sweep, boundary, prada, ood, volume]
    fpr: 0.001                   # at most this share of honest accounts flagged
    on_flag: deny                # alert | throttle | degrade | deny
    group_by: ip                 # also watch all keys from one /24 (or owner) as one extractor
    max_batch: 10
  pro:
    limits: {requests: 1000/hour, rows: 10000/hour}
    policy: round:2
    # a detector with settings: volume flags a key past what the heaviest customers send
    detectors: [sweep, boundary, prada, ood, {volume: {max_rows: 20000}}]
    on_flag: degrade
    degrade_policy: label
    # 0.5% of input cells answered with a keyed wrong label, so a copy made from this
    # key's answers can be proven (modelshield verify); costs honest users 0.5% of answers
    watermark: {rate: 0.005}
  enterprise:
    limits: {requests: 10000/hour, rows: 100000/hour}
    policy: noise:0.01
    detectors: [sweep, boundary, volume]
    on_flag: throttle
    throttled: {requests: 100/hour}
# Terms of service every key holder accepts (the key records the version and time):
terms: >-
  By using this API you agree not to: attempt to extract, copy, reconstruct or reverse
  engineer the model or its parameters; use its outputs to train, distil or improve a
  model that competes with it; or split queries across accounts to evade limits. Queries
  and answers are logged and monitored for these patterns; violations end access.
"""
