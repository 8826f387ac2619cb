"""An audit scenario: the target, the attackers, the defenses, and what the model is worth.

A scenario is a YAML file validated field by field, like the gateway's config: a wrong field
stops loading with its path and what is allowed. ``modelshield init --audit`` writes the
commented example below; ``modelshield demo`` runs :data:`DEMO`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelshield.attacks import ATTACKS
from modelshield.attacks.params import parse_params
from modelshield.data.honest import ARCHETYPES
from modelshield.defenses.config import (
    Limits,
    Tier,
    Watermark,
    check_detectors,
    check_policy,
    http_url,
    load_config,
)
from modelshield.defenses.detectors import DetectorSpec
from modelshield.errors import ConfigError, ModelShieldError
from modelshield.victims.zoo import ZOO


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Strict):
    """What is attacked: a built-in victim, a model file with its data, or a running endpoint.

    - ``victim``: a built-in victim (``modelshield victims``);
    - ``file`` + ``data``: a model file (a scikit-learn-API classifier in joblib, including
      XGBClassifier and LGBMClassifier; an XGBoost booster .json/.ubj; a LightGBM booster
      .txt; ONNX; TorchScript) and an ``.npz`` holding ``X_test``, ``y_test`` and optionally
      ``pool`` (the attacker's unlabelled data), ``low`` and ``high`` (the input domain;
      the test data's range otherwise);
    - ``url`` + ``api_key``: a running gateway (``protocol: rest`` or ``v2``). The endpoint
      applies its own defenses, so the scenario's ``defenses`` are not used; ``victim`` or
      ``file`` + ``data`` then names the model it serves, to score clones against.
    """

    victim: str | None = None
    file: str | None = None
    data: str | None = None
    url: str | None = None
    api_key: str | None = None
    protocol: Literal["rest", "v2"] = "rest"
    model: str | None = None
    seed: int = 0

    @field_validator("victim")
    @classmethod
    def _victim(cls, v: str | None) -> str | None:
        if v is not None and v not in ZOO:
            raise ValueError(f"unknown victim {v!r}; choose from {', '.join(ZOO)}")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return http_url(v)

    @field_validator("file")
    @classmethod
    def _file(cls, v: str | None) -> str | None:
        from modelshield.victims.loaders import MODEL_FORMATS, SUFFIXES

        if v is not None and Path(v).suffix.lower() not in SUFFIXES:
            raise ValueError(f"{Path(v).name!r} is not a model file this reads; give "
                             + "; ".join(f"{k} ({d})" for k, d in MODEL_FORMATS.items()))
        return v

    @model_validator(mode="after")
    def _one(self) -> Target:
        if (self.victim is None) == (self.file is None):
            raise ValueError("give exactly one of 'victim' (built-in) or 'file' (with 'data')")
        if self.file is not None and self.data is None:
            raise ValueError("'file' needs 'data': an .npz with X_test and y_test")
        if self.url is not None and not self.api_key:
            raise ValueError("'url' needs 'api_key'")
        return self

    @property
    def remote(self) -> bool:
        return self.url is not None

    @property
    def label(self) -> str:
        name = self.victim or Path(self.file or "model").stem
        return f"{name} at {self.url}" if self.url else name


class Attacker(_Strict):
    """One attacker profile: an attack, its parameters, and the budgets to try."""

    name: str | None = None
    attack: str
    params: dict[str, Any] = Field(default_factory=dict)
    budgets: list[int] = Field(min_length=1)
    # An attacker who knows the defense: the budget spread over this many keys (each of
    # another owner and /24 network, against per-key limits, detectors and group_by), and
    # this share of its stream natural rows from its pool (against the rate tests and
    # PRADA; they count against the budget). Local targets only.
    keys: int = Field(default=1, ge=1, le=1000)
    mix_natural: float = Field(default=0.0, ge=0, le=0.9)
    # Low and slow: wait out every rate limit (its Retry-After) and go on, instead of
    # stopping at the first 429. The wait is counted on the cell's clock, not slept; the
    # report gives the time the attack took. Rate limits count on an exact moving window.
    pace: bool = False
    # An attacker who knows the out-of-distribution detector: it sends only the rows of its
    # pool that its own density estimate finds most typical, this share of them (at least
    # as many as its budget spends; 0: its whole natural pool). Local targets only.
    typical: float = Field(default=0.0, ge=0, le=1)
    # Written by the audit (the scenario's ``adaptive``), not by the scenario's author.
    counterpart: bool = False

    @property
    def adaptive(self) -> bool:
        return self.keys > 1 or self.mix_natural > 0 or self.pace or self.typical > 0

    @property
    def adaptation(self) -> str:
        """What it does against the defense, in words ('' for a plain attacker)."""
        parts = ([f"{self.keys} keys"] if self.keys > 1 else []) + (
            [f"{self.mix_natural:.0%} natural rows mixed in"] if self.mix_natural else []) + (
            ["paced to the rate limits"] if self.pace else []) + (
            [f"the {self.typical:.0%} most typical rows of its pool"] if self.typical else [])
        return ", ".join(parts)

    @property
    def natural_only(self) -> bool:
        """Whether every query it sends is a natural row of its pool (none made up)."""
        obj = ATTACKS[self.attack](**self.kwargs)
        return any(getattr(obj, f, None) == "pool" for f in ("source", "candidates")) \
            and self.attack in ("knockoff", "active") and getattr(obj, "votes", 1) == 1

    @property
    def draws_pool(self) -> bool:
        """Whether its queries come from its pool (natural rows, or mixes of them)."""
        obj = ATTACKS[self.attack](**self.kwargs)
        return any(getattr(obj, f, None) in ("pool", "synthetic")
                   for f in ("source", "candidates", "seed_source"))

    @field_validator("attack")
    @classmethod
    def _attack(cls, v: str) -> str:
        if v not in ATTACKS:
            raise ValueError(f"unknown attack {v!r}; choose from {', '.join(ATTACKS)}")
        return v

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("every budget must be an integer >= 1")
        return sorted(set(v))

    @model_validator(mode="after")
    def _params(self) -> Attacker:
        # Build the attack once so a wrong parameter stops the scenario before any cell runs.
        try:
            ATTACKS[self.attack](**self.kwargs)
        except ModelShieldError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def kwargs(self) -> dict[str, Any]:
        """The parameters typed as the attack's fields."""
        return parse_params(ATTACKS[self.attack], _as_items(self.params), "params:")

    @property
    def label(self) -> str:
        return self.name or self.attack


class Defense(_Strict):
    """One defense profile: a gateway tier, written inline or taken from a gateway config.

    Inline, the fields are those of a tier in the gateway's config (``policy``, ``detectors``,
    ``on_flag``, ``limits``, ...). Or ``config: FILE`` and ``tier: NAME`` reuse a tier of a
    gateway config as it is deployed, together with its global and per-IP limits.
    """

    name: str
    config: str | None = None
    tier: str | None = None
    policy: str = "full"
    detectors: list[DetectorSpec] = Field(default_factory=list)
    on_flag: Literal["alert", "throttle", "degrade", "deny"] = "alert"
    limits: Limits = Limits()
    throttled: Limits = Limits(requests="10/hour")
    degrade_policy: str = "label"
    max_batch: int = Field(default=100_000, ge=1)
    fpr: float = Field(default=0.001, gt=0, le=0.1)
    # The serve-time watermark (``rate``, ...: a gateway tier's ``watermark:``); every clone
    # the audit makes through it is tested against it.
    watermark: Watermark | None = None
    # Written by the audit's search (``search:``), not by the scenario's author.
    generated: bool = False

    @model_validator(mode="after")
    def _check(self) -> Defense:
        if self.config is not None:
            if not Path(self.config).is_file():
                raise ValueError(f"gateway config {self.config!r} does not exist")
            tiers = load_config(self.config).tiers
            if self.tier not in tiers:
                raise ValueError(f"tier {self.tier!r} is not in {self.config}; "
                                 f"choose from {', '.join(tiers)}")
        else:
            self.as_tier()  # validates policy, detectors and limits with the gateway's rules
        return self

    def as_tier(self) -> Tier:
        if self.config is not None:
            return load_config(self.config).tiers[self.tier or ""]
        try:
            return Tier(policy=self.policy, detectors=self.detectors, on_flag=self.on_flag,
                        limits=self.limits, throttled=self.throttled,
                        degrade_policy=self.degrade_policy, max_batch=self.max_batch,
                        fpr=self.fpr, watermark=self.watermark)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"{loc}: {err['msg'].removeprefix('Value error, ')}") from None

    def shield_fields(self) -> dict[str, Any]:
        """The non-tier parts of the gateway config this defense brings (limits beyond a key)."""
        if self.config is None:
            return {}
        c = load_config(self.config)
        return {"global_limits": c.global_limits.model_dump(),
                "ip_limits": c.ip_limits.model_dump(),
                "storage": {"strategy": c.storage.strategy}}


