"""Helpers shared by the benchmarks: a Rich table on screen and a JSON file on disk."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
console = Console(width=160)


def one_thread() -> None:
    """A pool worker's initializer: one thread for torch, BLAS and OpenMP. With a worker
    per core, more only contend (scikit-learn's histogram boosting, for one, slows down
    when its OpenMP threads spin against another worker's)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


def write(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
               "machine": platform.platform(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    console.print(f"wrote {path}")
    return path


def show(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    console.print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"
    return str(v)


def watermarked_theft(name: str, attack: str, params: dict[str, Any], rate: float,
                      key_id: str, seed: int, secret: str, budget: int) -> tuple[Any, ...]:
    """A built-in victim served through a tier that watermarks its answers at ``rate``, and
    one key (``key_id``) running ``attack`` through it for ``budget`` queries.

    Returns (victim, its ServeWatermark, the key's record, the rows the key sent, the labels
    it was answered, the attack's result): the key's watermark set is
    ``watermark_set(wm, record.key_id, rows, victim.model, answered=labels)``."""
    import tempfile
    import warnings

    from modelshield.attacks import ATTACKS
    from modelshield.audit.ownership import logged_queries
    from modelshield.oracle import ShieldOracle
    from modelshield.serve.factory import build_shield
    from modelshield.victims import load_victim

    v = load_victim(name)
    with tempfile.TemporaryDirectory() as tmp:
        shield = build_shield({"model": {"builtin": name}, "audit_url": f"sqlite:///{tmp}/a.db",
                               "watermark_secret": secret,
                               "tiers": {"pro": {"watermark": {"rate": rate},
                                                 "max_batch": 1000}}})
        key, rec = shield.store.create_key("pro", owner="thief", key_id=key_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            e = ATTACKS[attack](random_state=seed, **params).run(
                ShieldOracle(shield, key), budget, pool=v.pool)
        rows, labels = logged_queries(shield.store, rec.key_id, shield.spec.name)
        wm = shield.watermarks["pro"]
        shield.close()
    return v, wm, rec, rows, labels, e


def seeds_and_rates(description: str, victims: list[str]) -> Any:
    """An argument parser with the watermark benchmarks' shared options: --victims, --seeds
    (0-2), --rates (0.5% and 2%) and --workers (2)."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--victims", nargs="+", default=list(victims), choices=list(victims))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.005, 0.02])
    ap.add_argument("--workers", type=int, default=2)
    return ap
