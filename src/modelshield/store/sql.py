"""The gateway's durable state: API keys, flags and the hash-chained audit log, in one SQL
database.

SQLite (WAL mode) by default, PostgreSQL by URL (``postgresql+psycopg://...``), both through
SQLAlchemy Core. Every audit record is sealed with an HMAC over its position, its content
and the record before it, under a key kept outside the database (:mod:`modelshield.store.chain`),
so editing, inserting, deleting, reordering or cutting off records breaks the chain and
:meth:`AuditStore.verify` names each break. Appends are serialised (SQLite: ``BEGIN
IMMEDIATE``; PostgreSQL: a row lock on the chain head) so concurrent writers still make one
chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from modelshield.errors import ConfigError
from modelshield.store import chain
from modelshield.store.chain import GENESIS, UNKEYED, Verdict, canonical_json, seal, seal_head

log = logging.getLogger("modelshield.store")
KEY_CACHE_ENTRIES = 10_000
# The model column of an operator's action (a flag set or lifted, a key revoked): such a
# record is sealed in the chain like a request's, and is not a request.
ADMIN_MODEL = "(admin)"
metadata = sa.MetaData()

keys_table = sa.Table(
    "api_keys", metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("tier", sa.String(64), nullable=False),
    sa.Column("owner", sa.String(256), nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("terms_version", sa.String(64), nullable=False),
    sa.Column("terms_accepted_at", sa.Float, nullable=False),
)

audit_table = sa.Table(
    "audit_log", metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("client_ip", sa.String(64), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("input_hash", sa.String(64), nullable=False),
    sa.Column("inputs", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("decision", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # The audit key version the record was sealed with ("sha256": no key; null: a record
    # of an older modelshield, chained without its position).
    sa.Column("key_version", sa.String(32), nullable=True),
)

flags_table = sa.Table(
    "flags", metadata,
    # The account or group flagged: a key id, "ip:203.0.113" or "owner:acme".
    sa.Column("ident", sa.String(300), primary_key=True),
    sa.Column("detector", sa.String(64), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
)

chain_head = sa.Table(
    "audit_chain_head", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("key_version", sa.String(32), nullable=True),
    sa.Column("mac", sa.String(64), nullable=True),  # the head's own seal
    # The log's own id, sealed into each record from position log_since on (a log made by
    # an older release gets one at its next write).
    sa.Column("log_id", sa.String(32), nullable=True),
    sa.Column("log_since", sa.BigInteger, nullable=True),
)
# Columns added since the first release (and their SQL types), added to an existing
# database on start.
_NEW_COLUMNS = {"audit_log": {"key_version": "VARCHAR(32)"},
                "audit_chain_head": {"key_version": "VARCHAR(32)", "mac": "VARCHAR(64)",
                                     "log_id": "VARCHAR(32)", "log_since": "BIGINT"}}


@dataclass(frozen=True)
class ApiKey:
    """A key's record (never the key itself: only its hash is stored)."""

    key_id: str
    tier: str
    owner: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    terms_version: str
    terms_accepted_at: float
    flag: dict[str, Any] | None = None  # the durable flag on this key, if any

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


_RECORD_COLUMNS = ("ts", "key_id", "client_ip", "model", "rows", "input_hash", "inputs",
                   "answer", "decision")


@dataclass
class _Pending:
    """One caller's records in the group-commit queue; ``future``: an event loop's caller
    waits on it (:meth:`AuditStore.commit_async`)."""

    contents: list[dict[str, Any]]
    done: bool = False
    error: Exception | None = None
    future: asyncio.Future[None] | None = None


class _InFlight:
    """One request in a Shield's stages, while the block runs."""

    def __init__(self, flight: list[None]) -> None:
        self.flight = flight

    def __enter__(self) -> None:
        self.flight.append(None)

    def __exit__(self, *exc: object) -> None:
        self.flight.pop()


@dataclass(frozen=True)
class AuditRecord:
    """One answered request as it is written to the log."""

    ts: float
    key_id: str | None
    client_ip: str
    model: str
    rows: int
    inputs: Any
    answer: Any
    decision: Any

    def content(self) -> dict[str, Any]:
        inputs = canonical_json(self.inputs)
        return {"ts": repr(self.ts), "key_id": self.key_id, "client_ip": self.client_ip,
                "model": self.model, "rows": self.rows,
                "input_hash": hashlib.sha256(inputs.encode()).hexdigest(), "inputs": inputs,
                "answer": canonical_json(self.answer), "decision": canonical_json(self.decision)}


