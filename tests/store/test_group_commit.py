"""Group commit: records queued while a commit is under way share the next transaction; the
log counts its commits and records (and ``/metrics`` shows them); the chain stays whole."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from modelshield.store import AuditRecord, AuditStore
from modelshield.victims import Victim
from tests.servers import live_app


def _record(i: int) -> AuditRecord:
    return AuditRecord(ts=1000.0 + i, key_id=f"k{i % 3}", client_ip="10.0.0.1", model="m",
                       rows=1, inputs=[[float(i)]], answer={"labels": [i % 2]}, decision={})


def test_records_queued_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    store = AuditStore(f"sqlite:///{tmp_path}/a.db", keys={"v1": "k" * 32})
    store.commit([_record(0)])
    assert (store.commits, store.committed) == (1, 1)
    done: list[int] = []
    # A commit under way (the write lock held): twenty callers queue their records.
    with store._write_lock:
        threads = [threading.Thread(target=lambda i=i: (store.commit([_record(i)]),
                                                        done.append(i)))
                   for i in range(1, 21)]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        while len(store._queue) < 20 and time.time() < deadline:
            time.sleep(0.005)
        assert len(store._queue) == 20 and not done  # none acknowledged before its commit
    for t in threads:
        t.join(10)
    # Every caller returned with its record committed; one transaction held all twenty.
    assert sorted(done) == list(range(1, 21))
    assert (store.commits, store.committed) == (2, 21)
    assert store.count() == 21
    verdict = store.verify()
    assert verdict.ok and verdict.checked == 21
    store.close()


def test_metrics_show_commits_and_records_under_concurrent_load(
        tmp_path: Path, victims: dict[str, Victim]) -> None:
    shield = build_shield({"model": {"builtin": "digits-mlp"},
                           "audit_url": f"sqlite:///{tmp_path / 'a.db'}",
                           "tiers": {"t": {"limits": {"requests": "1000/minute"}}}})
    keys = [shield.store.create_key("t")[0] for _ in range(8)]
    x = victims["digits-mlp"].X_test
    with live_app(create_app(shield)) as client:

        def send(i: int) -> int:
            r = client.post("/v1/models/digits-mlp/predict",
                            json={"inputs": x[i:i + 1].tolist()},
                            headers={"Authorization": f"Bearer {keys[i % 8]}"})
            return r.status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(send, range(120))) == {200}
        text = client.get("/metrics").text
    found = {name: float(v) for name, v in re.findall(
        r'^modelshield_audit_(commits|records)_total\{pid="\d+"\} (\S+)$', text, re.M)}
    # 120 answers, and the 8 keys' sealed creations
    assert found == {"commits": shield.store.commits, "records": 128.0}
    assert 1 <= found["commits"] <= 128
    assert shield.store.verify().ok
    shield.close()


def test_concurrent_callers_share_commits(tmp_path: Path) -> None:
    """Eight request threads, each working a little between its commits (as a request
    computes its answer): their records share commits, well under one per record."""
    store = AuditStore(f"sqlite:///{tmp_path}/a.db", keys={"v1": "k" * 32})

    def work(t: int) -> None:
        for i in range(60):
            start = time.thread_time()
            while time.thread_time() - start < 0.0003:  # the request's own work
                pass
            store.commit([_record(100 * t + i)])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert store.committed == 480 and store.count() == 480
    assert store.commits / store.committed < 0.4
    assert store.verify().ok
    store.close()


class _SlowReplies:
    """A loopback TCP proxy that delivers each chunk the server sends ``delay`` seconds
    after it arrived (chunks are not delayed one behind another): a commit's wall time is
    then at least its round trips times ``delay``."""

    def __init__(self, port: int, delay: float) -> None:
        self.port, self.delay = port, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url_port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        for conn in (self.listener, *self.conns):
            conn.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.port))
            self.conns += [client, server]
            for conn in (client, server):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.delay),
                             daemon=True).start()

    @staticmethod
    def _pump(src: Any, dst: Any, delay: float) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                arrived = time.monotonic()
                time.sleep(max(0.0, arrived + delay - time.monotonic()))
                dst.sendall(data)


def test_a_postgresql_commit_takes_two_round_trips() -> None:
    """On PostgreSQL a commit reads the chain head (BEGIN and SELECT ... FOR UPDATE in one
    exchange), then sends the records, the new head and COMMIT in a second one (psycopg's
    pipeline), instead of one exchange per statement."""
    from tests.servers import postgres_server

    delay = 0.05
    with postgres_server() as url:
        port = sa.engine.make_url(url).port
        proxy = _SlowReplies(port, delay)
        slow = url.replace(f":{port}/", f":{proxy.url_port}/")
        store = AuditStore(slow)
        store.commit([_record(0)])  # connected, tables made
        took = []
        for i in range(3):
            start = time.perf_counter()
            store.commit([_record(i + 1)])
            took.append(time.perf_counter() - start)
        assert 2 * delay <= min(took) < 3 * delay, took
        assert store.verify().ok
        store.close()
        proxy.close()
