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
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from matplotlib.figure import Figure

from modelshield.audit.ownership import OwnershipReport
from modelshield.audit.report import inline_svg
from modelshield.store.chain import LEGACY, UNKEYED, Verdict, row_content, seal


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
    records = store.records(key_id=key_id)
    flags = [f for f in store.flags() if f["ident"] == key_id]
    activity, times = _activity(records)
    head = store.head()
    doc: dict[str, Any] = {
        "generated_at": _when(dt.datetime.now(dt.UTC).timestamp()),
        "key": _key_fields(key, terms),
        "activity": activity,
        "flags": [{**f, "ts": _when(f["ts"])} for f in flags],
        "integrity": _integrity(verdict, head, anchor, records),
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
    times = []
    for rec in records:
        decision = json.loads(rec["decision"])
        if rec["answer"] == "null":
            refusals[f"{decision.get('status')} {decision.get('code')}"] += 1
        else:
            answered += 1
            rows += int(rec["rows"])
            times.append((float(rec["ts"]), int(rec["rows"])))
    return {"requests": len(records), "answered": answered, "rows_answered": rows,
            "refused": dict(refusals), "first": _when(records[0]["ts"]) if records
            else None, "last": _when(records[-1]["ts"]) if records else None}, times


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
    return paths


def check_records(path: Path, keys: Mapping[str, str]) -> tuple[int, list[int]]:
    """Check each record of a ``records.jsonl`` against its seal with the audit keys:
    (records checked, positions whose seal does not match or whose key is missing)."""
    raw = {v: k.encode() for v, k in keys.items()}
    bad, n = [], 0
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        n += 1
        version = rec.get("key_version") or LEGACY
        known = version in raw or version in (UNKEYED, LEGACY)
        if not known or seal(raw, version, rec["prev_hash"], int(rec["seq"]),
                             row_content(rec)) != rec["hash"]:
            bad.append(int(rec["seq"]))
    return n, bad
