"""The audit log resists someone who can write its database but does not hold the key:
every edit, deletion, insertion, reordering and cut is found and named, including when the
tamperer recomputes every hash."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshield.cli import app
from modelshield.store import AuditRecord, AuditStore
from modelshield.store.chain import UNKEYED, seal, seal_head
from modelshield.store.sql import audit_table

KEYS = {"2026-11": "a-secret-kept-outside-the-database"}
N = 20


def records(start: int, n: int) -> list[AuditRecord]:
    return [AuditRecord(float(i), "k1", "10.0.0.1", "m", 1, [[i, i + 0.5]], {"labels": [i % 3]},
                        {"action": "allow"}) for i in range(start, start + n)]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[AuditStore, Path]]:
    path = tmp_path / "audit.db"
    store = AuditStore(f"sqlite:///{path}", keys=KEYS)
    store.append(records(0, N // 2))
    store.append(records(N // 2, N - N // 2))
    yield store, path
    store.close()


def tamper(path: Path, *statements: str | tuple[str, tuple[object, ...]]) -> None:
    with sqlite3.connect(path) as conn:
        for stmt in statements:
            if isinstance(stmt, tuple):
                conn.execute(*stmt)
            else:
                conn.execute(stmt)


def kinds(store: AuditStore) -> list[tuple[str, int, int]]:
    return [(b.kind, b.first, b.last) for b in store.verify().breaks]


def test_an_untouched_log_checks(db: tuple[AuditStore, Path]) -> None:
    store, _ = db
    verdict = store.verify()
    assert verdict.ok and verdict.checked == N and verdict.keyed
    assert verdict.versions == {"2026-11": N} and verdict.head_seq == N


def test_an_edit_is_named(db: tuple[AuditStore, Path]) -> None:
    store, path = db
    tamper(path, "UPDATE audit_log SET answer = '{\"labels\":[2]}' WHERE seq = 7")
    assert kinds(store) == [("edited", 7, 7)]


def test_an_edit_with_every_hash_recomputed_without_the_key_is_found(
        db: tuple[AuditStore, Path]) -> None:
    """The tamperer edits record 7 and reseals 7..N and the head with SHA-256 and with a
    guessed key: the seals do not check, so every resealed record is named."""
    store, path = db
    for guessed in ({"2026-11": b"guess"}, None):
        with sqlite3.connect(path) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("SELECT * FROM audit_log ORDER BY seq")]
            rows[6]["answer"] = '{"labels":[2]}'
            prev = rows[5]["hash"]
            for row in rows[6:]:
                content = {k: row[k] for k in ("key_id", "client_ip", "model", "rows",
                                               "input_hash", "inputs", "answer", "decision")}
                content["ts"] = repr(row["ts"])
                if guessed is None:  # plain SHA-256 under the record's own version label
                    import hashlib
                    body = json.dumps({**content, "seq": row["seq"],
                                       "key_version": row["key_version"]},
                                      sort_keys=True, separators=(",", ":"))
                    digest = hashlib.sha256((prev + body).encode()).hexdigest()
                else:
                    digest = seal(guessed, "2026-11", prev, row["seq"], content)
                conn.execute("UPDATE audit_log SET answer = ?, prev_hash = ?, hash = ? "
                             "WHERE seq = ?", (row["answer"], prev, digest, row["seq"]))
                prev = digest
            conn.execute("UPDATE audit_chain_head SET hash = ?", (prev,))
        found = kinds(store)
        assert found[0] == ("edited", 7, 7)
        assert [k for k, _, _ in found] == ["edited"] * (N - 6) + ["head-altered"]


def test_a_downgrade_to_unkeyed_seals_is_found(db: tuple[AuditStore, Path]) -> None:
    """Relabel every record and the head as unkeyed and reseal all of it with SHA-256:
    consistent as a plain chain, but the owner holds keys, so it is a downgrade."""
    store, path = db
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM audit_log ORDER BY seq")]
        rows[3]["answer"] = '{"labels":[2]}'
        log, since = conn.execute("SELECT log_id, log_since FROM audit_chain_head").fetchone()
        prev = "0" * 64
        for row in rows:
            content = {k: row[k] for k in ("key_id", "client_ip", "model", "rows", "input_hash",
                                           "inputs", "answer", "decision")}
            content["ts"] = repr(row["ts"])
            digest = seal({}, UNKEYED, prev, row["seq"], content, log)
            conn.execute("UPDATE audit_log SET answer = ?, prev_hash = ?, hash = ?, "
                         "key_version = ? WHERE seq = ?",
                         (row["answer"], prev, digest, UNKEYED, row["seq"]))
            prev = digest
        conn.execute("UPDATE audit_chain_head SET hash = ?, key_version = ?, mac = ?",
                     (prev, UNKEYED, seal_head({}, UNKEYED, N, prev, log, since)))
    found = kinds(store)
    assert ("head-unkeyed", -1, -1) in found
    # A log sealed without a key throughout, checked by an owner who holds none, is whole:
    # that is what the startup warning and `verify`'s warning are for.
    bare = AuditStore(f"sqlite:///{path}")
    assert bare.verify().ok and not bare.verify().keyed
    bare.close()


def test_a_deletion_in_the_middle_is_named(db: tuple[AuditStore, Path]) -> None:
    store, path = db
    tamper(path, "DELETE FROM audit_log WHERE seq IN (8, 9)")
    assert kinds(store) == [("removed", 8, 9)]


def test_a_deletion_closed_up_by_renumbering_is_named(db: tuple[AuditStore, Path]) -> None:
    store, path = db
    tamper(path, "DELETE FROM audit_log WHERE seq = 8",
           "UPDATE audit_log SET seq = seq - 1 WHERE seq > 8",
           f"UPDATE audit_chain_head SET seq = {N - 1}")
    found = kinds(store)
    assert found[0] == ("moved", 8, N - 1)  # each record sealed one position later
    assert ("head-altered", -1, -1) in found


def test_an_insertion_is_named(db: tuple[AuditStore, Path]) -> None:
    store, path = db
    tamper(path, "UPDATE audit_log SET seq = seq + 1000 WHERE seq > 5",
           "UPDATE audit_log SET seq = seq - 999 WHERE seq > 1000",
           ("INSERT INTO audit_log (seq, ts, key_id, client_ip, model, rows, input_hash, inputs, "
            "answer, decision, prev_hash, hash, key_version) "
            "SELECT 6, ts, key_id, client_ip, model, rows, input_hash, inputs, answer, decision, "
            "prev_hash, hash, key_version FROM audit_log WHERE seq = 5", ()))
    found = kinds(store)
    # The copy of record 5 at 6, and every record after it, was sealed one position earlier.
    assert found[0] == ("moved", 6, N + 1)
    assert ("added-after-head", N + 1, N + 1) in found


def test_an_insertion_at_the_end_is_named(db: tuple[AuditStore, Path]) -> None:
    store, path = db
    tamper(path, "INSERT INTO audit_log (seq, ts, key_id, client_ip, model, rows, input_hash, "
           "inputs, answer, decision, prev_hash, hash, key_version) SELECT seq + 1, ts, key_id, "
           f"client_ip, model, rows, input_hash, inputs, answer, decision, hash, hash, "
           f"key_version FROM audit_log WHERE seq = {N}")
    assert kinds(store) == [("edited", N + 1, N + 1), ("added-after-head", N + 1, N + 1)]


def test_a_reordering_is_named(db: tuple[AuditStore, Path]) -> None:
    store, path = db
    tamper(path, "UPDATE audit_log SET seq = -4 WHERE seq = 4",
           "UPDATE audit_log SET seq = 4 WHERE seq = 5",
           "UPDATE audit_log SET seq = 5 WHERE seq = -4")
    assert kinds(store) == [("moved", 4, 4), ("moved", 5, 5)]
    details = [b.detail for b in store.verify().breaks]
    assert "later" in details[0] and "earlier" in details[1]


def test_a_cut_at_the_end_is_named(db: tuple[AuditStore, Path]) -> None:
    store, path = db
    tamper(path, f"DELETE FROM audit_log WHERE seq > {N - 5}")
    assert kinds(store) == [("removed-at-end", N - 4, N)]
    assert "records removed at the end" in store.verify().breaks[0].detail


def test_a_cut_at_the_end_with_the_head_moved_is_named(db: tuple[AuditStore, Path]) -> None:
    """The old unkeyed chain passed this: delete the tail and point the head at the new
    last record."""
    store, path = db
    with sqlite3.connect(path) as conn:
        last = conn.execute(f"SELECT hash FROM audit_log WHERE seq = {N - 5}").fetchone()[0]
        conn.execute(f"DELETE FROM audit_log WHERE seq > {N - 5}")
        conn.execute("UPDATE audit_chain_head SET seq = ?, hash = ?", (N - 5, last))
    assert kinds(store) == [("head-altered", -1, -1)]


def test_a_rollback_to_an_old_head_is_caught_by_an_anchor(db: tuple[AuditStore, Path]) -> None:
    """Without the key the tamperer can still restore a head saved earlier; an anchor
    copied out of the database's reach catches it."""
    store, path = db
    with sqlite3.connect(path) as conn:
        old_head = conn.execute("SELECT hash, seq, key_version, mac FROM audit_chain_head"
                                ).fetchone()
    store.append(records(N, 5))
    anchor = store.head()
    assert anchor["seq"] == N + 5 and store.verify(anchor=anchor).ok
    tamper(path, f"DELETE FROM audit_log WHERE seq > {N}",
           ("UPDATE audit_chain_head SET hash = ?, seq = ?, key_version = ?, mac = ?", old_head))
    assert store.verify().ok  # indistinguishable from the log of earlier, without the anchor
    assert kinds_with_anchor(store, anchor) == [("anchor-missing", N + 5, N + 5)]