class Deployment(_Strict):
    """Facts about how the model is offered; the rating states them beside the measurements."""

    public_api: bool = True
    generous_limits: bool = True
    monitoring: bool = False


class Benign(_Strict):
    """The honest customers simulated against each defense: ``accounts`` of each archetype
    (modelshield.data.honest), sending the victim's honest rows."""

    accounts: int = Field(default=10, ge=1, le=10_000)
    median_rows: int = Field(default=60, ge=1)
    archetypes: list[str] = Field(default_factory=lambda: list(ARCHETYPES), min_length=1)

    @field_validator("archetypes")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [a for a in v if a not in ARCHETYPES]
        if unknown:
            raise ValueError(f"unknown archetype {unknown[0]!r}; choose from "
                             f"{', '.join(ARCHETYPES)}")
        return v


SEARCH_POLICIES = ("label", "round:1", "noise:0.1", "reverse-sigmoid", "mad:eps=0.5",
                   "mad-argmax:eps=1.0")
SEARCH_DETECTORS: tuple[DetectorSpec, ...] = ("sweep", "boundary", "ood", "prada", "volume")


class Search(_Strict):
    """Defenses the audit writes itself, beside the listed ones, for the best-defense
    search: each output policy alone; the detectors with ``deny`` at each per-account
    false-positive rate; and, with ``combine``, the detectors at the lowest rate together
    with each policy. They are named ``search: ...`` and marked generated in the report."""

    policies: list[str] = Field(default_factory=lambda: list(SEARCH_POLICIES))
    detectors: list[DetectorSpec] = Field(default_factory=lambda: list(SEARCH_DETECTORS))
    fprs: list[float] = Field(default_factory=lambda: [0.001, 0.01])
    combine: bool = False

    @field_validator("policies")
    @classmethod
    def _policies(cls, v: list[str]) -> list[str]:
        return [check_policy(spec) for spec in v]

    @field_validator("detectors")
    @classmethod
    def _detectors(cls, v: list[DetectorSpec]) -> list[DetectorSpec]:
        return check_detectors(v)

    @field_validator("fprs")
    @classmethod
    def _fprs(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 0.1 for f in v):
            raise ValueError("each false-positive rate must be in (0, 0.1]")
        return sorted(set(v))

    def defenses(self) -> list[Defense]:
        out = [Defense(name=f"search: {p}", policy=p, generated=True) for p in self.policies]
        if self.detectors:
            for f in self.fprs:
                out.append(Defense(name=f"search: detectors (deny, fpr {f:g})",
                                   detectors=self.detectors, on_flag="deny", fpr=f,
                                   generated=True))
            if self.combine and self.fprs:
                f = self.fprs[0]
                out += [Defense(name=f"search: detectors (deny, fpr {f:g}) + {p}", policy=p,
                                detectors=self.detectors, on_flag="deny", fpr=f,
                                generated=True) for p in self.policies]
        return out


