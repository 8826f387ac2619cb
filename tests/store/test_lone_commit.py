"""A request's commit yields the interpreter once (so that requests about to commit join
its transaction) only while another request is in the Shield's stages: a lone request
pays no yield, a system call that costs CPU. Callers of ``commit`` outside a Shield always
yield, as before."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import modelshield.store.sql as sql
from modelshield.serve.factory import build_shield
from modelshield.store.sql import AuditRecord, AuditStore
from modelshield.victims import Victim


@pytest.fixture
def yields(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sleeps made on the test's own thread (the patch is process-wide: a thread left
    running by an earlier test in the same worker may sleep too, and is not counted)."""
    calls: list[float] = []
    real = time.sleep
    mine = threading.get_ident()

    def counted(seconds: float) -> None:
        if threading.get_ident() == mine:
            calls.append(seconds)
        real(seconds)

    monkeypatch.setattr(sql.time, "sleep", counted)
    return calls


def test_a_lone_request_does_not_yield(tmp_path: Path, victims: dict[str, Victim],
                                       yields: list[float]) -> None:
    shield = build_shield({"audit_url": f"sqlite:///{tmp_path}/a.db", "tiers": {"t": {}}})
    key = shield.store.create_key("t")[0]
    yields.clear()  # the key's sealed record: a commit outside a Shield, which yields
    x = victims["digits-mlp"].X_test
    for i in range(3):
        shield.handle(key, x[i:i + 1])
    assert yields == []
    with shield.store.in_flight():  # another request is in its stages
        shield.handle(key, x[3:4])
    assert yields == [0]
    assert shield.store.verify().ok and shield.store.count() == 4
    shield.close()


def test_a_commit_outside_a_shield_yields(tmp_path: Path, yields: list[float]) -> None:
    store = AuditStore(f"sqlite:///{tmp_path}/a.db")
    store.commit([AuditRecord(ts=1.0, key_id="k", client_ip="1.2.3.4", model="m", rows=1,
                              inputs=np.zeros((1, 2)), answer={}, decision={})])
    assert yields == [0]
