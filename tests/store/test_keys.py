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
