"""``audit-log``: check, inspect and anchor the gateway's audit log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from modelshield.cli._common import ConfigOpt, console, err, load_config, open_config_store
from modelshield.cli.render import breaks_table, flags_table, records_table
from modelshield.errors import ConfigError

audit_log_app = typer.Typer(help="Inspect the gateway's audit log.", no_args_is_help=True)

AnchorOpt = Annotated[Path | None, typer.Option(
    "--anchor", help="A head saved earlier with `audit-log head`: also "
    "check the log still holds it (catches a rollback of the whole log).")]
Records = Annotated[Path, typer.Argument(
    help="A records.jsonl written by `modelshield evidence`.")]
Version = Annotated[str | None, typer.Option(
    help="The new key's version (default: this month, e.g. 2026-11).")]
KeyFilter = Annotated[str | None, typer.Option("--key", help="Only this key id's records.")]
Limit = Annotated[int, typer.Option(min=1, help="The last N records.")]


def configured_anchor(anchor: Path | None, configured: str | None
                      ) -> tuple[dict[str, Any] | None, str]:
    """(the anchor to check against, where it came from): ``--anchor``, else the config's
    ``audit_anchor`` when it holds one."""
    from modelshield.store.anchor import read_anchor

    if anchor is not None:
        return read_anchor(anchor), str(anchor)
    if configured and Path(configured).exists():
        return read_anchor(Path(configured), "audit_anchor"), f"audit_anchor {configured}"
    return None, ""


@audit_log_app.command("verify")
def audit_log_verify(config: ConfigOpt = None, anchor: AnchorOpt = None) -> None:
    """Check every record's seal and link and the chain head, and name each break: records
    edited, inserted, removed, moved, spliced in, or removed at the end; and that the log
    still holds its anchor (``--anchor``, else the config's ``audit_anchor``)."""
    cfg = load_config(config)
    saved, source = configured_anchor(anchor, cfg.audit_anchor)
    verdict = open_config_store(config).verify(anchor=saved)
    versions = ", ".join(f"{n} with {v or 'no version (older modelshield)'}"
                         for v, n in verdict.versions.items()) or "no records"
    if verdict.ok:
        console.print(f"[green]chain intact[/]: {verdict.checked} records ({versions})"
                      + (f"; anchor at record {saved['seq']} found ({source})" if saved
                         else ""))
        if saved is None:
            err.print("[yellow]no anchor[/]: a log cut back to an earlier genuine head would "
                      "pass this check; save the head with `modelshield audit-log head` "
                      "(audit_anchor in the config) and check against it")
        if verdict.checked and not verdict.keyed:
            err.print("[yellow]warning[/]: some records are not sealed with a key; they "
                      "show accidents, not tampering by whoever can write the database")
        return
    err.print(breaks_table(verdict.breaks))
    err.print(f"[bold red]chain broken[/]: {len(verdict.breaks)} break(s)"
              + (" (more not listed)" if verdict.truncated else "")
              + f" in {verdict.checked} records")
    raise typer.Exit(1)


@audit_log_app.command("check-records")
def audit_log_check_records(records: Records, config: ConfigOpt = None) -> None:
    """Check an export's records with the config's audit keys: each record's seal, and the
    export's sealed manifest, so that a record dropped, added or resealed is named (a third
    party given the key can check the evidence without the database)."""
    from modelshield.audit.evidence import check_records

    if not records.is_file():
        raise ConfigError(f"{records} does not exist.")
    keys = load_config(config).audit_keys
    if not keys:
        raise ConfigError("audit_keys: check-records needs the audit keys the records were "
                          "sealed with; the config lists none.")
    found = check_records(records, keys)
    if found.problem:
        err.print(f"[bold red]{escape(found.problem)}[/]")
        raise typer.Exit(1)
    if found.bad:
        err.print(f"[bold red]{len(found.bad)} of {found.checked} records do not match their "
                  f"seals[/]: positions {', '.join(map(str, found.bad[:20]))}")
    if found.missing:
        err.print(f"[bold red]{len(found.missing)} record(s) listed in the manifest are "
                  f"missing[/]: positions {', '.join(map(str, found.missing[:20]))}")
    if not found.ok:
        raise typer.Exit(1)
    console.print(f"[green]all {found.checked} records match their seals[/], and none is "
                  "missing from the sealed manifest")


@audit_log_app.command("head")
def audit_log_head(config: ConfigOpt = None) -> None:
    """Print the chain head as JSON, and save it at the config's ``audit_anchor`` (unless
    the anchor already there is no longer in the log). Keep it where the database's
    writers cannot reach; `verify` checks it."""
    from modelshield.store.anchor import save_anchor

    cfg = load_config(config)
    store = open_config_store(config)
    if cfg.audit_anchor:
        head = save_anchor(store, Path(cfg.audit_anchor))
        err.print(f"saved at audit_anchor {cfg.audit_anchor}")
    else:
        head = {**store.head(), "taken_at": time.time()}
    print(json.dumps(head))


@audit_log_app.command("new-key")
def audit_log_new_key(version: Version = None) -> None:
    """Print a new random audit key to add under audit_keys. Keep the old versions listed
    so their records still check; new records are sealed with the last one listed (or
    audit_key_version)."""
    import secrets

    version = version or time.strftime("%Y-%m", time.gmtime())
    print(f'audit_keys:\n  # ...the versions already there, then:\n'
          f'  "{version}": "{secrets.token_urlsafe(32)}"')


@audit_log_app.command("flags")
def audit_log_flags(config: ConfigOpt = None) -> None:
    """List every flagged account or group: when, which detector, and why."""
    console.print(flags_table(open_config_store(config).flags()))


@audit_log_app.command("show")
def audit_log_show(key: KeyFilter = None, limit: Limit = 50, config: ConfigOpt = None) -> None:
    """Show the last records of the log (or of one key): answers, refusals and
    operators' actions (keys created and revoked, flags set and lifted)."""
    console.print(records_table(open_config_store(config).records(limit=limit, key_id=key,
                                                                  admin=True), key))