class HonestBudget(_Strict):
    """What a defense may cost honest customers and still be chosen (the best-defense
    search): top-1 accuracy lost, and the share of honest accounts flagged or refused."""

    accuracy_lost: float = Field(default=0.01, ge=0, le=1)
    flagged_share: float = Field(default=0.01, ge=0, le=1)


class Privacy(_Strict):
    """Membership inference under each defense (``modelshield.attacks.membership``).

    attacks: names, or ``name:key=value,...`` for a variant (``lira:online=false``).
    shadows: shadow models, trained once from ``recipe`` (the built-in victim's own by
    default) and shared by every attack and defense. keys: the queries spread over this many
    keys (an attacker who knows the detectors). data: for a ``file`` target, an .npz of its
    members and non-members (``modelshield membership --help``).
    """

    attacks: list[str] = Field(default_factory=lambda: ["loss", "lira", "rmia", "label-only"],
                               min_length=1)
    shadows: int = Field(default=16, ge=2, le=256)
    # An attacker who knows the detectors spreads its queries over this many keys, of as
    # many owners and networks (local targets).
    keys: int = Field(default=1, ge=1, le=1000)
    recipe: str | None = None
    train_size: int | None = Field(default=None, ge=1)
    data: str | None = None

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, v: list[str]) -> list[str]:
        from modelshield.attacks.membership import MEMBERSHIP

        for item in v:
            name, _, rest = item.partition(":")
            if name not in MEMBERSHIP:
                raise ValueError(f"unknown membership attack {name!r}; choose from "
                                 f"{', '.join(MEMBERSHIP)}")
            try:
                MEMBERSHIP[name](**parse_params(MEMBERSHIP[name],
                                                [p for p in rest.split(",") if p], item))
            except ModelShieldError as exc:
                raise ValueError(str(exc)) from None
        if len(set(v)) != len(v):
            raise ValueError("list each attack once (a variant is name:key=value)")
        return v

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, v: str | None) -> str | None:
        if v is not None:
            from modelshield.models import make_estimator

            try:
                make_estimator(v)
            except ModelShieldError as exc:
                raise ValueError(str(exc)) from None
        return v

    def parsed(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(label, attack name, typed parameters) of each attack."""
        from modelshield.attacks.membership import MEMBERSHIP

        out = []
        for item in self.attacks:
            name, _, rest = item.partition(":")
            out.append((item, name, parse_params(MEMBERSHIP[name],
                                                 [p for p in rest.split(",") if p], item)))
        return out


def _searched(data: Any) -> Any:
    """The search's defenses after the listed ones (a name already listed keeps its own)."""
    if not isinstance(data, dict) or data.get("search") is None:
        return data
    try:
        search = data["search"]
        search = search if isinstance(search, Search) else Search.model_validate(search)
    except ValidationError:
        return data  # the field's own validation names what is wrong
    listed = list(data.get("defenses") or [{"name": "none"}])
    have = {d.name if isinstance(d, Defense) else d.get("name") for d in listed
            if isinstance(d, Defense | dict)}
    return {**data, "defenses": listed + [d for d in search.defenses() if d.name not in have]}


COUNTERPART_KEYS = 10
# The share of its pool a counterpart that draws from a pool keeps, facing detectors: the
# out-of-distribution detector's radius lets 1% of natural rows out, so a tenth is ample.
COUNTERPART_TYPICAL = 0.9


def _counterparts(data: Any) -> Any:
    """Each plain attacker's adaptive counterpart (its budget over 10 keys, paced to the
    rate limits; facing detectors, an attacker that draws from a pool also sends only its
    most typical rows), when a defense keeps per-key state (detectors, limits, a
    watermark) and the scenario has no adaptive version of the same attack and parameters
    already."""
    if not isinstance(data, dict) or not data.get("adaptive", True):
        return data
    try:
        defenses = [d if isinstance(d, Defense) else Defense.model_validate(d)
                    for d in data.get("defenses") or [{"name": "none"}]]
        attackers = [a if isinstance(a, Attacker) else Attacker.model_validate(a)
                     for a in data.get("attackers") or []]
        target = data.get("target")
        remote = (target.remote if isinstance(target, Target) else
                  isinstance(target, dict) and target.get("url") is not None)
    except (ValidationError, ValueError, TypeError):
        return data  # the fields' own validation names what is wrong
    # Per-key state: detectors, rate limits, and a watermark (keyed per account: a clone
    # built from many keys' answers carries a share of each key's marks).
    if remote or not any(t.detectors or any(t.limits.model_dump().values())
                         or t.watermark is not None
                         for t in (d.as_tier() for d in defenses)):
        return data
    detectors = any(d.as_tier().detectors for d in defenses)
    labels = {a.label for a in attackers}
    adaptive = {(a.attack, json.dumps(a.params, sort_keys=True, default=str))
                for a in attackers if a.keys > 1 or a.pace}
    extra = []
    for a in attackers:
        same = (a.attack, json.dumps(a.params, sort_keys=True, default=str))
        typical = COUNTERPART_TYPICAL if detectors and a.draws_pool else 0.0
        label = f"{a.label}, {COUNTERPART_KEYS} keys, paced" + (
            ", typical rows" if typical else "")
        if a.adaptive or same in adaptive or label in labels:
            continue
        extra.append(a.model_copy(update={"name": label, "keys": COUNTERPART_KEYS,
                                          "pace": True, "typical": typical,
                                          "counterpart": True}))
    return {**data, "attackers": attackers + extra} if extra else data


class Scenario(_Strict):
    name: str = "audit"
    # What this audit leaves out, in words: shown at the top of the report (the demo's
    # says what a full audit would add).
    scope: str | None = Field(default=None, max_length=2000)
    seed: int = 0
    price_per_1k: float = Field(default=1.0, ge=0)
    model_value: float = Field(default=10_000.0, gt=0)
    deployed: str | None = None
    deployment: Deployment = Deployment()
    target: Target
    attackers: list[Attacker] = Field(min_length=1)
    defenses: list[Defense] = Field(default_factory=lambda: [Defense(name="none")])
    benign: Benign = Benign()
    honest_budget: HonestBudget = HonestBudget()
    privacy: Privacy | None = None
    search: Search | None = None
    # Each plain attacker is also played by its adaptive counterpart (10 keys, paced to the
    # rate limits) when a defense keeps per-key state (detectors, rate limits, a watermark).
    adaptive: bool = True

    @model_validator(mode="before")
    @classmethod
    def _written(cls, data: Any) -> Any:
        """The search's defenses and the adaptive counterparts join the listed defenses and
        attackers (once: a dump validates again)."""
        return _counterparts(_searched(data))

    @model_validator(mode="after")
    def _names(self) -> Scenario:
        if self.search is not None and self.target.remote:
            raise ValueError("search: a remote target applies its own defenses; the "
                             "search needs a local target")
        names = [d.name for d in self.defenses]
        if len(set(names)) != len(names):
            raise ValueError("defense names must be unique")
        labels = [a.label for a in self.attackers]
        if len(set(labels)) != len(labels):
            raise ValueError("attacker names must be unique (give each a 'name')")
        if self.deployed is not None and self.deployed not in names:
            raise ValueError(f"deployed: {self.deployed!r} is not a defense; choose from "
                             f"{', '.join(names)}")
        if self.target.remote and len(self.defenses) > 1:
            raise ValueError("a remote target ('url') applies its own defenses; "
                             "list at most one defense, which names it")
        if self.privacy is not None:
            if self.target.file is not None and self.privacy.data is None:
                raise ValueError("privacy.data: a model file needs its members and "
                                 "non-members (an .npz: see `modelshield membership --help`)")
            if self.target.victim is not None and self.privacy.data is not None:
                raise ValueError("privacy.data: a built-in victim knows its members; give "
                                 "data only with a model file")
            if self.privacy.data is not None and not Path(self.privacy.data).is_file():
                raise ValueError(f"privacy.data: {self.privacy.data!r} does not exist")
            if self.privacy.keys > 1 and self.target.remote:
                raise ValueError("privacy.keys: spreading over keys needs a local target "
                                 "(the audit makes the keys)")
        return self

    @property
    def deployed_defense(self) -> str:
        return self.deployed or self.defenses[0].name

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


def load_scenario(source: str | Path | dict[str, Any]) -> Scenario:
    """Validate a YAML file (or a dict) into a Scenario; ConfigError names the bad field."""
    if isinstance(source, dict):
        raw: Any = source
        where = "scenario"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"Scenario file {str(path)!r} does not exist.")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        where = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(raw).__name__}")
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"{where}: " + "; ".join(lines)) from None


