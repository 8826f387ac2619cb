"""The test of a train-time watermark in a suspect model: a trigger set (an exact
binomial test against chance) or an entangled watermark (EWE: tested against the
suspect's own answers to decoy watermarks and against independent models)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelshield.answer import FloatArray, IntArray
from modelshield.victims.entangled import EntangledResult, EntangledWatermark, load_mark
from modelshield.victims.trainmark import TriggerResult, TriggerSet
from modelshield.victims.zoo import ZOO, train_mark

TrainMark = TriggerSet | EntangledWatermark

# What the entangled test's p-value stands on, for the record (bench/watermark_ewe.py).
WITH_DECOYS = ("supporting: the watermark against the suspect's own answers to {decoys} "
               "decoy watermarks and against independent models, both must reject; below "
               "1/(decoys + 1) the decoy null is a fitted Beta, measured rather than exact "
               "(0 of 264 independent models reached p <= 1e-3 in bench/watermark_ewe.py)")
# A file without decoys (written before them): only the null estimated on a few
# independent models, which models of other seeds exceeded (7 of 132 at p <= 1e-3).
WITHOUT_DECOYS = ("supporting: a file without decoys, an estimated null alone (7 of 132 "
                  "independent models reached p <= 1e-3)")


def load_train_mark(which: str) -> TrainMark:
    """A built-in victim's train-time watermark (by its name), or one saved in a file."""
    return train_mark(which) if which in ZOO else load_mark(which)


@dataclass(frozen=True)
class MarkAnswers:
    """The suspect's labels on the watermark inputs and, for an entangled watermark with
    decoys, on the decoys' inputs."""

    labels: IntArray
    decoys: IntArray | None = None

    @property
    def queries(self) -> int:
        return len(self.labels) + (0 if self.decoys is None else len(self.decoys))


def ask_suspect(mark: TrainMark, predict: Callable[[FloatArray], Any]) -> MarkAnswers:
    """The suspect's answers (``predict(rows).labels``) to what the test needs."""
    labels = predict(mark.x).labels
    decoys = predict(mark.decoy_inputs).labels if isinstance(
        mark, EntangledWatermark) and len(mark.decoy_x) else None
    return MarkAnswers(labels, decoys)


@dataclass(frozen=True)
class TrainMarkVerdict:
    """The test's result; ``matched``: its p-value is at most alpha. ``record`` is what
    ``verify --json`` writes under ``trigger_set``."""

    which: str
    kind: str
    result: TriggerResult
    matched: bool
    record: dict[str, Any]

    @property
    def entangled(self) -> bool:
        return isinstance(self.result, EntangledResult)


def judge_train_mark(which: str, mark: TrainMark, answers: MarkAnswers, alpha: float
                     ) -> TrainMarkVerdict:
    """Test ``answers`` for ``mark`` (named ``which``) at ``alpha``."""
    labels, decoys = answers.labels, answers.decoys
    result = mark.test(labels, decoys) if isinstance(mark, EntangledWatermark) else \
        mark.test(labels)
    kind = "entangled watermark" if isinstance(mark, EntangledWatermark) else "trigger set"
    named = result.p_value <= alpha
    record: dict[str, Any] = {
        "trigger_set": which, "kind": kind, "p_value": result.p_value,
        "matches": result.matches, "triggers": result.triggers, "chance": result.chance,
        "matched": named, "queries": answers.queries}
    if isinstance(mark, EntangledWatermark):
        assert isinstance(result, EntangledResult)
        record.update(_entangled(mark, result, answers, alpha))
    return TrainMarkVerdict(which, kind, result, named, record)


def _entangled(mark: EntangledWatermark, result: EntangledResult, answers: MarkAnswers,
               alpha: float) -> dict[str, Any]:
    labels, decoys = answers.labels, answers.decoys
    return {"p_family": result.p_family, "p_decoy": result.p_decoy,
            "decoy_rate": result.decoy_rate, "decoys_above": result.decoys_above,
            "p_rank": result.p_rank, "decoy_queries": result.decoy_queries,
            "queries_to_95": mark.queries_to(labels, 0.05, decoys),
            "queries_to_alpha": mark.queries_to(labels, alpha, decoys),
            "evidence": WITHOUT_DECOYS if decoys is None else
            WITH_DECOYS.format(decoys=result.decoys)}
