"""Is a suspect model a copy made from our answers, and from whose? (``modelshield verify``)

For every account whose tier watermarks its answers, the account's watermark set is
rebuilt from the audit log and the watermark secret (:func:`account_sets`); the suspect is
asked on those inputs, and an exact test says how unlikely its answers are for a model
built without them (:mod:`modelshield.defenses.watermark`). With several accounts tested,
each p-value is multiplied by their number (Bonferroni), so the chance of naming any
account for an independent model stays at most ``alpha``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from modelshield.answer import FloatArray, IntArray, Prediction
from modelshield.defenses.watermark import (
    MAX_CONTROL,
    ServeWatermark,
    TestResult,
    WatermarkSet,
    control_test,
    label_test,
    score_test,
    sequential_cuts,
    sequential_p,
    watermark_set,
)
from modelshield.errors import ConfigError

DEFAULT_ALPHA = 1e-3


@dataclass(frozen=True)
class AccountVerdict:
    """One account's watermark against the suspect."""

    key_id: str
    owner: str
    tier: str
    queries: int
    result: TestResult
    p_adjusted: float  # times the number of accounts tested
    matched: bool


@dataclass
class OwnershipReport:
    """What ``verify`` found: the accounts tested, the one that matched (if any), and the
    queries it cost."""

    suspect: str
    alpha: float
    accounts: list[AccountVerdict] = field(default_factory=list)
    suspect_queries: int = 0
    skipped: list[str] = field(default_factory=list)  # accounts with no watermark inputs
    jitter: float = 0.0  # rows asked as moved copies in their cells (a share of each range)
    unmoved: int = 0  # rows asked as they were: no copy found in their cell

    @property
    def matched(self) -> list[AccountVerdict]:
        return sorted((a for a in self.accounts if a.matched), key=lambda a: a.p_adjusted)

    def to_json(self) -> dict[str, Any]:
        return {"suspect": self.suspect, "alpha": self.alpha,
                "suspect_queries": self.suspect_queries, "skipped": self.skipped,
                "jitter": self.jitter, "unmoved": self.unmoved,
                "matched": [a.key_id for a in self.matched],
                "accounts": [{**{k: v for k, v in asdict(a).items() if k != "result"},
                              **asdict(a.result)} for a in self.accounts]}


def logged_queries(store: Any, key_id: str, model: str) -> tuple[FloatArray, IntArray]:
    """(rows, labels answered) of every answered request ``key_id`` sent to ``model``."""
    rows: list[list[float]] = []
    labels: list[int] = []
    for rec in store.records(key_id=key_id):
        if rec["model"] != model or rec["answer"] == "null":
            continue
        inputs, answer = json.loads(rec["inputs"]), json.loads(rec["answer"])
        if not isinstance(inputs, list) or "labels" not in answer:
            continue
        rows.extend(inputs)
        labels.extend(answer["labels"])
    x = np.asarray(rows, dtype=np.float64)
    return x, np.asarray(labels, dtype=np.int64)


def account_sets(wm: ServeWatermark, store: Any, model: Any, model_name: str,
                 keys: Sequence[Any], controls: int = MAX_CONTROL
                 ) -> list[tuple[Any, WatermarkSet]]:
    """Each key's watermark set, rebuilt from the audit log and the secret, with at most
    ``controls`` of its unmarked cells as the control (drawn at random)."""
    out = []
    for key in keys:
        x, answered = logged_queries(store, key.key_id, model_name)
        if len(x) == 0:
            continue
        out.append((key, watermark_set(wm, key.key_id, x, model, answered=answered,
                                       max_control=controls)))
    return out


def verify(wm: ServeWatermark, store: Any, model: Any, model_name: str,
           suspect: Callable[[FloatArray], Any], suspect_name: str,
           tiers: Sequence[str], account: str | None = None,
           alpha: float = DEFAULT_ALPHA, controls: int = MAX_CONTROL, jitter: float = 0.0
           ) -> OwnershipReport:
    """Test ``suspect`` (rows -> labels, or an answer with scores) against the watermark of
    every account of a watermarked tier (or of ``account`` alone), each with at most
    ``controls`` unmarked cells as its control, on moved copies of the rows with ``jitter``
    (:func:`verify_sets`)."""
    keys = [k for k in store.list_keys() if (account is None and k.tier in tiers)
            or k.key_id == account]
    if account is not None and not keys:
        raise ConfigError(f"--account: no key with id {account!r}.")
    return verify_sets(wm, account_sets(wm, store, model, model_name, keys, controls),
                       suspect, suspect_name, alpha, jitter)


