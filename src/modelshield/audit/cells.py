"""The audit's cells and what they return, as they cross processes and files.

A cell is JSON-able and says everything needed to run it in another process; the hash of
its JSON is its cache key (runner.cell_key), so a field added here changes every key.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

CellKind = Literal["attack", "benign", "privacy"]


class Cell(TypedDict):
    """One attacker x defense x budget (``attack``), or the honest customers (``benign``) or
    membership inference (``privacy``) under one defense."""

    kind: CellKind
    defense: dict[str, Any]  # scenario.Defense.model_dump()
    target: dict[str, Any]  # scenario.Target.model_dump()
    seed: int
    target_files: dict[str, str]  # digests of the target's files
    version: str  # modelshield's
    cell_format: int  # runner.CELL_FORMAT
    defense_file: NotRequired[str]  # the digest of a gateway config the tier comes from
    attacker: NotRequired[dict[str, Any]]  # scenario.Attacker.model_dump()
    label: NotRequired[str]  # the attacker's name in the report
    budget: NotRequired[int]
    price_per_1k: NotRequired[float]
    benign: NotRequired[dict[str, Any]]  # scenario.Benign.model_dump()
    privacy: NotRequired[dict[str, Any]]  # scenario.Privacy.model_dump()
    privacy_file: NotRequired[str | None]


CellResult = dict[str, Any]
"""A cell's JSON-able result: ``kind``, ``defense``, ``seconds`` and ``status`` always; an
attack's fidelity, accuracy, curve, queries, cost, first flag and trace; a benign cell's
accuracy, calibration and flagged shares by archetype; a privacy cell's rows by attack."""

