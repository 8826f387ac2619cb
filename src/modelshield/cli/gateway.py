"""``init``, ``calibrate`` and ``serve``: set up, tune and run the gateway."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modelshield.cli._common import ConfigOpt, console, err, load_config
from modelshield.cli.render import calibration_table, honest_check_table
from modelshield.errors import ConfigError

if TYPE_CHECKING:
    from modelshield.audit.calibration import Traffic
    from modelshield.defenses.config import ShieldConfig

InitPath = Annotated[Path | None, typer.Argument(
    help="Where to write it (default: modelshield.yaml, or audit.yaml with --audit).")]
InitAudit = Annotated[bool, typer.Option(
    "--audit", help="Write an example audit scenario instead of a gateway config.")]
Force = Annotated[bool, typer.Option(help="Overwrite an existing file.")]


def init(path: InitPath = None, audit: InitAudit = False, force: Force = False) -> None:
    """Write a commented example gateway config with free / pro / enterprise tiers
    (or, with --audit, an example audit scenario)."""
    from modelshield.audit.scenario import EXAMPLE as SCENARIO
    from modelshield.defenses.config import example_config

    path = path or Path("audit.yaml" if audit else "modelshield.yaml")
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it.")
    path.write_text(SCENARIO if audit else example_config())
    console.print(f"wrote {path}")


FromLog = Annotated[bool, typer.Option(
    "--from-audit-log", help="Write calibration data from the rows customers "
    "sent (the audit log), instead of showing the thresholds.")]
Since = Annotated[str | None, typer.Option(
    help="With --from-audit-log: from this time (UTC): 2026-11-01, "
    "2026-11-01T08:00, or 30d (that many days ago).")]
Until = Annotated[str | None, typer.Option(
    help="With --from-audit-log: up to this time (same forms).")]
CalibrateModel = Annotated[str | None, typer.Option(
    "--model", help="The served model's name (default: the config's only model).")]
CalibrateOut = Annotated[Path | None, typer.Option(
    "--out", help="With --from-audit-log: the .npz to write (array X); name "
    "it in the config's model.calibration.")]
Check = Annotated[int, typer.Option(
    "--check", min=0, max=1000, help="Also play this many honest customers "
    "of each kind (iid, narrow, what-if, batch, repeat, burst) through each "
    "tier, calibrated on half the data, sending the other half; report the "
    "share flagged.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def calibrate(config: ConfigOpt = None, from_audit_log: FromLog = False, since: Since = None,
              until: Until = None, model: CalibrateModel = None, out: CalibrateOut = None,
              check: Check = 0, as_json: AsJson = False) -> None:
    """Show how each tier's detectors are calibrated on the model's calibration data, or
    (--from-audit-log) write that data from past traffic.

    Detectors set their thresholds from the owner's natural data for the tier's fpr (the
    share of honest accounts they may flag). Past traffic is the best such data: it is
    what customers send. Keys that were ever flagged are left out, and each distinct row
    is kept once. The accounts' volumes are printed as well, to set volume's max_rows.
    """
    cfg = load_config(config)
    if from_audit_log:
        _calibrate_from_log(cfg, since, until, model, out, as_json)
        return
    if since or until or out:
        raise ConfigError("--since, --until and --out go with --from-audit-log")
    from modelshield.audit.calibration import honest_check
    from modelshield.serve.admin import calibration_models, detector_calibration

    rows = detector_calibration(cfg, model)
    checked = {spec.name: honest_check(one, m, spec, data, check)
               for one, m, spec, data in calibration_models(cfg, model)} if check else {}
    if as_json:
        print(json.dumps({"detectors": rows, "honest_check": checked} if check else rows,
                         default=float))
        return
    for name, tiers in checked.items():
        console.print(honest_check_table(name, tiers))
    console.print(calibration_table(rows))


def when_arg(value: str | None, option: str, now: float | None = None) -> float | None:
    """A --since/--until value as a Unix time: an ISO date or time (UTC), or 'Nd' (that
    many days before ``now``)."""
    if value is None:
        return None
    import datetime as dt

    if value.endswith("d") and value[:-1].isdigit():
        return (time.time() if now is None else now) - int(value[:-1]) * 86400
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{option}: {value!r} is not a date such as 2026-11-01, "
                          "2026-11-01T08:00 or 30d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _calibrate_from_log(cfg: ShieldConfig, since: str | None, until: str | None,
                        model: str | None, out: Path | None, as_json: bool) -> None:
    from modelshield.serve.admin import gateway_model_names

    if out is None:
        raise ConfigError("--out: name the .npz file to write (then set model.calibration "
                          "to it)")
    if out.suffix.lower() != ".npz":
        raise ConfigError(f"--out: {out.name} must end in .npz")
    if model is None:  # named as the gateway names it, without loading the model (its
        # calibration file may be the one this command is about to write)
        names = gateway_model_names(cfg)
        if len(names) > 1:
            raise ConfigError(f"--model: the config serves {', '.join(names)}; name one")
        model = names[0]
    traffic = _logged_traffic(cfg, model, when_arg(since, "--since"),
                              when_arg(until, "--until"))
    if len(traffic.rows) == 0:
        raise ConfigError(f"the audit log holds no complete rows sent to {model!r} by "
                          "unflagged keys" + (" in that period" if since or until else ""))
    import numpy as np

    np.savez(out, X=traffic.rows)
    if as_json:
        print(json.dumps({"model": model, "out": str(out), "rows": len(traffic.rows),
                          "records": traffic.records, "skipped_rows": traffic.skipped_rows,
                          "flagged_keys_left_out": len(traffic.flagged_keys),
                          "volumes": traffic.volumes()}))
        return
    _print_traffic(traffic, model, out)


def _logged_traffic(cfg: ShieldConfig, model: str, since: float | None,
                    until: float | None) -> Traffic:
    from modelshield.audit.calibration import traffic_from_log
    from modelshield.serve.factory import open_store

    store = open_store(cfg)
    try:
        return traffic_from_log(store, model, since, until)
    finally:
        store.close()


def _print_traffic(traffic: Traffic, model: str, out: Path) -> None:
    v = traffic.volumes()
    console.print(f"wrote {out}: {len(traffic.rows)} distinct rows from {traffic.records} "
                  f"requests of {int(v['accounts'])} accounts to {model!r} "
                  f"({traffic.skipped_rows} rows left out: flagged keys "
                  f"({len(traffic.flagged_keys)}) or missing features)")
    console.print(f"rows per account: median {v['median']:.0f}, 99th percentile "
                  f"{v['p99']:.0f}, 99.9th {v['p99.9']:.0f}, max {v['max']:.0f}: "
                  "volume's max_rows above the 99.9th keeps honest accounts clear")
    console.print(f"set model.calibration: {out}")


Host = Annotated[str, typer.Option(help="Address to bind.")]
Port = Annotated[int, typer.Option(help="Port to bind.")]
ServeWorkers = Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")]


def serve(config: ConfigOpt = None, host: Host = "127.0.0.1", port: Port = 8000,
          workers: ServeWorkers = 1) -> None:
    """Serve the model behind the Shield over HTTP (no config: built-in model, memory
    limits, SQLite audit log, localhost)."""
    import os

    cfg = load_config(config)  # validate before starting anything
    from modelshield.serve.factory import open_store

    open_store(cfg).close()  # the audit database is reachable (else one line naming it)
    if config is not None:
        os.environ["MODELSHIELD_CONFIG"] = str(config.resolve())
    else:
        os.environ.pop("MODELSHIELD_CONFIG", None)
    from sqlalchemy.engine import make_url

    from modelshield.serve.admin import model_labels

    served = ", ".join(model_labels(cfg))
    err.print(f"modelshield gateway: serving {served} on http://{host}:{port} "
              f"({workers} worker{'s' if workers > 1 else ''}; audit log "
              f"{make_url(cfg.audit_url).render_as_string(hide_password=True)}; "
              f"limits {cfg.storage.limits}; docs at /docs)", highlight=False)
    if not cfg.audit_keys:
        err.print("[yellow]warning[/]: no audit_keys set: the audit log is chained with plain "
                  "SHA-256, so whoever can write its database can rewrite it unseen "
                  "(modelshield audit-log new-key writes a key)", highlight=False)
    # Forwarded headers are trusted only from the config's trusted_proxies (the app
    # applies them), never from uvicorn's default of 127.0.0.1.
    from modelshield.serve.server import run

    run("modelshield.serve.main:app", host=host, port=port, workers=workers)
