"""Commits from an event loop (``AuditStore.commit_async``): the writer thread commits what
is queued, many callers to a transaction; each caller resumes only once its records are
committed, or raises what the database raised; the chain stays whole, whoever commits."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from modelshield.store import AuditRecord, AuditStore


def _record(i: int) -> AuditRecord:
    return AuditRecord(ts=1000.0 + i, key_id=f"k{i % 3}", client_ip="10.0.0.1", model="m",
                       rows=1, inputs=[[float(i)]], answer={"labels": [i % 2]}, decision={})


def _store(tmp_path: Path) -> AuditStore:
    return AuditStore(f"sqlite:///{tmp_path}/a.db", keys={"v1": "k" * 32})


def test_callers_queued_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    store = _store(tmp_path)

    async def main() -> None:
        await store.commit_async([_record(0)])
        assert (store.commits, store.committed) == (1, 1)
        with store._write_lock:  # a commit under way: forty callers queue behind it
            tasks = [asyncio.create_task(store.commit_async([_record(i)]))
                     for i in range(1, 41)]
            await asyncio.sleep(0.05)
            assert not any(t.done() for t in tasks)  # none resumed before its commit
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    asyncio.run(main())
    assert store.committed == 41 and store.commits == 2
    verdict = store.verify()
    assert verdict.ok and verdict.checked == 41
    store.close()


def test_threads_and_a_loop_extend_one_chain(tmp_path: Path) -> None:
    store = _store(tmp_path)
    threads = [threading.Thread(target=lambda i=i: [store.commit([_record(i * 100 + j)])
                                                    for j in range(30)]) for i in range(3)]

    async def main() -> None:
        for t in threads:
            t.start()
        await asyncio.gather(*(store.commit_async([_record(1000 + i)]) for i in range(90)))

    asyncio.run(main())
    for t in threads:
        t.join(10)
    assert store.count() == 180 and store.committed == 180
    assert store.verify().ok
    store.close()


def test_every_caller_of_a_failed_transaction_learns_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    write = store._write

    def broken(contents: list[dict[str, Any]]) -> None:
        raise OSError("disk full")

    async def main() -> list[BaseException | None]:
        with store._write_lock:
            tasks = [asyncio.create_task(store.commit_async([_record(i)])) for i in range(5)]
            await asyncio.sleep(0.05)
            monkeypatch.setattr(store, "_write", broken)
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, OSError) for r in results)
    assert store.count() == 0
    monkeypatch.setattr(store, "_write", write)  # the log recovers: the next commit lands
    asyncio.run(store.commit_async([_record(9)]))
    assert store.count() == 1 and store.verify().ok
    store.close()


def test_close_commits_what_is_queued_first(tmp_path: Path) -> None:
    store = _store(tmp_path)

    async def main() -> None:
        await store.commit_async([_record(0)])  # the writer runs
        with store._write_lock:
            task = asyncio.create_task(store.commit_async([_record(1)]))
            await asyncio.sleep(0.02)
            closer = threading.Thread(target=store.close)
            closer.start()
        await asyncio.wait_for(task, 10)
        closer.join(10)

    asyncio.run(main())
    assert store.committed == 2
    reopened = _store(tmp_path)
    assert reopened.count() == 2 and reopened.verify().ok
    reopened.close()


def test_a_closed_store_still_answers_every_caller(tmp_path: Path) -> None:
    store = _store(tmp_path)
    asyncio.run(store.commit_async([_record(0)]))
    store.close()

    async def main() -> None:  # each starts a writer that commits and ends
        for i in range(1, 4):
            await asyncio.wait_for(store.commit_async([_record(i)]), 10)
        await asyncio.wait_for(asyncio.gather(*(store.commit_async([_record(i)])
                                                for i in range(4, 10))), 10)

    asyncio.run(main())
    assert store.count() == 10 and store.verify().ok
    store.close()


def test_an_interrupted_write_is_not_reported_as_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelshield.store import sql

    store = _store(tmp_path)

    def interrupted(contents: list[dict[str, Any]]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_write", interrupted)

    async def main() -> BaseException | None:
        waiting = sql._Pending([_record(0).content()],
                               future=asyncio.get_running_loop().create_future())
        store._queue.append(waiting)
        with pytest.raises(KeyboardInterrupt), store._write_lock:  # a caller in commit()
            store._write_queued()
        try:
            await asyncio.wait_for(waiting.future, 5)  # type: ignore[arg-type]
        except RuntimeError as exc:
            return exc
        return None

    error = asyncio.run(main())
    assert isinstance(error, RuntimeError) and "interrupted" in str(error)
    assert store.count() == 0
    store.close()


def test_a_key_whose_record_cannot_be_written_is_not_created(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)

    def broken(contents: list[dict[str, Any]]) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store, "_write", broken)
    with pytest.raises(OSError):
        store.create_key("pro")
    assert store.list_keys() == [] and store.count(admin=True) == 0
    store.close()