def verify_sets(wm: ServeWatermark, sets: Sequence[tuple[Any, WatermarkSet]],
                suspect: Callable[[FloatArray], Any], suspect_name: str,
                alpha: float = DEFAULT_ALPHA, jitter: float = 0.0, seed: int = 0
                ) -> OwnershipReport:
    """Test ``suspect`` against accounts' watermark sets (from :func:`account_sets`, built
    once for as many suspects as there are: an audit tests every clone of a cell).

    suspect: rows -> its labels, or rows -> an answer with every class's score
    (``.probabilities``, as :class:`~modelshield.answer.Prediction` and a full-score
    :class:`~modelshield.answer.Answer` have). With scores, every account is tested on
    them (:func:`~modelshield.defenses.watermark.score_test`): a clone too smooth to repeat
    the watermark's labels still leans toward them. With labels only, the label test
    (three classes or more) or the control test (two).

    jitter: ask, instead of each row the account sent, a copy moved by about this share of
    each feature's range that stays in the row's cell
    (:meth:`~modelshield.defenses.watermark.ServeWatermark.same_cell_copies`, drawn with
    ``seed``): a suspect that recognises the rows it was trained on, and answers them from
    another model, is asked none of them. The tests stay exact: marked and control rows
    are moved alike, by noise that does not depend on the key."""
    report = OwnershipReport(suspect_name, alpha, jitter=jitter)
    marked = [(key, ws) for key, ws in sets if len(ws.x)]
    report.skipped.extend(key.key_id for key, ws in sets if len(ws.x) == 0)
    if not marked:
        return report
    x = np.concatenate([ws.x for _, ws in marked])
    control_x = np.concatenate([ws.control_x for _, ws in marked])
    if jitter > 0:
        moved, report.unmoved = wm.same_cell_copies(np.concatenate([x, control_x]), jitter,
                                                    np.random.default_rng(seed))
        x, control_x = moved[:len(x)], moved[len(x):]
    got = _Answers.ask(suspect, x, control_x, wm.k)
    report.suspect_queries = got.asked
    at = at_c = 0
    for key, ws in marked:
        w, c = slice(at, at + len(ws.x)), slice(at_c, at_c + len(ws.control_x))
        at, at_c = at + len(ws.x), at_c + len(ws.control_x)
        result = _account_test(wm, ws, got, w, c)
        p_adj = min(1.0, result.p_value * len(marked))
        report.accounts.append(AccountVerdict(key.key_id, key.owner, key.tier, ws.queries,
                                              result, p_adj, p_adj <= alpha))
    return report


@dataclass(frozen=True)
class _Answers:
    """The suspect's answers on the marked rows (``labels``, ``scores``) and on the control
    rows (``c_``; none unless ``with_control``), and how many rows it was asked."""

    labels: IntArray
    scores: FloatArray | None
    c_labels: IntArray
    c_scores: FloatArray | None
    with_control: bool
    asked: int

    @classmethod
    def ask(cls, suspect: Callable[[FloatArray], Any], x: FloatArray, control_x: FloatArray,
            k: int) -> _Answers:
        """Ask the marked rows ``x``, with the control rows where they can be tested: with
        two classes, or where the suspect gives scores."""
        asked = 0
        with_control = k == 2
        if not with_control and len(control_x):
            # Does it give scores? One unmarked row tells, without showing it a marked one.
            _, probe, asked = _ask(suspect, control_x[:1], k)
            with_control = probe is not None
        if not with_control:
            labels, scores, n_asked = _ask(suspect, x, k)
            return cls(labels, scores, np.zeros(0, dtype=np.int64), None, False, asked + n_asked)
        # The marked and the control cells in one request, in an order that does not tell
        # them apart: a suspect cannot answer the watermark's inputs differently.
        labels, scores, n_asked = _ask(suspect, np.concatenate([x, control_x]), k)
        m = len(x)
        return cls(labels[:m], None if scores is None else scores[:m], labels[m:],
                   None if scores is None else scores[m:], True, asked + n_asked)


def _account_test(wm: ServeWatermark, ws: WatermarkSet, got: _Answers, w: slice, c: slice
                  ) -> TestResult:
    """One account's test on its marked rows ``w`` and control rows ``c`` of the answers:
    the score test where the suspect gave scores on both, else the control test (two
    classes) or the label test; with the sequential p-value where every cell was asked."""
    given: tuple[Any, Any] = (got.labels[w], got.c_labels[c])
    has_scores = got.scores is not None and got.c_scores is not None  # on both, or labels
    if got.scores is not None and got.c_scores is not None:
        given = (got.scores[w], got.c_scores[c])
        result = score_test(*given, ws)
    elif wm.k == 2:
        result = control_test(*given, ws)
    else:
        result = label_test(got.labels[w], ws, wm.k)
    if got.with_control and ws.complete:  # every cell asked: the sequential test holds too
        cuts = sequential_cuts(*given, ws, has_scores)
        result = replace(result, p_sequential=sequential_p(cuts, ws.rate))
    return result


def estimator_answer(model: Any, k: int, x: FloatArray) -> Any:
    """A scikit-learn-style model's answer on ``x`` for :func:`verify_sets`: every class's
    score (``predict_proba``, its columns placed by ``classes_``), or its labels when it
    has no scores."""
    if not hasattr(model, "predict_proba"):
        return np.asarray(model.predict(x))
    probs = np.asarray(model.predict_proba(x), dtype=np.float64)
    classes = np.asarray(getattr(model, "classes_", np.arange(probs.shape[1])), dtype=np.int64)
    full = np.zeros((len(x), k))
    full[:, classes] = probs
    return Prediction(full)


def _ask(suspect: Callable[[FloatArray], Any], x: FloatArray, k: int
         ) -> tuple[IntArray, FloatArray | None, int]:
    """The suspect's (labels, scores or None, rows asked) on ``x``, each distinct row once.
    Scores count only when every row has all ``k`` of them."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, k)), 0
    unique, back = np.unique(x, axis=0, return_inverse=True)
    back = back.ravel()
    got = suspect(unique)
    probs = getattr(got, "probabilities", None)
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(unique), k) or not np.isfinite(probs).all():
            probs = None
    labels = np.asarray(got.labels if hasattr(got, "labels") else got, dtype=np.int64)
    return labels[back], None if probs is None else probs[back], len(unique)
