"""Experiment code that several benchmarks share (the harness itself is harness.py)."""

from __future__ import annotations

from typing import Any

from harness import arguments


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
    ap = arguments(description, seeds=[0, 1, 2], workers=2)
    ap.add_argument("--victims", nargs="+", default=list(victims), choices=list(victims))
    ap.add_argument("--rates", type=float, nargs="+", default=[0.005, 0.02])
    return ap
