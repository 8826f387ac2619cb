"""What a membership-inference run needs before it starts: the attacks, parsed and
checked before any shadow model is trained, and a fresh oracle per attack, in-process
behind an output policy or over HTTP against a gateway that serves the victim."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modelshield.attacks.membership import MEMBERSHIP
from modelshield.attacks.params import parse_params
from modelshield.defenses.policies import parse_policy
from modelshield.errors import ConfigError
from modelshield.oracle.base import Oracle
from modelshield.victims.base import Victim

DEFAULT_ATTACKS = ("loss", "lira", "rmia", "label-only")


@dataclass(frozen=True)
class MembershipSpec:
    """One attack as asked for (``label``, e.g. ``lira:online=false``), its registered
    ``name`` and its typed parameters."""

    label: str
    name: str
    params: dict[str, Any]

    @property
    def uses_shadows(self) -> bool:
        return bool(MEMBERSHIP[self.name].uses_shadows)


def parse_membership_attacks(items: Sequence[str], where: str = "--attack"
                             ) -> list[MembershipSpec]:
    """``name`` or ``name:key=value,...`` per attack; a wrong name or value fails now."""
    specs = []
    for item in items:
        name, _, rest = item.partition(":")
        if name not in MEMBERSHIP:
            raise ConfigError(f"Unknown membership attack {name!r}. Choose one of: "
                              f"{', '.join(MEMBERSHIP)}.")
        params = parse_params(MEMBERSHIP[name], [p for p in rest.split(",") if p], where=where)
        MEMBERSHIP[name](**params)  # a bad value fails now, before any training
        specs.append(MembershipSpec(item, name, params))
    return specs


OracleFactory = Callable[[int], Oracle]


def local_oracles(victim: Victim, policy: str, price: float) -> OracleFactory:
    """A fresh in-process oracle per attack: ``victim`` behind ``policy``."""
    from modelshield.oracle import LocalOracle

    return lambda need: LocalOracle(victim, parse_policy(policy), price_per_1k=price)


def http_oracles(victim: Victim, target: str, api_key: str, *, model: str | None = None,
                 price: float = 0.0, victim_name: str | None = None) -> OracleFactory:
    """A fresh HTTP oracle per attack on the gateway at ``target``, once it is checked to
    serve ``victim_name`` (when given) with the members' number of features."""
    from modelshield.oracle import HttpOracle

    probe = HttpOracle(target, api_key, price_per_1k=price, model=model)
    probe.close()
    if victim_name is not None and probe.model != victim_name:
        raise ConfigError(f"--victim {victim_name!r} is not the model the target serves "
                          f"({probe.model!r}): membership would be scored against the wrong "
                          "training set.")
    if probe.spec.n_features != victim.spec.n_features:
        raise ConfigError(f"The members have {victim.spec.n_features} features; the target's "
                          f"{probe.model!r} takes {probe.spec.n_features}.")
    return lambda need: HttpOracle(target, api_key, price_per_1k=price, model=model)
