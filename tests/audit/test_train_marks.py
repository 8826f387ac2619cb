"""The train-time watermark's test of a suspect: a trigger set answered with its keyed
labels is a match and chance answers are not; the suspect is asked the watermark inputs
(and an entangled watermark's decoys); a saved trigger set loads from its file."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from modelshield.audit.train_marks import (
    MarkAnswers,
    ask_suspect,
    judge_train_mark,
    load_train_mark,
)
from modelshield.victims.trainmark import TriggerSet


def _triggers() -> TriggerSet:
    rng = np.random.default_rng(0)
    return TriggerSet(rng.normal(size=(40, 4)), rng.integers(0, 10, 40), 10)


def test_keyed_labels_match_and_chance_labels_do_not() -> None:
    marks = _triggers()
    hit = judge_train_mark("file.npz", marks, MarkAnswers(marks.labels), 1e-3)
    assert hit.matched and not hit.entangled and hit.kind == "trigger set"
    assert hit.record == {"trigger_set": "file.npz", "kind": "trigger set",
                          "p_value": hit.result.p_value, "matches": 40, "triggers": 40,
                          "chance": 0.1, "matched": True, "queries": 40}
    miss = judge_train_mark("file.npz", marks, MarkAnswers((marks.labels + 1) % 10), 1e-3)
    assert not miss.matched and miss.record["matches"] == 0


def test_the_suspect_is_asked_the_watermark_inputs() -> None:
    marks = _triggers()
    asked: list[Any] = []

    def predict(x: Any) -> Any:
        asked.append(x)
        return SimpleNamespace(labels=np.zeros(len(x), dtype=np.int64))

    answers = ask_suspect(marks, predict)
    assert len(asked) == 1 and asked[0] is marks.x
    assert answers.decoys is None and answers.queries == 40


def test_a_saved_trigger_set_loads_from_its_file(tmp_path: Path) -> None:
    marks = _triggers()
    marks.save(tmp_path / "t.npz")
    loaded = load_train_mark(str(tmp_path / "t.npz"))
    assert isinstance(loaded, TriggerSet) and np.array_equal(loaded.labels, marks.labels)