def _as_items(params: dict[str, Any]) -> list[str]:
    out = []
    for k, v in params.items():
        if isinstance(v, list | tuple):
            v = ",".join(str(i) for i in v)
        out.append(f"{k}={v}")
    return out


EXAMPLE = """\
# modelshield audit scenario: `modelshield audit THIS_FILE --out DIR`
#
# The runner plays every attacker x defense x budget, in parallel, and writes
# DIR/report.html, DIR/results.json and DIR/summary.md. Finished cells are cached in DIR,
# so a second run with nothing changed takes seconds.
name: digits MLP behind a public API
seed: 0
price_per_1k: 1.00          # dollars per 1,000 queries, what the API charges
model_value: 20000          # dollars it cost to build the model (data, labelling, training)
deployed: monitored         # the defense that runs today; the rating is for this one

deployment:                 # stated beside the rating
  public_api: true          # anyone can sign up for a key
  generous_limits: true
  monitoring: false         # nobody reads alerts: an 'alert' flag does not count as caught

target:
  victim: digits-mlp        # a built-in victim (`modelshield victims`)
  # file: model.joblib      # or your model file (.joblib, .onnx, .pt, XGBoost .json/.ubj, LightGBM .txt) ...
  # data: data.npz          # ... with X_test, y_test (and optionally pool, low, high)
  # url: http://127.0.0.1:8000   # or a running gateway, attacked with a customer's key;
  # api_key: ms_...               # victim/file then names the model it serves
  # protocol: rest                # rest or v2

attackers:                  # `modelshield attacks` lists them and their parameters
  - name: knockoff (natural data)   # draws the natural rows of its pool (449 digits)
    attack: knockoff
    params: {source: pool, checkpoints: [100, 300]}
    budgets: [440]
  - name: active learning
    attack: active
    params: {strategy: margin}
    budgets: [1000]
  - name: equation solving
    attack: equation-solving
    params: {model: mlp, source: pool}
    budgets: [3020]
  - name: knockoff over 10 keys  # an attacker who knows the detectors: 10 keys of 10
    attack: knockoff             # owners and networks (keys), and 30% natural rows mixed
    params: {source: synthetic}  # into its stream (mix_natural)
    budgets: [1000]
    keys: 10
    mix_natural: 0.3
    # pace: true             # wait out each rate limit (429) and go on: low and slow
    # typical: 0.9           # send only the 90% of its pool its own density finds typical

# Each plain attacker is also played over 10 keys, paced to the rate limits, where a
# defense keeps per-key state (detectors, limits, a watermark), and facing detectors with
# the most typical rows of its pool; `adaptive: false` turns it off.
adaptive: true

defenses:                   # each is a gateway tier (see `modelshield init`)
  - name: none
    policy: full
  - name: rounded
    policy: "round:2"
  - name: labels only
    policy: label
  - name: monitored
    policy: full
    detectors: [sweep, boundary, ood, prada, volume]
    on_flag: deny           # alert | throttle | degrade | deny
  # - name: watermarked     # every clone made through it is tested against the watermark
  #   policy: full          # (the report's "traced" column)
  #   watermark: {rate: 0.005}
  # - name: as deployed
  #   config: modelshield.yaml   # a gateway config ...
  #   tier: free                 # ... and one of its tiers

benign:                     # honest customers sent through each defense
  accounts: 10              # of each kind: iid, narrow, what-if, batch, repeat, burst
  median_rows: 60

honest_budget:              # what the best defense against an attacker may cost them
  accuracy_lost: 0.01
  flagged_share: 0.01
# search:                   # defenses the audit writes itself for that choice
#   policies: [label, "round:1", "mad-argmax:eps=1.0"]
#   fprs: [0.001, 0.01]     # the detectors with deny at each false-positive rate
#   combine: true           # and the detectors with each policy

privacy:                    # membership inference under each defense
  attacks: [loss, lira, rmia, label-only]   # `modelshield attacks`; lira:online=false ...
  shadows: 16               # shadow models, trained once from the model's training recipe
  # recipe: "mlp:hidden=256-256,epochs=100"  # how the model was trained (built-ins know)
  # data: members.npz       # with a model file: its members, non-members and population
"""

