"""Evidence about one key (``modelshield evidence``): one self-contained HTML page and its
JSON, for a contract termination, a cease-and-desist letter or a court.

They hold who holds the key and which terms it accepted and when; its queries over time,
flags and refusals; the watermark test against a named suspect; and the proof that the
records shown are in the audit log, unaltered: the whole chain checked under the audit
keys (every seal and the head), each shown record's position and seal, and, with an
anchor copied out earlier, that the log still holds it. ``records.jsonl`` beside the page
holds the key's records in full (inputs, answers, seals), so that anyone given the audit
key can check each one again (:func:`check_records`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from matplotlib.figure import Figure

from modelshield.audit.ownership import OwnershipReport
from modelshield.audit.report import inline_svg
from modelshield.store.chain import LEGACY, UNKEYED, Verdict, row_content, seal, seal_manifest
from modelshield.store.sql import ADMIN_MODEL


def _when(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def gather(store: Any, key_id: str, terms: Mapping[str, str], verdict: Verdict,
           ownership: OwnershipReport | None = None,
           anchor: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the evidence document, the key's records in full) for ``key_id``.

    terms: the terms text by version (the config's current version and text).
    verdict: the audit log's check (``store.verify(anchor)``), made just before.
    """
    key = next((k for k in store.list_keys() if k.key_id == key_id), None)
    if key is None:
        from modelshield.errors import ConfigError

        raise ConfigError(f"--key: no key with id {key_id!r}.")
    records = store.records(key_id=key_id, admin=True)
    flags = [f for f in store.flags() if f["ident"] == key_id]
    activity, times = _activity(records)
    head = store.head()
    doc: dict[str, Any] = {
        "generated_at": _when(dt.datetime.now(dt.UTC).timestamp()),
        "key": _key_fields(key, terms),
        "activity": activity,
        "flags": [{**f, "ts": _when(f["ts"])} for f in flags],
        "integrity": {**_integrity(verdict, head, anchor, records),
                      "manifest": manifest(store, head, key_id, records)},
        "watermark": None if ownership is None else _watermark(ownership, key_id),
    }
    doc["figure"] = _activity_svg(times) if times else ""
    return doc, records


def _key_fields(key: Any, terms: Mapping[str, str]) -> dict[str, Any]:
    """Who holds the key, and the terms it accepted and when."""
    return {"key_id": key.key_id, "owner": key.owner, "tier": key.tier,
            "created_at": _when(key.created_at), "expires_at": _when(key.expires_at),
            "revoked_at": _when(key.revoked_at), "terms_version": key.terms_version,
            "terms_accepted_at": _when(key.terms_accepted_at),
            "terms_text": terms.get(key.terms_version)}


def _activity(records: list[dict[str, Any]]
              ) -> tuple[dict[str, Any], list[tuple[float, int]]]:
    """The key's requests, answers and refusals (by status and code), and (time, rows)
    of each answered request."""
    refusals: Counter[str] = Counter()
    answered = rows = 0
    times, admin = [], []
    requests = [r for r in records if r["model"] != ADMIN_MODEL]
    for rec in records:
        decision = json.loads(rec["decision"])
        if rec["model"] == ADMIN_MODEL:  # an operator's action on the key: not a request
            admin.append({"seq": int(rec["seq"]), "when": _when(rec["ts"]),
                          "op": decision.get("op"), "target": decision.get("target")})
        elif rec["answer"] == "null":
            refusals[f"{decision.get('status')} {decision.get('code')}"] += 1
        else:
            answered += 1
            rows += int(rec["rows"])
            times.append((float(rec["ts"]), int(rec["rows"])))
    return {"requests": len(requests), "answered": answered, "rows_answered": rows,
            "refused": dict(refusals), "first": _when(requests[0]["ts"]) if requests
            else None, "last": _when(requests[-1]["ts"]) if requests else None,
            "admin_actions": admin}, times


def _integrity(verdict: Verdict, head: Any, anchor: Mapping[str, Any] | None,
               records: list[dict[str, Any]]) -> dict[str, Any]:
    """The audit log's check, and where each shown record sits in it and its seal."""
    return {
        "intact": verdict.ok, "records_checked": verdict.checked,
        "keyed": verdict.keyed, "key_versions": verdict.versions,
        "breaks": [{"kind": b.kind, "first": b.first, "last": b.last, "detail": b.detail}
                   for b in verdict.breaks],
        "head": head, "anchor": dict(anchor) if anchor else None,
        "positions": [int(r["seq"]) for r in records],
        "seals": {str(r["seq"]): r["hash"] for r in records}}


def manifest(store: Any, head: Mapping[str, Any], key_id: str,
             records: list[dict[str, Any]]) -> dict[str, Any]:
    """What an export holds, sealed with the store's audit key: the log's id, the key,
    and each record's position and seal. :func:`check_records` holds the export to it."""
    body = {"log_id": head.get("log_id"), "log_since": head.get("log_since"),
            "key_id": key_id, "key_version": store.key_version,
            "seals": {str(r["seq"]): r["hash"] for r in records}}
    return {**body, "seal": seal_manifest(store.keys, store.key_version, body)}