def kinds_with_anchor(store: AuditStore, anchor: dict[str, object]) -> list[tuple[str, int, int]]:
    return [(b.kind, b.first, b.last) for b in store.verify(anchor=anchor).breaks]


def test_keys_rotate_and_old_records_still_check(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    first = AuditStore(url, keys=KEYS)
    first.append(records(0, 5))
    first.close()
    both = {**KEYS, "2027-01": "the-next-secret-kept-outside"}
    second = AuditStore(url, keys=both)
    assert second.key_version == "2027-01"
    second.append(records(5, 5))
    verdict = second.verify()
    assert verdict.ok and verdict.versions == {"2026-11": 5, "2027-01": 5}
    second.close()
    forgot = AuditStore(url, keys={"2027-01": both["2027-01"]})
    found = [(b.kind, b.first) for b in forgot.verify().breaks]
    assert found == [("unknown-key", s) for s in range(1, 6)]
    forgot.close()


def test_a_database_of_an_older_release_is_upgraded_and_checks(tmp_path: Path) -> None:
    """Records written before keys existed keep checking the old way; new ones are keyed."""
    import hashlib

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE audit_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts FLOAT "
                     "NOT NULL, key_id VARCHAR(32), client_ip VARCHAR(64) NOT NULL, model "
                     "VARCHAR(128) NOT NULL, rows INTEGER NOT NULL, input_hash VARCHAR(64) NOT "
                     "NULL, inputs TEXT NOT NULL, answer TEXT NOT NULL, decision TEXT NOT NULL, "
                     "prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL)")
        conn.execute("CREATE TABLE audit_chain_head (id INTEGER PRIMARY KEY, hash VARCHAR(64) "
                     "NOT NULL, seq BIGINT NOT NULL)")
        prev = "0" * 64
        for rec in records(0, 3):
            content = rec.content()
            body = json.dumps(content, sort_keys=True, separators=(",", ":"))
            digest = hashlib.sha256((prev + body).encode()).hexdigest()
            conn.execute("INSERT INTO audit_log (ts, key_id, client_ip, model, rows, input_hash, "
                         "inputs, answer, decision, prev_hash, hash) VALUES "
                         "(?,?,?,?,?,?,?,?,?,?,?)",
                         (rec.ts, *(content[c] for c in ("key_id", "client_ip", "model", "rows",
                                                         "input_hash", "inputs", "answer",
                                                         "decision")), prev, digest))
            prev = digest
        conn.execute("INSERT INTO audit_chain_head VALUES (1, ?, 3)", (prev,))
    store = AuditStore(f"sqlite:///{path}", keys=KEYS)
    assert kinds(store) == [("head-unkeyed", -1, -1)]  # until the first keyed write
    store.append(records(3, 2))
    verdict = store.verify()
    assert verdict.ok and verdict.versions == {"": 3, "2026-11": 2} and not verdict.keyed
    tamper(path, "UPDATE audit_log SET answer = '{}' WHERE seq = 2")
    assert kinds(store)[0] == ("edited", 2, 2)
    store.close()