# The demo is an audit scaled to about a minute on 2 cores: budgets of 300 queries, MLP
# students at 100 epochs (a full audit chooses each attacker's student on held-out answers),
# 8 shadow models, 4 honest accounts of each kind. DEMO_SCOPE says so in its report.
_DEMO_STUDENT = {"student": "mlp", "epochs": 100}
_DEMO_KNOCKOFF = {"source": "pool", "checkpoints": [100], **_DEMO_STUDENT}
DEMO_SCOPE = (
    "A demo, scaled to about a minute: budgets of 300 queries, MLP students trained for 100 "
    "epochs, 8 shadow models for membership inference, 4 honest accounts of each kind. A "
    "full audit (modelshield init --audit) plays budgets of 1,000 queries and more with "
    "checkpoints along the way, lets each attacker choose its student (MLP, forest or "
    "boosting) on held-out answers, trains 16 or more shadow models, and can search for the "
    "cheapest defense (search:).")

DEMO: dict[str, Any] = {
    "name": "demo: digits MLP behind a public API",
    "scope": DEMO_SCOPE,
    "seed": 0,
    "price_per_1k": 1.0,
    "model_value": 20_000,
    "deployed": "none",
    "deployment": {"public_api": True, "generous_limits": True, "monitoring": False},
    "target": {"victim": "digits-mlp"},
    "attackers": [
        {"name": "knockoff (natural data)", "attack": "knockoff", "params": _DEMO_KNOCKOFF,
         "budgets": [300]},
        {"name": "active learning", "attack": "active",
         "params": {"strategy": "margin", "rounds": 4, **_DEMO_STUDENT}, "budgets": [300]},
        {"name": "jacobian", "attack": "jacobian", "params": {"epochs": 100}, "budgets": [300]},
        # An attacker who knows the detectors: the same knockoff, spread over 10 keys of
        # 10 owners and networks.
        {"name": "knockoff over 10 keys", "attack": "knockoff", "params": _DEMO_KNOCKOFF,
         "budgets": [300], "keys": 10},
    ],
    "defenses": [
        {"name": "none", "policy": "full"},
        {"name": "rounded", "policy": "round:1"},
        {"name": "labels only", "policy": "label"},
        {"name": "monitored", "policy": "full",
         "detectors": ["sweep", "boundary", "ood", "prada", "volume"], "on_flag": "deny"},
    ],
    "benign": {"accounts": 4, "median_rows": 60},
    "privacy": {"attacks": ["loss", "lira", "rmia", "label-only"], "shadows": 8},
}