def _watermark(ownership: OwnershipReport, key_id: str) -> dict[str, Any]:
    """The watermark test against the suspect, as it bears on this key."""
    mine = next((a for a in ownership.accounts if a.key_id == key_id), None)
    return {
        "suspect": ownership.suspect, "alpha": ownership.alpha,
        "accounts_tested": len(ownership.accounts),
        "suspect_queries": ownership.suspect_queries, "jitter": ownership.jitter,
        "matched": mine is not None and mine.matched,
        "named_accounts": [a.key_id for a in ownership.matched],
        "result": None if mine is None else {
            "test": mine.result.test, "p_value": mine.result.p_value,
            "p_adjusted": mine.p_adjusted, "p_sequential": mine.result.p_sequential,
            "watermarks": mine.result.watermarks,
            "matches": mine.result.matches, "disagreements": mine.result.disagreements,
            "summary": mine.result.summary()}}


def _activity_svg(times: list[tuple[float, int]]) -> str:
    """Rows answered over time, cumulative."""
    t = np.array([a for a, _ in times])
    n = np.cumsum([b for _, b in times])
    fig = Figure(figsize=(7.5, 2.8))
    ax = fig.subplots()
    secs = t - t[0]
    span = secs[-1]
    unit, scale = next((u, s) for u, s, upto in (("seconds", 1.0, 120), ("minutes", 60.0, 7200),
                                                 ("hours", 3600.0, 172800),
                                                 ("days", 86400.0, float("inf")))
                       if span < upto)
    ax.step(secs / scale, n, where="post", color="#b3261e")
    ax.set_xlabel(f"{unit} since the first request ({_when(float(t[0]))})")
    ax.set_ylabel("rows answered (cumulative)")
    ax.grid(alpha=0.3)
    return inline_svg(fig, "activity")


def write_evidence(doc: dict[str, Any], records: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """``evidence.html``, ``evidence.json`` and ``records.jsonl`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    env = jinja2.Environment(loader=jinja2.PackageLoader("modelshield.audit", "templates"),
                             autoescape=jinja2.select_autoescape(["html.j2"]),
                             undefined=jinja2.StrictUndefined)
    paths = {"html": out / "evidence.html", "json": out / "evidence.json",
             "records": out / "records.jsonl"}
    paths["html"].write_text(env.get_template("evidence.html.j2").render(d=doc))
    paths["json"].write_text(json.dumps({k: v for k, v in doc.items() if k != "figure"},
                                        indent=2, default=str))
    with paths["records"].open("w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, default=str) + "\n")
        fh.write(json.dumps({"manifest": doc["integrity"]["manifest"]}) + "\n")
    return paths


@dataclass
class RecordsCheck:
    """What :func:`check_records` found in an export."""

    checked: int = 0
    bad: list[int] = field(default_factory=list)  # seal or manifest does not match
    missing: list[int] = field(default_factory=list)  # in the manifest, not in the export
    problem: str | None = None  # the export as a whole cannot be trusted

    @property
    def ok(self) -> bool:
        return not (self.bad or self.missing or self.problem)


def check_records(path: Path, keys: Mapping[str, str]) -> RecordsCheck:
    """Check a ``records.jsonl`` with the audit keys: its manifest's seal (so a record
    dropped, added or resealed is found), and each record's seal against its content and
    against the seal the manifest lists for its position."""
    raw = {v: k.encode() for v, k in keys.items()}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    found = RecordsCheck()
    sealed = [r["manifest"] for r in rows if "manifest" in r]
    records = [r for r in rows if "manifest" not in r]
    found.checked = len(records)
    if len(sealed) != 1:
        found.problem = ("no sealed manifest: the export cannot show that no record was "
                         "dropped (write it again with `modelshield evidence`)")
        return found
    man = sealed[0]
    body = {k: v for k, v in man.items() if k != "seal"}
    if man.get("key_version") not in raw or seal_manifest(
            raw, man["key_version"], body) != man.get("seal"):
        found.problem = ("the manifest's seal does not match under audit_keys (it was "
                         "rewritten, or sealed with a key version not listed)")
        return found
    listed: dict[str, str] = man["seals"]
    for rec in records:
        if not _record_checks(rec, raw, man) or listed.get(str(rec["seq"])) != rec["hash"]:
            found.bad.append(int(rec["seq"]))
    present = {str(r["seq"]) for r in records}
    found.missing = sorted(int(seq) for seq in listed if seq not in present)
    return found


def _record_checks(rec: Mapping[str, Any], raw: Mapping[str, bytes],
                   man: Mapping[str, Any]) -> bool:
    """One record's seal over its content, under its key version and its log's id."""
    version = rec.get("key_version") or LEGACY
    if version not in raw and version not in (UNKEYED, LEGACY):
        return False
    seq, since = int(rec["seq"]), int(man.get("log_since") or 0)
    log = man.get("log_id") or "" if since and seq >= since else ""
    return bool(seal(raw, version, rec["prev_hash"], seq, row_content(rec), log)
                == rec["hash"])