def test_the_cli_names_the_break_and_checks_an_anchor(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"audit_url: sqlite:///{tmp_path / 'audit.db'}\n"
                   f"audit_keys: {json.dumps(KEYS)}\n")
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", keys=KEYS)
    store.append(records(0, 10))
    store.close()
    runner = CliRunner()
    ok = runner.invoke(app, ["audit-log", "verify", "--config", str(cfg)])
    assert ok.exit_code == 0 and "chain intact" in ok.output and "10 with 2026-11" in ok.output
    head = runner.invoke(app, ["audit-log", "head", "--config", str(cfg)])
    anchor = tmp_path / "head.json"
    anchor.write_text(head.stdout)
    assert json.loads(head.stdout)["seq"] == 10
    tamper(tmp_path / "audit.db", "DELETE FROM audit_log WHERE seq > 7")
    bad = runner.invoke(app, ["audit-log", "verify", "--config", str(cfg), "--anchor",
                              str(anchor)])
    assert bad.exit_code == 1
    assert "removed-at-end" in bad.output and "anchor-missing" in bad.output
    anchor.write_text("{}")
    nonsense = runner.invoke(app, ["audit-log", "verify", "--config", str(cfg), "--anchor",
                                   str(anchor)])
    assert nonsense.exit_code != 0 and "not a head written by" in str(nonsense.exception)


