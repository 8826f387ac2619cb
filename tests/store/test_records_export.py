"""The records `modelshield evidence` exports (records.jsonl) are checked by anyone given
the audit key: a record resealed without the key, or dropped, is named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modelshield.audit.evidence import check_records, gather, write_evidence
from modelshield.store import AuditRecord, AuditStore
from modelshield.store.chain import UNKEYED, row_content, seal

KEYS = {"v1": "an-audit-key-kept-outside-the-db"}


@pytest.fixture
def export(tmp_path: Path) -> tuple[Path, str]:
    store = AuditStore(f"sqlite:///{tmp_path / 'a.db'}", keys=KEYS)
    _, key = store.create_key("free", owner="acme")
    store.append([AuditRecord(float(i), key.key_id if i % 2 else None, "10.0.0.1", "m", 1,
                              [[i]], {"labels": [0]}, {"action": "allow"}) for i in range(12)])
    doc, records = gather(store, key.key_id, {"1": "terms"}, store.verify())
    paths = write_evidence(doc, records, tmp_path / "evidence")
    store.close()
    return paths["records"], store.head()["log_id"]


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rewrite(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_an_untouched_export_checks(export: tuple[Path, str]) -> None:
    result = check_records(export[0], KEYS)
    # the key's six requests and its creation (its tier and terms, sealed)
    assert result.ok and result.checked == 7 and not result.bad and not result.missing


def test_a_record_resealed_with_plain_sha256_is_named(export: tuple[Path, str]) -> None:
    path, log = export
    rows = lines(path)
    rec = rows[2]
    rec["answer"] = '{"labels":[2]}'
    rec["key_version"] = UNKEYED
    rec["hash"] = seal({}, UNKEYED, str(rec["prev_hash"]), int(str(rec["seq"])),
                       row_content(rec), log)
    assert rec["hash"] != hashlib.sha256(b"").hexdigest()
    rewrite(path, rows)
    result = check_records(path, KEYS)
    assert not result.ok and result.bad == [int(str(rec["seq"]))]


def test_a_dropped_record_is_named(export: tuple[Path, str]) -> None:
    path, _ = export
    rows = lines(path)
    dropped = rows.pop(3)
    rewrite(path, rows)
    result = check_records(path, KEYS)
    assert not result.ok and result.missing == [int(str(dropped["seq"]))]


def test_an_export_without_its_sealed_manifest_fails(export: tuple[Path, str]) -> None:
    path, _ = export
    rewrite(path, [r for r in lines(path) if "manifest" not in r])
    result = check_records(path, KEYS)
    assert not result.ok and "manifest" in (result.problem or "")


def test_the_cli_names_dropped_records(export: tuple[Path, str], tmp_path: Path) -> None:
    from tests.cli import run_cli

    path, _ = export
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"audit_url: sqlite:///{tmp_path / 'a.db'}\naudit_keys: {json.dumps(KEYS)}\n")
    rows = lines(path)
    rewrite(path, rows[:2] + rows[3:])
    result = run_cli("audit-log", "check-records", str(path), "--config", str(cfg))
    assert result.returncode == 1 and f"positions {rows[2]['seq']}" in result.stderr
