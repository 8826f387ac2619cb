"""The audit log's keyed hash chain: how a record is sealed, and how a log is checked.

Each record is sealed with HMAC-SHA256 under a secret kept outside the database (the
gateway config's ``audit_keys``), over the previous record's seal, its own position and
its content; the record names the key version it was sealed with, so keys can be rotated
and old records still check. The chain head (the last position and seal) is sealed too.
Someone who can write to the database but does not hold the key can then neither edit,
insert, delete, reorder nor cut off records without :func:`check` naming the break,
even if they recompute every hash.

What a key cannot stop: rolling the whole log back to an earlier state together with an
old head that was valid then. Against that, copy the head (``modelshield audit-log
head``) somewhere the database's writers cannot reach, and check against it later
(``audit-log verify --anchor``).

Each log has an id of its own, drawn when it is made and kept in its head; every record
(from the head's ``log_since`` on: a log made by an older release gets its id at its next
write) is sealed over it, so a record copied in from another log sealed with the same key
does not check, and each record's stored link must be the seal of the record before it.

Records written without a key (``key_version`` "sha256") are chained with plain SHA-256:
they show accidents, not tampering. Records of older versions of modelshield have no key
version and no position in the hash ("legacy"); they are checked the old way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64
UNKEYED = "sha256"
LEGACY = ""
# A record sealed at one position but found at another is "moved" if its seal checks at a
# position at most this far away; further than that it counts as forged.
MOVE_WINDOW = 64
MAX_BREAKS = 50

CONTENT_FIELDS = ("ts", "key_id", "client_ip", "model", "rows", "input_hash", "inputs",
                  "answer", "decision")


def _to_list(value: Any) -> Any:
    """What the canonical JSON writes for a numpy array or scalar: its Python value."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot record {type(value).__name__}")


def _encoder() -> Callable[[Any], str]:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), default=_to_list)``,
    byte for byte, from one C encoder built once (``json.dumps`` builds an encoder on every
    call). Without a circular-reference check: records are trees built here."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # the interpreter has no C accelerator: the plain path
        return lambda value: json.dumps(value, sort_keys=True, separators=(",", ":"),
                                        default=_to_list)
    encode = make(None, _to_list, json.encoder.encode_basestring_ascii, None, ":", ",",
                  True, False, True)  # sort_keys, skipkeys, allow_nan, as json.dumps
    return lambda value: "".join(encode(value, 0))


canonical_json: Callable[[Any], str] = _encoder()
"""The canonical JSON of a record's parts and of what is sealed (sorted keys, no spaces,
ASCII, NaN written as ``NaN``): the bytes every log so far was sealed over."""


def seal(keys: Mapping[str, bytes], version: str, prev: str, seq: int,
         content: Mapping[str, Any], log: str = "") -> str:
    """The record's seal: HMAC-SHA256 (or SHA-256 when unkeyed) over the previous seal,
    the record's position, its key version, its log's id (when it has one) and its
    content."""
    if version == LEGACY:
        body = canonical_json(dict(content))
        return hashlib.sha256((prev + body).encode()).hexdigest()
    bound = {**content, "seq": seq, "key_version": version, **({"log": log} if log else {})}
    message = (prev + canonical_json(bound)).encode()
    if version == UNKEYED:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(keys[version], message, hashlib.sha256).hexdigest()


def seal_head(keys: Mapping[str, bytes], version: str, seq: int, last: str, log: str = "",
              since: int = 0) -> str:
    """The head's seal over the last position and the last record's seal (and the log's
    id and the first position sealed with it, when it has one)."""
    message = (f"head|{log}|{since}|{seq}|{last}" if log else f"head|{seq}|{last}").encode()
    if version in (UNKEYED, LEGACY):
        return hashlib.sha256(message).hexdigest()
    return hmac.new(keys[version], message, hashlib.sha256).hexdigest()


def seal_manifest(keys: Mapping[str, bytes], version: str, manifest: Mapping[str, Any]) -> str:
    """The seal of an export's manifest (the log's id, the records' positions and seals),
    so that a record dropped from, added to or resealed in the export is found."""
    message = ("manifest|" + json.dumps(dict(manifest), sort_keys=True,
                                        separators=(",", ":"))).encode()
    if version in (UNKEYED, LEGACY):
        return hashlib.sha256(message).hexdigest()
    return hmac.new(keys[version], message, hashlib.sha256).hexdigest()


