"""API keys: a chosen key id (for reproducible audits) is checked and kept unique."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelshield.errors import ConfigError
from modelshield.store import AuditStore, seeded_key_id


def test_a_chosen_key_id_is_used_checked_and_unique(tmp_path: Path) -> None:
    store = AuditStore(f"sqlite:///{tmp_path}/a.db")
    try:
        kid = seeded_key_id(0, "attacker", 1)
        assert kid == seeded_key_id(0, "attacker", 1) != seeded_key_id(0, "attacker", 2)
        assert len(kid) == 12 and set(kid) <= set("0123456789abcdef")
        secret, key = store.create_key("pro", owner="thief", key_id=kid)
        assert key.key_id == kid and secret.startswith(f"ms_{kid}_")
        found = store.lookup(secret)
        assert found is not None and found.key_id == kid
        with pytest.raises(ConfigError, match="is taken"):
            store.create_key("pro", key_id=kid)
        for bad in ("ABCDEF012345", "abc", "0123456789abcdefg", "xyz456789abc"):
            with pytest.raises(ConfigError, match="'key_id' parameter must be 12 lowercase"):
                store.create_key("pro", key_id=bad)
        other = [store.create_key("pro")[1].key_id for _ in range(3)]  # random by default
        assert len(set(other)) == 3 and kid not in other
        assert len(store.list_keys()) == 4  # nothing half-made by the refusals
    finally:
        store.close()


def test_an_unreachable_database_is_one_line_naming_audit_url(tmp_path: Path) -> None:
    """Nothing listens on the port: a one-line error naming audit_url (the password
    hidden), at the store and at the CLI, not a traceback."""
    from tests.cli import run_cli
    from tests.servers import free_port

    url = f"postgresql+psycopg://ms:hunter2@127.0.0.1:{free_port()}/audit"
    with pytest.raises(ConfigError, match=r"^audit_url: cannot reach") as info:
        AuditStore(url)
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"audit_url: {url}\n")
    for args in (("keys", "list"), ("serve", "--port", str(free_port()))):
        run = run_cli(*args, "--config", str(cfg))
        assert run.returncode != 0 and "audit_url: cannot reach" in run.stderr, run
        assert len(run.stderr.strip().splitlines()) <= 2 and "Traceback" not in run.stderr