def test_config_validates_audit_keys() -> None:
    from modelshield.defenses.config import load_config
    from modelshield.errors import ConfigError

    with pytest.raises(ConfigError, match=r"audit_keys: .*at least 16"):
        load_config({"audit_keys": {"v1": "short"}})
    with pytest.raises(ConfigError, match=r"audit_key_version: .*'v2' is not a version"):
        load_config({"audit_keys": {"v1": "x" * 16}, "audit_key_version": "v2"})
    with pytest.raises(ConfigError, match="audit_keys: key version 'sha256'"):
        load_config({"audit_keys": {"sha256": "x" * 16}})


def test_the_column_list_matches_the_table() -> None:
    assert {"key_version", "seq", "hash", "prev_hash"} <= set(audit_table.c.keys())


def test_an_audit_log_in_a_missing_folder_is_named(tmp_path: Path) -> None:
    from modelshield.errors import ConfigError

    with pytest.raises(ConfigError, match=r"audit_url: the folder .* does not exist"):
        AuditStore(f"sqlite:///{tmp_path}/nowhere/audit.db")


def _rows(path: Path) -> list[dict[str, object]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM audit_log ORDER BY seq")]


def test_a_record_spliced_in_from_another_log_under_the_same_key_is_named(
        db: tuple[AuditStore, Path], tmp_path: Path) -> None:
    """Another log sealed with the same audit key: its record 7 put in place of this log's
    record 7 has a seal that checks at position 7, but it belongs to another chain."""
    store, path = db
    other_path = tmp_path / "other.db"
    other = AuditStore(f"sqlite:///{other_path}", keys=KEYS)
    other.append(records(100, N))
    other.close()
    spliced = _rows(other_path)[6]
    columns = [c for c in spliced if c != "seq"]
    tamper(path, "DELETE FROM audit_log WHERE seq = 7",
           (f"INSERT INTO audit_log (seq, {', '.join(columns)}) VALUES "
            f"(7, {', '.join('?' * len(columns))})", tuple(spliced[c] for c in columns)))
    assert kinds(store) == [("edited", 7, 7)]
    assert "another log" in store.verify().breaks[0].detail


def test_each_log_has_its_own_id_in_its_head(tmp_path: Path) -> None:
    a = AuditStore(f"sqlite:///{tmp_path / 'a.db'}", keys=KEYS)
    b = AuditStore(f"sqlite:///{tmp_path / 'b.db'}", keys=KEYS)
    assert a.head()["log_id"] and a.head()["log_id"] != b.head()["log_id"]
    a.close()
    b.close()


def test_a_whole_log_swapped_for_another_is_caught_by_the_anchor(
        db: tuple[AuditStore, Path], tmp_path: Path) -> None:
    store, path = db
    anchor = store.head()
    other_path = tmp_path / "other.db"
    other = AuditStore(f"sqlite:///{other_path}", keys=KEYS)
    other.append(records(100, N + 3))
    other.close()
    path.unlink()
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    other_path.rename(path)
    store.close()
    swapped = AuditStore(f"sqlite:///{path}", keys=KEYS)
    assert swapped.verify().ok  # a whole log, well sealed
    breaks = swapped.verify(anchor=anchor).breaks
    assert [b.kind for b in breaks] == ["anchor-missing"] and "another log" in breaks[0].detail
    swapped.close()


def test_verify_checks_the_configured_anchor_by_default(tmp_path: Path) -> None:
    """A cut back to an earlier genuine head passes a check without an anchor; with
    audit_anchor set, `head` saves it there and a plain `verify` checks it."""
    db_path, saved = tmp_path / "audit.db", tmp_path / "anchor.json"
    cfg = tmp_path / "gw.yaml"
    base = f"audit_url: sqlite:///{db_path}\naudit_keys: {json.dumps(KEYS)}\n"
    cfg.write_text(base + f"audit_anchor: {saved}\n")
    store = AuditStore(f"sqlite:///{db_path}", keys=KEYS)
    store.append(records(0, 10))
    with sqlite3.connect(db_path) as conn:
        old_head = conn.execute("SELECT hash, seq, key_version, mac FROM audit_chain_head"
                                ).fetchone()
    store.append(records(10, 5))
    store.close()
    runner = CliRunner()
    head = runner.invoke(app, ["audit-log", "head", "--config", str(cfg)])
    assert head.exit_code == 0 and json.loads(saved.read_text())["seq"] == 15
    tamper(db_path, "DELETE FROM audit_log WHERE seq > 10",
           ("UPDATE audit_chain_head SET hash = ?, seq = ?, key_version = ?, mac = ?", old_head))
    bad = runner.invoke(app, ["audit-log", "verify", "--config", str(cfg)])
    assert bad.exit_code == 1 and "anchor-missing" in bad.output
    # `head` will not overwrite an anchor the log no longer holds.
    again = runner.invoke(app, ["audit-log", "head", "--config", str(cfg)])
    assert again.exit_code != 0 and json.loads(saved.read_text())["seq"] == 15
    bare = tmp_path / "bare.yaml"
    bare.write_text(base)
    unanchored = runner.invoke(app, ["audit-log", "verify", "--config", str(bare)])
    assert unanchored.exit_code == 0 and "no anchor" in unanchored.output


def test_a_postgresql_log_has_its_id_links_and_admin_actions(tmp_path: Path) -> None:
    from tests.servers import postgres_server

    with postgres_server() as url:
        store = AuditStore(url, keys=KEYS)
        _, key = store.create_key("pro")
        store.append(records(0, 5))
        assert store.revoke(key.key_id)
        head = store.head()
        assert head["log_id"] and head["log_since"] == 1 and head["seq"] == 7  # the key's
        verdict = store.verify(anchor=head)  # creation, five records, its revocation
        assert verdict.ok and verdict.checked == 7
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE audit_log SET prev_hash = hash WHERE seq = 3")
        assert [b.kind for b in store.verify().breaks] == ["edited"]
        store.close()