def row_content(row: Mapping[str, Any]) -> dict[str, Any]:
    """What was sealed, from a stored row (the chain seals repr(ts); repr round-trips)."""
    content = {k: row[k] for k in CONTENT_FIELDS[1:]}
    content["ts"] = repr(row["ts"])
    return content


@dataclass(frozen=True)
class Break:
    """One break in the log: its kind, the positions it covers, and what was found."""

    kind: str  # edited | moved | unlinked | removed | removed-at-end | added-after-head
    #            | head-altered | unknown-key | downgraded | head-unkeyed | anchor-missing
    first: int
    last: int
    detail: str

    def describe(self) -> str:
        where = f"record {self.first}" if self.first == self.last else \
            f"records {self.first}-{self.last}"
        if self.first < 0:
            where = "chain head"
        return f"{where}: {self.detail}"


@dataclass
class Verdict:
    """What :func:`check` found: intact or not, and every break named."""

    checked: int = 0
    head_seq: int = 0
    versions: dict[str, int] = field(default_factory=dict)  # records per key version
    breaks: list[Break] = field(default_factory=list)
    truncated: bool = False  # more breaks than MAX_BREAKS; the rest were not listed

    @property
    def ok(self) -> bool:
        return not self.breaks

    @property
    def keyed(self) -> bool:
        """Every record is sealed with a key (so the log resists its database's writers)."""
        return self.checked > 0 and not ({UNKEYED, LEGACY} & set(self.versions))

    def add(self, brk: Break) -> None:
        last = self.breaks[-1] if self.breaks else None
        # Runs of one kind read as one break ("records 7-1000 moved").
        if (last is not None and last.kind == brk.kind == "moved" and brk.first == last.last + 1
                and brk.detail == last.detail):
            self.breaks[-1] = Break(last.kind, last.first, brk.last, last.detail)
        elif len(self.breaks) < MAX_BREAKS:
            self.breaks.append(brk)
        else:
            self.truncated = True


def check(rows: Iterable[Mapping[str, Any]], head: Mapping[str, Any],
          keys: Mapping[str, bytes], require_keyed: bool = False) -> Verdict:
    """Check the records (in position order) against their seals, their links and the head.

    require_keyed: the owner holds audit keys, so an unkeyed record after a keyed one, or
    an unkeyed head over a keyed log, is a downgrade by someone without the key.
    """
    v = Verdict()
    log, since = head.get("log_id") or "", int(head.get("log_since") or 0)
    prev_seq, prev_seal, prev_good = 0, GENESIS, True
    seen_keyed = False
    for row in rows:
        seq = int(row["seq"])
        version = row.get("key_version") or LEGACY
        v.checked += 1
        v.versions[version] = v.versions.get(version, 0) + 1
        gap = seq > prev_seq + 1
        if gap:
            v.add(Break("removed", prev_seq + 1, seq - 1,
                        f"{seq - prev_seq - 1} record(s) missing from the chain"))
        if version not in (UNKEYED, LEGACY) and version not in keys:
            v.add(Break("unknown-key", seq, seq, f"sealed with key version {version!r}, which "
                        "is not in audit_keys: add it to check this record"))
            prev_seq, prev_seal, prev_good = seq, row["hash"], False
            continue
        if version in (UNKEYED, LEGACY) and require_keyed and seen_keyed:
            v.add(Break("downgraded", seq, seq, "unkeyed record after keyed ones: rewritten "
                        "by someone without the key"))
        seen_keyed = seen_keyed or version not in (UNKEYED, LEGACY)
        good = _check_row(v, keys, row, log if since and seq >= since else "", v.truncated)
        if good and prev_good and not gap and row["prev_hash"] != prev_seal:
            v.add(Break("unlinked", seq, seq, "its seal checks but it does not follow the "
                        "record before it: spliced in from another log sealed with the same "
                        "key, or the record before it was replaced"))
        prev_seq, prev_seal, prev_good = seq, row["hash"], good
    _check_head(v, head, keys, prev_seq, prev_seal, require_keyed)
    return v


