"""``audit-log``: check, inspect and anchor the gateway's audit log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

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


def read_anchor(anchor: Path | None) -> dict[str, Any] | None:
    """A chain head saved by ``audit-log head`` (None: no file given)."""
    if anchor is None:
        return None
    try:
        saved: dict[str, Any] = json.loads(anchor.read_text())
        int(saved["seq"]), str(saved["hash"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--anchor {anchor}: not a head written by `modelshield "
                          f"audit-log head` ({exc})") from None
    return saved


@audit_log_app.command("verify")
def audit_log_verify(config: ConfigOpt = None, anchor: AnchorOpt = None) -> None:
    """Check every record's seal and the chain head, and name each break: records edited,
    inserted, removed, moved, or removed at the end."""
    saved = read_anchor(anchor)
    verdict = open_config_store(config).verify(anchor=saved)
    versions = ", ".join(f"{n} with {v or 'no version (older modelshield)'}"
                         for v, n in verdict.versions.items()) or "no records"
    if verdict.ok:
        console.print(f"[green]chain intact[/]: {verdict.checked} records ({versions})"
                      + (f"; anchor at record {saved['seq']} found" if saved else ""))
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
    """Check each exported record's seal with the config's audit keys (a third party
    given the key can check the evidence without the database)."""
    from modelshield.audit.evidence import check_records

    if not records.is_file():
        raise ConfigError(f"{records} does not exist.")
    n, bad = check_records(records, load_config(config).audit_keys)
    if bad:
        err.print(f"[bold red]{len(bad)} of {n} records do not match their seals[/]: "
                  f"positions {', '.join(map(str, bad[:20]))}")
        raise typer.Exit(1)
    console.print(f"[green]all {n} records match their seals[/]")


@audit_log_app.command("head")
def audit_log_head(config: ConfigOpt = None) -> None:
    """Print the chain head as JSON. Keep a copy where the database's writers cannot reach
    (a ticket, another system's log); `verify --anchor` checks it later."""
    print(json.dumps({**open_config_store(config).head(), "taken_at": time.time()}))


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
    """Show the last records of the log (or of one key): answers and refusals."""
    console.print(records_table(open_config_store(config).records(limit=limit, key_id=key),
                                key))