def make_engine(url: str, sync: str = "normal") -> Engine:
    """An engine for ``sqlite:///path`` (WAL mode) or ``postgresql+psycopg://...``.

    sync: SQLite's ``synchronous`` setting. "normal" (WAL): a commit survives the process
    being killed (the OS holds the WAL), but the last commits can be lost if the machine
    itself crashes; "full": fsync on every commit, survives that too, at a cost per commit.
    """
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:" and not Path(path).parent.is_dir():
            raise ConfigError(f"audit_url: the folder of {url!r} does not exist "
                              f"({str(Path(path).parent)!r}); create it or name another.")
        engine = sa.create_engine(url, connect_args={"check_same_thread": False,
                                                     "isolation_level": None})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _: Any) -> None:  # WAL: readers never block the writer
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:  # take the write lock at the start of a transaction
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):
        return sa.create_engine(url, pool_pre_ping=True)
    raise ConfigError.invalid("audit.url", "a sqlite:/// or postgresql+psycopg:// URL", url)


class AuditStore:
    """API keys and the audit log over one SQL database."""

    def __init__(self, url: str, clock: Any = time.time, sync: str = "normal",
                 key_cache_seconds: float = 1.0, keys: Mapping[str, str] | None = None,
                 key_version: str | None = None) -> None:
        """keys: the audit keys by version (kept outside the database); new records are
        sealed with ``key_version`` (default: the last one listed). Without keys the chain
        is plain SHA-256, which shows accidents but not tampering."""
        self.url = url
        self.keys = {v: k.encode() for v, k in (keys or {}).items()}
        if key_version is not None and key_version not in self.keys:
            raise ConfigError.invalid("audit_key_version", "a version listed in audit_keys",
                                      key_version)
        self.key_version = key_version or (list(self.keys)[-1] if self.keys else UNKEYED)
        self.engine = make_engine(url, sync)
        self.key_cache_seconds = key_cache_seconds
        # By the secret's digest, never the secret: an invalid 15 KB key costs 64 bytes here,
        # and the cache holds at most KEY_CACHE_ENTRIES (least recently used first out).
        self._key_cache: OrderedDict[str, tuple[float, ApiKey | None]] = OrderedDict()
        self._key_cache_lock = threading.Lock()
        self._flags_cache: tuple[float, dict[str, dict[str, Any]]] | None = None
        self.clock = clock
        self._queue_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue: list[_Pending] = []
        # Requests in a Shield's stages (None: no Shield counts them, so commits always
        # yield); list append and pop are atomic, a counter's += is not.
        self._flight: list[None] | None = None
        # Group commit's effect: transactions the log committed, and the records in them
        # (``/metrics``: commits per answer under load fall well below one).
        self.commits = 0
        self.committed = 0
        self._raw: Any = None  # the writer's own DBAPI connection, opened on first write
        self.checkpoint_seconds = 1.0
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        self._writer: threading.Thread | None = None  # commits for event loops' callers
        self._wake = threading.Event()
        self._create_schema()

    def _create_schema(self) -> None:
        """Create the tables and the chain head; several workers may race to do it."""
        for attempt in range(3):
            try:
                metadata.create_all(self.engine)
                self._add_new_columns()
                with self.engine.begin() as conn:
                    if conn.execute(sa.select(chain_head.c.id)).first() is None:
                        log = new_log_id()
                        conn.execute(chain_head.insert().values(
                            id=1, hash=GENESIS, seq=0, key_version=self.key_version,
                            log_id=log, log_since=1,
                            mac=seal_head(self.keys, self.key_version, 0, GENESIS, log, 1)))
                return
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError) as exc:
                if attempt == 2 or _unreachable(exc):
                    raise _named(self.url, exc) from None
                time.sleep(0.2)  # another process created it first; check again

    def _add_new_columns(self) -> None:
        """A database made by an older modelshield gets the columns added since."""
        inspector = sa.inspect(self.engine)
        for table, columns in _NEW_COLUMNS.items():
            have = {c["name"] for c in inspector.get_columns(table)}
            for name, sql_type in columns.items():
                if name not in have:
                    with self.engine.begin() as conn:
                        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} "
                                             f"{sql_type}")

    # -- keys ----------------------------------------------------------------------------
    def create_key(self, tier: str, owner: str = "", terms_version: str = "1",
                   ttl_seconds: float | None = None, key_id: str | None = None
                   ) -> tuple[str, ApiKey]:
        """A new key (shown once) and its record; its holder accepts ``terms_version``.

        key_id: the key's public id (12 lowercase hex digits), random by default. An audit
        or a bench names it so that what is keyed per account (the serve-time watermark,
        keyed noise) repeats from run to run; the secret stays random.
        """
        if key_id is None:
            key_id = secrets.token_hex(6)
        elif not (isinstance(key_id, str) and len(key_id) == 12
                  and all(c in "0123456789abcdef" for c in key_id)):
            raise ConfigError.invalid("key_id", "12 lowercase hex digits", key_id)
        secret = f"ms_{key_id}_{secrets.token_urlsafe(24)}"
        now = self.clock()
        row = {"key_id": key_id, "key_hash": _hash_key(secret), "tier": tier, "owner": owner,
               "created_at": now, "expires_at": None if ttl_seconds is None else now + ttl_seconds,
               "revoked_at": None, "terms_version": terms_version, "terms_accepted_at": now}
        try:
            with self.engine.begin() as conn:
                conn.execute(keys_table.insert().values(**row))
        except sa.exc.IntegrityError:
            raise ConfigError(f"key_id {key_id!r} is taken: every key needs its own") from None
        try:  # sealed in the log, as its revocation is: no key appears unrecorded
            self.record_admin("create_key", key_id, tier=tier, owner=owner,
                              terms_version=terms_version, expires_at=row["expires_at"])
        except Exception:
            try:
                with self.engine.begin() as conn:
                    conn.execute(keys_table.delete().where(keys_table.c.key_id == key_id))
            except Exception:  # the database is gone: say so, and raise the first error
                log.exception("key %s was created but its record was not written, and it "
                              "could not be removed: revoke it", key_id)
            raise
        return secret, _key(row)

    def lookup(self, secret: str) -> ApiKey | None:
        """The key's record (with its durable flag); cached for ``key_cache_seconds`` (a
        revocation or a flag takes effect on every replica within that time)."""
        now = time.monotonic()
        digest = _hash_key(secret)
        with self._key_cache_lock:
            hit = self._key_cache.get(digest)
            if hit is not None and now - hit[0] < self.key_cache_seconds:
                self._key_cache.move_to_end(digest)
                return hit[1]
        key = self._lookup(digest)
        with self._key_cache_lock:
            self._key_cache[digest] = (now, key)
            self._key_cache.move_to_end(digest)
            while len(self._key_cache) > KEY_CACHE_ENTRIES:
                self._key_cache.popitem(last=False)
        return key

    def cached(self, secret: str) -> ApiKey | None:
        """The key's record if it is in the cache and fresh, without touching the database
        (None: not cached, or cached as invalid; ``lookup`` tells which)."""
        with self._key_cache_lock:
            hit = self._key_cache.get(_hash_key(secret))
        if hit is None or time.monotonic() - hit[0] >= self.key_cache_seconds:
            return None
        return hit[1]

    def _lookup(self, digest: str) -> ApiKey | None:
        with self.engine.connect() as conn:
            row = conn.execute(_keys_with_flags().where(
                keys_table.c.key_hash == digest)).mappings().first()
        return None if row is None else _key(dict(row))

    def list_keys(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(_keys_with_flags().order_by(keys_table.c.created_at))
            return [_key(dict(r)) for r in rows.mappings()]

    # -- flags ----------------------------------------------------------------------------
    def record_flag(self, ident: str, detector: str, score: float, reason: str) -> None:
        """Keep the first flag of an account or group (sealed in the log too); later ones
        leave it as it is."""
        row = {"ident": ident, "detector": detector, "score": float(score), "reason": reason,
               "ts": self.clock()}
        added = False
        with contextlib.suppress(sa.exc.IntegrityError), self.engine.begin() as conn:
            if conn.execute(sa.select(flags_table.c.ident).where(
                    flags_table.c.ident == ident)).first() is None:
                conn.execute(flags_table.insert().values(**row))
                added = True
        self._forget()
        if added:
            try:
                self.record_admin("flag", ident, detector=detector, score=float(score),
                                  reason=reason)
            except Exception:  # the flag holds; the request that raised it is logged too
                log.warning("flag of %s not sealed in the audit log", ident, exc_info=True)

    def flags(self) -> list[dict[str, Any]]:
        """Every flag, oldest first."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(flags_table).order_by(flags_table.c.ts)).mappings()]

    def flag(self, ident: str) -> dict[str, Any] | None:
        """The durable flag on an account or group, from every flag read at most
        ``key_cache_seconds`` ago (a flag kept where a state store that lost it cannot)."""
        now = time.monotonic()
        cached = self._flags_cache
        if cached is None or now - cached[0] >= self.key_cache_seconds:
            try:
                cached = (now, {f["ident"]: f for f in self.flags()})
            except sa.exc.SQLAlchemyError:  # unreachable: what was read last, if anything
                return None if cached is None else cached[1].get(ident)
            self._flags_cache = cached
        return cached[1].get(ident)

    def client_ips(self, key_id: str) -> list[str]:
        """Every address a key's requests came from, as the log has them."""
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(audit_table.c.client_ip).where(
                audit_table.c.key_id == key_id).distinct())]

    def clear_flag(self, ident: str) -> bool:
        """Lift the flag on an account or group (a suspension ends; sealed in the log)."""
        with self.engine.begin() as conn:
            done = conn.execute(flags_table.delete().where(flags_table.c.ident == ident))
        self._forget()
        if done.rowcount:
            self.record_admin("reinstate", ident)
        return bool(done.rowcount)

    def revoke(self, key_id: str) -> bool:
        """Revoke a key at once (sealed in the log); False: no active key of that id."""
        with self.engine.begin() as conn:
            done = conn.execute(keys_table.update().where(
                (keys_table.c.key_id == key_id) & keys_table.c.revoked_at.is_(None)
            ).values(revoked_at=self.clock()))
        self._forget()
        if done.rowcount:
            self.record_admin("revoke", key_id)
        return bool(done.rowcount)

    def record_admin(self, op: str, target: str, **detail: Any) -> None:
        """Seal an operator's action on an account or group in the log: a flag set or
        lifted, a key revoked. The record names the key (a key's action) and the target."""
        key_id = target if ":" not in target and len(target) <= 32 else None
        self.commit([AuditRecord(self.clock(), key_id, "admin", ADMIN_MODEL, 0, None, None,
                                 {"action": "admin", "op": op, "target": target, **detail})])

    def _forget(self) -> None:
        """Drop the cached keys and flags: a change made here shows at once."""
        with self._key_cache_lock:
            self._key_cache.clear()
        self._flags_cache = None

    # -- the audit log ---------------------------------------------------------------------
    def append(self, records: list[AuditRecord]) -> None:
        """Write ``records`` in one transaction, extending the hash chain; returns when durable."""
        if records:
            contents = [rec.content() for rec in records]
            with self._write_lock:
                self._write(contents)

    def in_flight(self) -> _InFlight:
        """Count a request while it passes a Shield's stages: ``commit`` then yields to
        other requests only while another one is under way."""
        if self._flight is None:
            self._flight = []
        return _InFlight(self._flight)

    def commit(self, records: list[AuditRecord]) -> None:
        """Durably append ``records``, sharing one transaction with concurrent callers.

        Group commit, leader and followers: each caller queues its records and takes the
        write lock; whoever holds it writes everything queued so far in one transaction.
        A caller whose records an earlier holder already wrote returns at once, so under
        load many requests share one commit, and a lone request pays no thread hand-off.
        Each caller returns only once its own records are committed (or raises what the
        database raised).
        """
        pending = _Pending([rec.content() for rec in records])  # JSON outside the lock
        with self._queue_lock:
            self._queue.append(pending)
        # Yield the interpreter once: request threads about to commit queue their records
        # now and share this commit, instead of each waiting for a commit of its own
        # (tests/store/test_group_commit.py). A lone request (none other in a Shield's
        # stages) does not: the yield is a system call (tests/store/test_lone_commit.py).
        if self._flight is None or len(self._flight) > 1:
            time.sleep(0)
        with self._write_lock:
            if not pending.done:
                self._write_queued()
        if pending.error is not None:
            raise pending.error

    async def commit_async(self, records: list[AuditRecord]) -> None:
        """:meth:`commit` for a caller on an event loop, which it does not block: the
        records join the same queue, the store's writer thread commits everything queued
        in one transaction (whoever commits next takes them: the writer, or a thread in
        :meth:`commit`), and the caller resumes once its records are committed, or raises
        what the database raised. While one transaction runs, the next requests' records
        queue for the next: under load, one transaction holds many answers."""
        future = asyncio.get_running_loop().create_future()
        pending = _Pending([rec.content() for rec in records], future=future)
        with self._queue_lock:
            self._queue.append(pending)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                                name="audit-writer")
                self._writer.start()
        self._wake.set()
        await future

    def _write_loop(self) -> None:
        """The writer thread: commit what is queued each time a caller wakes it. Once the
        store closes it ends, when nothing is queued (a caller that queues after that
        starts another: no caller is left waiting)."""
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                try:
                    with self._write_lock:
                        self._write_queued()
                except Exception:  # a bug: the waiters learned it from their futures
                    log.exception("the audit log's writer failed")
                if self._closing.is_set():
                    with self._queue_lock:
                        if not self._queue:
                            self._writer = None
                            return
        finally:  # ended otherwise: the next caller starts another writer
            with self._queue_lock:
                if self._writer is threading.current_thread():
                    self._writer = None

    def _write_queued(self) -> None:
        """Write every queued caller's records in one transaction (the write lock is
        held); each caller learns the outcome: its ``done``, or its future resolved on
        its loop."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        error: BaseException | None = None
        contents = [c for p in batch for c in p.contents]
        try:
            self._write(contents)
            self.commits += bool(contents)
            self.committed += len(contents)
        except BaseException as exc:  # every waiter learns its records were not written
            error = exc
        # whatever happened, no waiter is left waiting, nor told an interrupted write held
        self._settle_batch(batch, error if error is None or isinstance(error, Exception)
                           else RuntimeError(f"the audit write was interrupted ({error!r})"))
        if error is not None and not isinstance(error, Exception):
            raise error

    @staticmethod
    def _settle_batch(batch: list[_Pending], error: Exception | None) -> None:
        """Tell each caller of a transaction its outcome: its ``done``, or its future
        resolved on its loop (one wake-up of each loop per transaction)."""
        waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for p in batch:
            p.done, p.error = True, error
            if p.future is not None:
                waiting.setdefault(p.future.get_loop(), []).append(p.future)
        for loop, futures in waiting.items():
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile
                loop.call_soon_threadsafe(_resolve, futures, error)

    def _write(self, contents: list[dict[str, Any]]) -> None:
        """One transaction on the writer's own DBAPI connection (the write lock is held).

        The hot path skips SQLAlchemy's statement layer: plain statements, with the chain
        head locked first (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``FOR UPDATE``) so
        writers in other processes still extend one chain. On PostgreSQL the statements go
        in psycopg's pipeline: two round trips (the head read, then the records, the new
        head and COMMIT), not one a statement.
        """
        if not contents:
            return
        sqlite = self.engine.dialect.name == "sqlite"
        if self._raw is None:
            self._raw = self.engine.raw_connection()
            if sqlite:  # checkpoints run in the background, not inside a request's commit
                self._raw.cursor().execute("PRAGMA wal_autocheckpoint=0")
                self._start_checkpointer()
            else:  # BEGIN and COMMIT sent as statements, so a pipeline carries them too;
                self._raw.detach()  # a connection so set is never handed to another user
                self._raw.dbapi_connection.autocommit = True
        raw = self._raw
        cur = raw.cursor()
        try:
            with _pipeline(raw, sqlite):
                self._append(cur, contents, sqlite)
        except Exception:
            # The connection may be broken (a database restart): drop it, reconnect next time.
            self._raw = None
            with contextlib.suppress(Exception):
                if sqlite:
                    cur.execute("ROLLBACK")
                else:
                    raw.rollback()
            with contextlib.suppress(Exception):
                raw.invalidate()
            raise
        finally:
            with contextlib.suppress(Exception):
                cur.close()

    def _append(self, cur: Any, contents: list[dict[str, Any]], sqlite: bool) -> None:
        """The transaction's statements: lock and read the head, insert the sealed
        records, write the new head, commit."""
        ph = "?" if sqlite else "%s"
        cur.execute("BEGIN IMMEDIATE" if sqlite else "BEGIN")
        cur.execute("SELECT hash, seq, log_id, log_since FROM audit_chain_head WHERE id = 1"
                    + ("" if sqlite else " FOR UPDATE"))
        prev, seq, log, since = cur.fetchone()
        if not log:  # a log made by an older release: bound to an id from here on
            log, since = new_log_id(), seq + 1
        rows = []
        version = self.key_version
        for content in contents:
            seq += 1
            digest = seal(self.keys, version, prev, seq, content, log)
            # The chain seals repr(ts); the column keeps the float (repr round-trips).
            rows.append((seq, float(content["ts"]),
                         *(content[c] for c in _RECORD_COLUMNS[1:]), prev, digest, version))
            prev = digest
        cur.executemany(f"INSERT INTO audit_log (seq, {', '.join(_RECORD_COLUMNS)}, "
                        f"prev_hash, hash, key_version) "
                        f"VALUES ({', '.join([ph] * (len(_RECORD_COLUMNS) + 4))})", rows)
        cur.execute(f"UPDATE audit_chain_head SET hash = {ph}, seq = {ph}, key_version = "
                    f"{ph}, mac = {ph}, log_id = {ph}, log_since = {ph} WHERE id = 1",
                    (prev, seq, version, seal_head(self.keys, version, seq, prev, log, since),
                     log, since))
        cur.execute("COMMIT")  # PostgreSQL: sent with the inserts, at the pipeline's sync

    def _start_checkpointer(self) -> None:
        """SQLite: copy the write-ahead log into the database every
        ``checkpoint_seconds`` from a thread of its own (PASSIVE: it never blocks the
        writer), so no request waits on a checkpoint's disk writes."""
        if self._checkpointer is not None:
            return

        def loop() -> None:
            conn = self.engine.raw_connection()
            try:
                while not self._closing.wait(self.checkpoint_seconds):
                    with contextlib.suppress(Exception):  # busy now: try again next time
                        conn.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                conn.close()

        self._checkpointer = threading.Thread(target=loop, daemon=True,
                                              name="audit-checkpoint")
        self._checkpointer.start()

    def count(self, answered: bool | None = None, admin: bool = False) -> int:
        """Requests in the log: all, only answered ones (True) or only refusals (False);
        ``admin``: operators' actions too (keys created and revoked, flags set and
        lifted), every record the chain holds."""
        query = sa.select(sa.func.count()).select_from(audit_table)
        if answered is not None:  # a refusal's record has a null answer; an admin action too
            query = query.where((audit_table.c.answer != "null") if answered
                                else (audit_table.c.answer == "null"))
        if not admin:
            query = query.where(audit_table.c.model != ADMIN_MODEL)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def records(self, limit: int | None = None, key_id: str | None = None,
                admin: bool = False) -> list[dict[str, Any]]:
        """Requests' records in log order, all or ``key_id``'s; ``limit``: the last that
        many; ``admin``: operators' actions too (keys created and revoked, flags)."""
        query = sa.select(audit_table)
        if not admin:
            query = query.where(audit_table.c.model != ADMIN_MODEL)
        if key_id is not None:
            query = query.where(audit_table.c.key_id == key_id)
        if limit:
            inner = query.order_by(audit_table.c.seq.desc()).limit(limit).subquery()
            query = sa.select(inner)
            with self.engine.connect() as conn:
                rows = [dict(r) for r in conn.execute(query).mappings()]
            return sorted(rows, key=lambda r: r["seq"])
        query = query.order_by(audit_table.c.seq)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def scan(self, since: float | None = None, until: float | None = None,
             model: str | None = None, batch: int = 1000) -> Any:
        """Answered records in log order between ``since`` and ``until`` (Unix times),
        of one ``model`` if given, fetched ``batch`` at a time (a long log is not read
        into memory at once). Yields dicts of ts, key_id, model, inputs (decoded)."""
        t = audit_table
        query = sa.select(t.c.ts, t.c.key_id, t.c.model, t.c.inputs).where(
            t.c.answer != "null").order_by(t.c.seq)
        if since is not None:
            query = query.where(t.c.ts >= since)
        if until is not None:
            query = query.where(t.c.ts < until)
        if model is not None:
            query = query.where(t.c.model == model)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=batch).execute(query)
            for row in result:
                yield {"ts": row.ts, "key_id": row.key_id, "model": row.model,
                       "inputs": json.loads(row.inputs)}

    def head(self) -> dict[str, Any]:
        """The chain head: the last position, its seal, and the head's own seal. Copy it
        out of reach of the database's writers to check against later (an anchor)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(chain_head).where(chain_head.c.id == 1)
                               ).mappings().one()
        return {"seq": int(row["seq"]), "hash": row["hash"],
                "key_version": row["key_version"], "mac": row["mac"], "log_id": row["log_id"],
                "log_since": row["log_since"]}

    def verify(self, anchor: Mapping[str, Any] | None = None) -> Verdict:
        """Check every record's seal and the head, naming each break; with ``anchor`` (an
        earlier :meth:`head`), also check that the log still holds what it held then."""
        with self.engine.connect() as conn:
            head = dict(conn.execute(sa.select(chain_head).where(chain_head.c.id == 1)
                                     ).mappings().one())
            rows = (dict(r) for r in conn.execute(
                sa.select(audit_table).order_by(audit_table.c.seq)).mappings())
            verdict = chain.check(rows, head, self.keys, require_keyed=bool(self.keys))
        if anchor is not None:
            brk = self.check_anchor(anchor)
            if brk is not None:
                verdict.add(brk)
        return verdict

    def check_anchor(self, anchor: Mapping[str, Any]) -> chain.Break | None:
        """Whether the log still holds ``anchor`` (an earlier :meth:`head`): None, or the
        break that says why not."""
        with self.engine.connect() as conn:
            log_id = conn.execute(sa.select(chain_head.c.log_id).where(
                chain_head.c.id == 1)).scalar_one()
            row = conn.execute(sa.select(audit_table.c.hash).where(
                audit_table.c.seq == int(anchor["seq"]))).mappings().first()
        return chain.check_anchor(anchor, None if row is None else dict(row), log_id)

    def close(self) -> None:
        self._closing.set()
        writer = self._writer
        if writer is not None:  # it commits what is queued, then ends
            self._wake.set()
            writer.join(10)
        if self._checkpointer is not None:
            self._checkpointer.join(10)
            self._checkpointer = None
        with self._write_lock:
            if self._raw is not None:
                with contextlib.suppress(Exception):
                    self._raw.close()
                self._raw = None
        self.engine.dispose()


def _resolve(futures: list[asyncio.Future[None]], error: Exception | None) -> None:
    """On the waiters' loop: each learns its records' fate (unless it stopped waiting)."""
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _pipeline(raw: Any, sqlite: bool) -> contextlib.AbstractContextManager[Any]:
    """psycopg's pipeline mode on a PostgreSQL connection that has it (statements sent
    together, results read at the next sync), else nothing."""
    conn = getattr(raw, "dbapi_connection", None)
    if sqlite or not hasattr(conn, "pipeline"):
        return contextlib.nullcontext()
    import psycopg

    if not psycopg.Pipeline.is_supported():
        return contextlib.nullcontext()
    return conn.pipeline()  # type: ignore[union-attr, no-any-return]


def _unreachable(exc: Exception) -> bool:
    """The database could not be reached at all (no retry helps)."""
    if isinstance(exc, sa.exc.OperationalError) and exc.connection_invalidated:
        return True
    return "connect" in str(exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc).lower()


def _named(url: str, exc: Exception) -> ConfigError:
    """A one-line error naming ``audit_url`` (its password hidden) and the database's
    first line of complaint."""
    shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return ConfigError(f"audit_url: cannot reach the audit database at {shown!r} ({first}).")


def new_log_id() -> str:
    """A new log's id: 32 random hex digits."""
    return secrets.token_hex(16)


def seeded_key_id(*parts: object) -> str:
    """A key id that repeats from run to run: 12 hex digits of a hash of ``parts`` (an
    audit cell's seed and the account's role, say). For :meth:`AuditStore.create_key`."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _hash_key(secret: str) -> str:
    # Keys are 144-bit random tokens, so a fast hash is enough (no password stretching).
    return hashlib.sha256(secret.encode()).hexdigest()


def _keys_with_flags() -> sa.Select[Any]:
    flag = flags_table
    return sa.select(keys_table, flag.c.detector.label("flag_detector"),
                     flag.c.score.label("flag_score"), flag.c.reason.label("flag_reason"),
                     flag.c.ts.label("flag_ts")).select_from(
        keys_table.outerjoin(flag, flag.c.ident == keys_table.c.key_id))


def _key(row: dict[str, Any]) -> ApiKey:
    flag = None
    if row.get("flag_detector") is not None:
        flag = {"detector": row["flag_detector"], "score": row["flag_score"],
                "reason": row["flag_reason"], "ts": row["flag_ts"]}
    return ApiKey(**{k: row[k] for k in ApiKey.__dataclass_fields__ if k != "flag"}, flag=flag)
