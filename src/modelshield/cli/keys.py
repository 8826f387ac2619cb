"""``keys``: create, list, reinstate and revoke API keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from modelshield.cli._common import ConfigOpt, console, load_config, open_config_store
from modelshield.errors import ConfigError

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)

Tier = Annotated[str, typer.Option(help="Tier the key belongs to.")]
Owner = Annotated[str, typer.Option(help="Who holds the key.")]
TtlDays = Annotated[float | None, typer.Option(help="Expire after N days.")]
KeyId = Annotated[str, typer.Argument(help="The key id (from keys list).")]


@keys_app.command("create")
def keys_create(tier: Tier, owner: Owner = "", ttl_days: TtlDays = None,
                config: ConfigOpt = None) -> None:
    """Create a key; its holder accepts the configured terms of service. Shown once."""
    cfg = load_config(config)
    if tier not in cfg.all_tiers():
        raise ConfigError.invalid("tier", f"one of {', '.join(cfg.all_tiers())}", tier)
    secret, key = open_config_store(config).create_key(
        tier, owner, cfg.terms_version, None if ttl_days is None else ttl_days * 86400)
    console.print(f"key id {key.key_id}, tier {tier}, terms v{cfg.terms_version} accepted")
    print(secret)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None) -> None:
    """List keys (ids, tiers, state; never the secrets)."""
    from modelshield.serve.admin import key_state

    cfg = load_config(config)
    table = Table("key id", "tier", "owner", "state", "terms", title="API keys")
    for k in open_config_store(config).list_keys():
        table.add_row(k.key_id, k.tier, k.owner, key_state(k, cfg), f"v{k.terms_version}")
    console.print(table)


@keys_app.command("reinstate")
def keys_reinstate(key_id: KeyId, config: ConfigOpt = None) -> None:
    """Lift a key's flag and its groups' (its owner's, the /24s it was seen from), and so
    its suspension; each lift is sealed in the audit log. A gateway with Redis state sees
    it at once; one with memory:// state, at its next start."""
    from modelshield.serve.admin import reinstate_key

    cfg = load_config(config)
    lifted = reinstate_key(cfg, open_config_store(config), key_id)
    if not lifted:
        raise ConfigError(f"No flag on key {key_id!r} or on its groups.")
    groups = [g for g in lifted if g != key_id]
    console.print(escape(f"reinstated {key_id}: lifted the flag on {', '.join(lifted)}"
                         + (" (every key in a group lifted is reinstated with it)"
                            if groups else "")))


@keys_app.command("revoke")
def keys_revoke(key_id: KeyId, config: ConfigOpt = None) -> None:
    """Revoke a key at once."""
    if not open_config_store(config).revoke(key_id):
        raise ConfigError(f"No active key with id {key_id!r}.")
    console.print(f"revoked {key_id}")
