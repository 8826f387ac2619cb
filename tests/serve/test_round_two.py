"""The gateway's second outside test, its findings outside the language-model routes, each
reproduced as reported. Over real sockets (uvicorn on loopback) where the finding is about
the server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from tests.cli import run_cli
from tests.servers import live_app

PREDICT = "/v1/models/digits-mlp/predict"
ROW = {"inputs": [[0.0] * 64]}


def config(tmp: Path, **extra: Any) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    return {"model": {"builtin": "digits-mlp"}, "audit_url": f"sqlite:///{tmp / 'audit.db'}",
            "tiers": {"pro": {"policy": "round:2", "max_batch": 50}}, **extra}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def write_config(tmp: Path, cfg: dict[str, Any]) -> Path:
    import yaml

    path = tmp / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- N13: forwarded addresses --------------------------------------------------------------
def test_a_forwarded_address_that_is_not_an_ip_is_refused_and_never_logged(
        tmp_path: Path) -> None:
    shield = build_shield(config(tmp_path, trusted_proxies=["127.0.0.1"]))
    key, _ = shield.store.create_key("pro")
    with live_app(create_app(shield)) as client:
        r = client.post(PREDICT, json=ROW, headers={**auth(key),
                                                    "X-Forwarded-For": "[bold red]x[/"})
        ok = client.post(PREDICT, json=ROW, headers={**auth(key),
                                                     "X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "X-Forwarded-For"
    assert ok.status_code == 200
    assert {rec["client_ip"] for rec in shield.store.records()} == {"203.0.113.9"}
    shield.close()


def test_show_and_flags_print_markup_in_the_log_as_text(tmp_path: Path) -> None:
    """A record or a flag holding Rich markup (from an older gateway, or written into the
    database) is printed as it is, not read as markup."""
    from modelshield.store import AuditRecord

    cfg = config(tmp_path)
    shield = build_shield(cfg)
    shield.store.append([AuditRecord(1.0, None, "[bold red]x[/", "m", 0, None, None,
                                     {"action": "refuse", "status": 401, "code": "[/x]",
                                      "reason": "[link=evil]"})])
    shield.store.record_flag("ip:[/bold]", "[red]", 1.0, "[/]")
    shield.close()
    path = write_config(tmp_path, cfg)
    show = run_cli("audit-log", "show", "--config", str(path))
    flags = run_cli("audit-log", "flags", "--config", str(path))
    assert show.returncode == 0 and "[bold red]x[/" in show.stdout, show.stderr
    assert flags.returncode == 0 and "ip:[/bold]" in flags.stdout, flags.stderr