def _check_row(v: Verdict, keys: Mapping[str, bytes], row: Mapping[str, Any], log: str,
               quick: bool) -> bool:
    """Whether one record's seal checks where it is; if not, the break is added (moved,
    when its seal checks nearby, unless ``quick``: past MAX_BREAKS nothing is listed)."""
    seq, version = int(row["seq"]), row.get("key_version") or LEGACY
    content = row_content(row)
    if seal(keys, version, row["prev_hash"], seq, content, log) == row["hash"]:
        return True
    origin = None if version == LEGACY or quick else \
        _origin(keys, version, row, seq, content, log)
    if origin is not None:
        v.add(Break("moved", seq, seq, f"sealed {abs(origin - seq)} position(s) "
                    f"{'later' if origin > seq else 'earlier'} than where it is "
                    "(reordered, or records inserted or removed before it)"))
    else:
        v.add(Break("edited", seq, seq, "its seal does not match its content (edited or "
                    "inserted by someone without the key, or copied from another log)"))
    return False


def _origin(keys: Mapping[str, bytes], version: str, row: Mapping[str, Any], seq: int,
            content: Mapping[str, Any], log: str = "") -> int | None:
    """The position a record was sealed at, when its seal checks at another one nearby."""
    for shift in range(1, MOVE_WINDOW + 1):
        for cand in (seq - shift, seq + shift):
            if cand > 0 and seal(keys, version, row["prev_hash"], cand, content,
                                 log) == row["hash"]:
                return cand
    return None


def _check_head(v: Verdict, head: Mapping[str, Any], keys: Mapping[str, bytes], last_seq: int,
                last_seal: str, require_keyed: bool) -> None:
    head_seq, head_hash = int(head["seq"]), head["hash"]
    version = head.get("key_version") or LEGACY
    v.head_seq = head_seq
    if version == LEGACY and not head.get("mac"):
        pass  # an older head with no seal: only its position and last seal are checked
    elif version not in (UNKEYED, LEGACY) and version not in keys:
        v.add(Break("unknown-key", -1, -1, f"the head is sealed with key version {version!r}, "
                    "which is not in audit_keys"))
    elif seal_head(keys, version, head_seq, head_hash, head.get("log_id") or "",
                   int(head.get("log_since") or 0)) != head.get("mac"):
        v.add(Break("head-altered", -1, -1, f"its seal does not match (it says position "
                    f"{head_seq}); rewritten by someone without the key, perhaps to hide "
                    "records removed at the end"))
        return
    if require_keyed and version in (UNKEYED, LEGACY):
        v.add(Break("head-unkeyed", -1, -1, "the head is not sealed with a key although "
                    "audit_keys are set: rewritten by someone without the key (or nothing was "
                    "written since the keys were added)"))
    if head_seq > last_seq:
        v.add(Break("removed-at-end", last_seq + 1, head_seq,
                    f"records removed at the end: the head records position {head_seq}, "
                    f"the log ends at {last_seq}"))
    elif head_seq < last_seq:
        v.add(Break("added-after-head", head_seq + 1, last_seq,
                    f"records after the head (position {head_seq}): added by someone "
                    "without the key, or the head was rolled back"))
    elif head_hash != last_seal:
        v.add(Break("head-altered", -1, -1, "the head's last seal is not the last record's"))


def check_anchor(anchor: Mapping[str, Any], row: Mapping[str, Any] | None,
                 log_id: str | None = None) -> Break | None:
    """A head copied out earlier (``audit-log head``) must still be in the log, and the
    log must be the one it was copied from (its id, where the anchor has one)."""
    seq = int(anchor["seq"])
    if anchor.get("log_id") and log_id and anchor["log_id"] != log_id:
        return Break("anchor-missing", seq, seq, f"the log's id is {log_id!r}, the anchor's "
                     f"{anchor['log_id']!r}: another log was put in this one's place")
    if seq == 0:
        return None
    if row is None:
        return Break("anchor-missing", seq, seq, f"the anchored record {seq} is gone: the "
                     "log was cut back or rolled back past the anchor")
    if row["hash"] != anchor["hash"]:
        return Break("anchor-missing", seq, seq, "the record at the anchored position is not "
                     "the one anchored: the log was rewritten or rolled back")
    return None
