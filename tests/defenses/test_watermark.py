"""The serve-time watermark (DAWN): keyed, deterministic, per account, consistent with the
scores, rebuilt from the audit log; and its test never names a model built without it."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from modelshield.answer import Answer, ApiSpec, Prediction
from modelshield.audit.ownership import logged_queries
from modelshield.defenses.watermark import (
    ServeWatermark,
    WatermarkSet,
    control_test,
    joint_set,
    label_test,
    score_test,
    strata_tail,
    watermark_set,
)
from modelshield.errors import ConfigError
from modelshield.oracle import ShieldOracle
from modelshield.serve.factory import build_shield
from modelshield.victims import Victim

SECRET = "watermark-secret-for-the-tests"


def spec(k: int = 4, d: int = 6) -> ApiSpec:
    return ApiSpec(n_features=d, classes=tuple(str(i) for i in range(k)), low=np.zeros(d),
                   high=np.full(d, 10.0))


def test_the_choice_is_keyed_deterministic_and_robust_to_jitter() -> None:
    wm = ServeWatermark(SECRET, spec(), rate=0.05)
    x = np.random.default_rng(0).uniform(0, 10, (20_000, 6))
    chosen, offset = wm.draws("acct-a", x)
    share = chosen.mean()
    assert 0.04 < share < 0.06  # the rate, within sampling error (sd 0.0015)
    assert set(np.unique(offset)) == {1, 2, 3}
    again, offset2 = wm.draws("acct-a", x)
    assert (again == chosen).all() and (offset2 == offset).all()
    # Jitter of 0.1% of the range keeps nearly every input in its cell, so its answer.
    jitter = x + np.random.default_rng(1).normal(0, 0.01, x.shape)
    assert (wm.draws("acct-a", jitter)[0] == chosen).mean() > 0.99
    # Another account's cells are its own; another secret chooses others again.
    other = wm.draws("acct-b", x)[0]
    assert (other & chosen).mean() < 2 * share * share + 0.002
    assert (ServeWatermark("another-secret-entirely", spec(), rate=0.05).draws("acct-a", x)[0]
            & chosen).mean() < 2 * share * share + 0.002


def test_a_watermarked_answer_names_another_class_with_scores_to_match() -> None:
    wm = ServeWatermark(SECRET, spec(), rate=0.2)
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 10, (500, 6))
    probs = rng.dirichlet(np.ones(4), 500)
    out, n = wm.apply("acct", x, Prediction(probs))
    chosen, offset = wm.draws("acct", x)
    assert n == chosen.sum() > 50
    changed = out.labels != Prediction(probs).labels
    assert (changed == chosen).all()
    assert (out.labels[chosen] == (probs.argmax(1)[chosen] + offset[chosen]) % 4).all()
    assert np.allclose(np.sort(out.probabilities, 1), np.sort(probs, 1))  # a permutation
    assert (out.probabilities[~chosen] == probs[~chosen]).all()


@pytest.mark.parametrize("k", [2, 5])
def test_the_test_is_exact_for_models_built_without_the_answers(k: int) -> None:
    """Suspects blind to the key: p-values no smaller than uniform (about 5% at 0.05)."""
    wm = ServeWatermark(SECRET, spec(k), rate=0.05)
    rng = np.random.default_rng(3)

    class Model:
        def predict(self, x: np.ndarray) -> Prediction:
            return Prediction(np.eye(k)[(x[:, 0] > 5).astype(int) % k])

    x = rng.uniform(0, 10, (4000, 6))
    small = 0
    trials = 200
    for t in range(trials):
        ws = watermark_set(wm, f"acct-{t}", x, Model())
        # An independent model: our labels, except on a random 30% of inputs.
        def suspect(rows: np.ndarray) -> np.ndarray:
            y = Model().predict(rows).labels
            flip = rng.random(len(rows)) < 0.3
            return np.where(flip, rng.integers(0, k, len(rows)), y)

        res = label_test(suspect(ws.x), ws, k) if k > 2 else \
            control_test(suspect(ws.x), suspect(ws.control_x), ws)
        small += res.p_value <= 0.05
    assert small / trials <= 0.09
    # A copy that learned the watermark is named.
    ws = watermark_set(wm, "thief", x, Model())
    res = label_test(ws.labels, ws, k) if k > 2 else \
        control_test(ws.labels, ws.control_model_labels, ws)
    assert res.p_value < 1e-10


@pytest.mark.parametrize("k", [2, 5])
def test_accounts_tested_together_name_a_copy_made_over_many_keys(k: int) -> None:
    """An attacker who spreads its queries over 10 keys leaves a tenth of its marks on each:
    the union of their sets names the copy where no key alone does, and stays exact for
    suspects blind to the keys."""
    wm = ServeWatermark(SECRET, spec(k), rate=0.01)

    class Model:
        def predict(self, x: np.ndarray) -> Prediction:
            return Prediction(np.eye(k)[(x[:, 0] > 5).astype(int) % k])

    rng = np.random.default_rng(4)
    x = rng.uniform(0, 10, (1500, 6))
    sets = [watermark_set(wm, f"ring-{i}", part, Model())
            for i, part in enumerate(np.array_split(x, 10))]
    together = joint_set(sets)
    assert together.account == "+".join(f"ring-{i}" for i in range(10))
    assert len(together.x) == sum(len(s.x) for s in sets) and together.queries == 1500

    def test(labels: np.ndarray, control: np.ndarray, ws: WatermarkSet) -> float:
        return (label_test(labels, ws, k) if k > 2 else control_test(labels, control, ws)
                ).p_value

    # The copy answers every input as it was answered (marks included).
    copy = [test(s.labels, s.control_model_labels, s) for s in sets]
    joint = test(together.labels, together.control_model_labels, together)
    assert min(copy) * 11 > 1e-6 and joint * 11 <= 1e-6
    # Suspects blind to the keys: the joint p-value is no smaller than uniform.
    small = 0
    for _ in range(200):
        def blind(rows: np.ndarray) -> np.ndarray:
            y = Model().predict(rows).labels
            return np.where(rng.random(len(rows)) < 0.3, rng.integers(0, k, len(rows)), y)

        small += test(blind(together.x), blind(together.control_x), together) <= 0.05
    assert small / 200 <= 0.09


class Smooth:
    """Our model for the score tests: smooth scores over ``k`` classes."""

    def __init__(self, k: int) -> None:
        self.k = k

    def predict(self, x: np.ndarray) -> Prediction:
        z = np.stack([np.sin(x[:, j % 6] + j) for j in range(self.k)], 1) * 3
        return Prediction(np.exp(z) / np.exp(z).sum(1, keepdims=True))


def test_the_tail_over_accounts_is_the_exact_sum_of_their_draws() -> None:
    """strata_tail against counting every way the marks could have fallen: two accounts of
    4+3 and 2+5 cells (watermarked + control), T holding some cells of each."""
    from itertools import combinations

    parts = ((4, 3), (2, 5))
    in_w, in_c = np.array([1, 1, 0, 1, 1, 0]) == 1, np.array([1, 0, 0, 0, 1, 0, 1, 1]) == 1
    t = [np.r_[in_w[:4], in_c[:3]], np.r_[in_w[4:], in_c[3:]]]  # each account's cells in T
    for hits in range(7):
        count = total = 0
        for a in combinations(range(7), 4):
            for b in combinations(range(7), 2):
                total += 1
                count += t[0][list(a)].sum() + t[1][list(b)].sum() >= hits
        assert strata_tail(parts, in_w, in_c, hits) == pytest.approx(count / total)


@pytest.mark.parametrize("k", [2, 5])
def test_the_score_test_names_a_smooth_copy_and_no_blind_model(k: int) -> None:
    """A copy whose scores lean toward the watermark's label on the marked cells without
    changing its answer there is named on its scores, not on its labels; suspects blind to
    the keys are named no more often than chance, over one key and over ten keys whose
    cells differ (the accounts are tested apart: :func:`strata_tail`)."""
    wm = ServeWatermark(SECRET, spec(k), rate=0.02)

    Model = functools.partial(Smooth, k)

    rng = np.random.default_rng(5)
    x = rng.uniform(0, 10, (1000, 6))
    ws = watermark_set(wm, "thief", x, Model())
    m = len(ws.x)
    assert m >= 10

    def copy(rows: np.ndarray, marked: bool, labels: np.ndarray) -> np.ndarray:
        p = Model().predict(rows).probabilities
        if marked:  # part of the way to the swapped scores: our model's label stays on top
            p[np.arange(len(rows)), labels] = 0.8 * p.max(1)
        p *= np.exp(rng.normal(0, 0.1, (len(rows), k)))
        return p / p.sum(1, keepdims=True)

    probs, control = copy(ws.x, True, ws.labels), copy(ws.control_x, False, ws.control_labels)
    assert (probs.argmax(1) == ws.labels).mean() < 0.3  # mostly not the watermark's label
    assert score_test(probs, control, ws).p_value < 1e-10
    if k > 2:
        assert label_test(probs.argmax(1), ws, k).p_value > 1e-3

    rows = rng.uniform(0, 10, (3000, 6))
    sets = [watermark_set(wm, f"ring-{i}", np.clip(part * (0.3 + 0.07 * i), 0, 10), Model())
            for i, part in enumerate(np.array_split(rows, 10))]
    together = joint_set(sets)
    small = {"one": 0, "ten": 0}
    trials = 150
    for t in range(trials):
        one = watermark_set(wm, f"acct-{t}", x, Model())
        noise = 0.5 + 2 * rng.random()
        for name, w in (("one", one), ("ten", together)):
            # Blind, and further from our model on some accounts' regions than others'.
            res = score_test(_blend(w.x, k, rng, noise), _blend(w.control_x, k, rng, noise), w)
            small[name] += res.p_value <= 0.05
    assert small["one"] / trials <= 0.09 and small["ten"] / trials <= 0.09


def _blend(x: np.ndarray, k: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """A blind suspect: its own smooth rule, noisier where the first feature is large."""
    z = np.stack([np.cos(x[:, (j + 1) % 6] * 0.7 + 2 * j) for j in range(k)], 1) * 2
    z += rng.normal(0, noise, z.shape) * (x[:, :1] / 5)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def config(tmp: Path, **tier: object) -> dict[str, object]:
    return {"model": {"builtin": "wine-tree"}, "audit_url": f"sqlite:///{tmp}/a.db",
            "watermark_secret": SECRET,
            "tiers": {"pro": {"watermark": {"rate": 0.1}, **tier}, "plain": {}}}


def test_the_gateway_watermarks_only_its_tier_and_the_log_rebuilds_the_set(
        tmp_path: Path, victims: dict[str, Victim]) -> None:
    v = victims["wine-tree"]
    shield = build_shield(config(tmp_path, policy="top-k:1"))
    key, record = shield.store.create_key("pro")
    plain, _ = shield.store.create_key("plain")
    x = v.spec.uniform(400, np.random.default_rng(4))
    answer = ShieldOracle(shield, key).query(x)
    truth = v.predict_labels(x)
    wm = shield.watermarks["pro"]
    chosen, _ = wm.draws(record.key_id, x)
    assert ((answer.labels != truth) == chosen).all() and chosen.sum() > 20
    assert np.nanargmax(answer.probabilities, 1).tolist() == answer.labels.tolist()
    assert (ShieldOracle(shield, plain).query(x).labels == truth).all()
    rows, given = logged_queries(shield.store, record.key_id, shield.spec.name)
    ws = watermark_set(wm, record.key_id, rows, v.model, answered=given)
    assert len(ws.x) == len(np.unique(np.array(wm.fingerprints(x[chosen]), dtype=object)))
    assert (ws.labels == v.predict_labels(ws.x)).sum() == 0
    decisions = [json.loads(r["decision"]) for r in shield.store.records(key_id=record.key_id)]
    assert decisions[0]["watermarked"] == chosen.sum()
    shield.close()


def test_config_refuses_what_would_not_work(tmp_path: Path) -> None:
    bad = config(tmp_path)
    bad.pop("watermark_secret")
    with pytest.raises(ConfigError, match="watermark_secret"):
        build_shield(bad)
    with pytest.raises(ConfigError, match="leaf would show"):
        build_shield(config(tmp_path, policy="leaf-id"))
    with pytest.raises(ConfigError, match=r"tiers\.pro\.watermark\.rate"):
        build_shield(config(tmp_path, watermark={"rate": 0.9}))
    lm = config(tmp_path)
    lm["model"] = {"lm": "lm-tiny"}
    with pytest.raises(ConfigError, match="no classes to label"):
        build_shield(lm)


def test_verify_tests_scores_where_the_suspect_gives_them_and_labels_otherwise() -> None:
    """verify_sets: a suspect answering every class's score gets the score test (and is
    asked the key's other cells too); labels, or scores with some withheld (top-k), get
    the label test on the watermarked inputs alone."""
    from types import SimpleNamespace

    from modelshield.audit.ownership import verify_sets

    k = 5
    wm = ServeWatermark(SECRET, spec(k), rate=0.02)

    Model = functools.partial(Smooth, k)

    x = np.random.default_rng(6).uniform(0, 10, (800, 6))
    ws = watermark_set(wm, "acct", x, Model())
    key = SimpleNamespace(key_id="acct", owner="", tier="pro")
    copy = Model()  # answers as we do, marks not learnt: named by neither test
    scored = verify_sets(wm, [(key, ws)], copy.predict, "copy")
    assert scored.accounts[0].result.test == "score"
    # One unmarked row first, to learn whether it gives scores; then every cell.
    assert scored.suspect_queries == 1 + len(ws.x) + len(ws.control_x)
    labels = verify_sets(wm, [(key, ws)], lambda r: copy.predict(r).labels, "copy")
    assert labels.accounts[0].result.test == "label"
    assert labels.suspect_queries == 1 + len(ws.x)
    # Every cell asked: the sequential test too; the marked cells alone: not.
    assert scored.accounts[0].result.p_sequential is not None
    assert labels.accounts[0].result.p_sequential is None

    def top1(rows: np.ndarray) -> Answer:
        got = copy.predict(rows)
        p = got.probabilities.copy()
        p[p < p.max(1, keepdims=True)] = np.nan
        return Answer(got.labels, p, policy="top-k:1")

    assert verify_sets(wm, [(key, ws)], top1, "copy").accounts[0].result.test == "label"
    assert not scored.matched and not labels.matched


@pytest.mark.parametrize("k", [2, 5])
def test_verify_hides_the_marked_cells_among_as_many_controls_as_it_is_told(k: int) -> None:
    """The suspect never gets a request of watermarked inputs alone (it could answer those
    differently): they come mixed with the control, in a sorted order. The control is a
    nested random draw of the key's other cells, and with 100 of them a copy whose scores
    lean toward the watermark is still named, for about a tenth of the queries."""
    from types import SimpleNamespace

    from modelshield.audit.ownership import verify_sets

    wm = ServeWatermark(SECRET, spec(k), rate=0.02)
    model = Smooth(k)
    x = np.random.default_rng(7).uniform(0, 10, (1000, 6))
    full = watermark_set(wm, "acct", x, model)
    few, fewer = (watermark_set(wm, "acct", x, model, max_control=n) for n in (100, 40))
    assert len(few.control_x) == 100 and len(fewer.control_x) == 40
    assert len(full.control_x) > 900 and (few.x == full.x).all()
    in_few = {r.tobytes() for r in few.control_x}
    assert all(r.tobytes() in in_few for r in fewer.control_x)  # nested draws

    marked = {r.tobytes() for r in few.x}
    calls: list[np.ndarray] = []

    def leaning(rows: np.ndarray) -> Prediction:
        calls.append(rows)
        p = model.predict(rows).probabilities
        for i, r in enumerate(rows):
            if r.tobytes() in marked:  # leans toward the watermark's label, keeps ours on top
                j = int(few.labels[[m.tobytes() for m in few.x].index(r.tobytes())])
                p[i, j] = 0.8 * p[i].max()
        return Prediction(p / p.sum(1, keepdims=True))

    key = SimpleNamespace(key_id="acct", owner="", tier="pro")
    report = verify_sets(wm, [(key, few)], leaning, "copy")
    assert report.matched and report.accounts[0].result.test == "score"
    assert report.suspect_queries == len(few.x) + 100 + (k > 2)
    assert report.accounts[0].result.p_sequential is None  # a cut control: it would not hold
    for rows in calls:
        has = [r.tobytes() in marked for r in rows]
        assert not any(has) or not all(has)
        assert (np.lexsort(rows.T[::-1]) == np.arange(len(rows))).all()  # sorted rows
    assert report.suspect_queries < 0.15 * (len(full.x) + len(full.control_x))


def test_same_cell_copies_move_every_row_and_keep_its_cell() -> None:
    wm = ServeWatermark(SECRET, spec(3, 8), rate=0.02)
    x = np.random.default_rng(8).uniform(0, 10, (500, 8))
    moved, unmoved = wm.same_cell_copies(x, 0.01, np.random.default_rng(0))
    assert unmoved == 0 and not (moved == x).all(axis=1).any()
    assert wm.fingerprints(moved) == wm.fingerprints(x)
    assert (moved >= 0).all() and (moved <= 10).all()  # inside the domain
    assert np.median(np.abs(moved - x)) > 0.01  # about 1% of the range of 10, each feature
    # Too large a move with a single round: the rows that found no copy are asked as sent.
    far, left = wm.same_cell_copies(x, 0.5, np.random.default_rng(0), rounds=1)
    kept = (far == x).all(axis=1)
    assert left == kept.sum() > 0 and wm.fingerprints(far) == wm.fingerprints(x)
    again, _ = wm.same_cell_copies(x, 0.01, np.random.default_rng(0))
    assert (again == moved).all()  # the seed fixes the copies
    flat = ApiSpec(n_features=3, classes=("a", "b"), low=np.zeros(3),
                   high=np.array([10.0, 0.0, 10.0]))  # a constant feature stays put
    rows = np.random.default_rng(9).uniform(0, 10, (50, 3))
    rows[:, 1] = 0.0
    copies, _ = ServeWatermark(SECRET, flat).same_cell_copies(rows, 0.01,
                                                               np.random.default_rng(0))
    assert (copies[:, 1] == 0).all() and (copies[:, 0] != rows[:, 0]).all()


@pytest.mark.parametrize("k", [2, 5])
def test_verify_on_moved_copies_traces_a_suspect_that_answers_its_old_rows_apart(k: int) -> None:
    """A clone whose scores lean toward the watermark in the marked cells, served by a thief
    who answers every row it was trained on from a model built without our answers: asked
    the rows as sent, it shows nothing; asked moved copies in the same cells, it is named,
    and none of the rows it is asked is one the key sent."""
    from types import SimpleNamespace

    from modelshield.audit.ownership import verify_sets

    wm = ServeWatermark(SECRET, spec(k), rate=0.02)
    model = Smooth(k)
    x = np.random.default_rng(9).uniform(0, 10, (1000, 6))
    ws = watermark_set(wm, "acct", x, model)
    label_of = dict(zip(wm.fingerprints(ws.x), ws.labels.tolist(), strict=True))
    sent = {r.tobytes() for r in x}
    asked: list[np.ndarray] = []

    def thief(rows: np.ndarray) -> Prediction:
        asked.append(rows)
        p = model.predict(rows).probabilities
        for i, (r, f) in enumerate(zip(rows, wm.fingerprints(rows), strict=True)):
            if r.tobytes() in sent:  # one of its own rows: answered as we would
                continue
            if f in label_of:  # the clone learnt the watermark in the cell
                p[i, label_of[f]] = 0.8 * p[i].max()
        return Prediction(p / p.sum(1, keepdims=True))

    key = SimpleNamespace(key_id="acct", owner="", tier="pro")
    plain = verify_sets(wm, [(key, ws)], thief, "thief")
    assert not plain.matched and plain.accounts[0].p_adjusted > 0.01
    asked.clear()
    moved = verify_sets(wm, [(key, ws)], thief, "thief", jitter=0.005, seed=1)
    assert moved.matched and moved.accounts[0].result.test == "score"
    assert moved.jitter == 0.005 and moved.unmoved == 0
    assert not any(r.tobytes() in sent for rows in asked for r in rows)
    assert moved.to_json()["jitter"] == 0.005


@pytest.mark.parametrize("rate", [0.005, 0.02, 0.2])
def test_the_sequential_e_value_has_mean_one_and_its_p_value_holds(rate: float) -> None:
    """Marks drawn with chance ``rate`` in n cells a suspect picked blind to them: the
    e-value's mean over every count of marks is exactly 1, so P(p <= a) <= a."""
    from scipy import stats

    from modelshield.defenses.watermark import sequential_log_e, sequential_p

    n = 60
    pmf = stats.binom.pmf(np.arange(n + 1), n, rate)

    def cut(h: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(np.ones(h, dtype=bool), np.ones(n - h, dtype=bool))]

    e = np.exp([sequential_log_e(cut(h), rate) for h in range(n + 1)])
    assert float(pmf @ e) == pytest.approx(1.0, rel=1e-9)
    p = np.array([sequential_p(cut(h), rate) for h in range(n + 1)])
    for a in (0.2, 0.05, 1e-3, 1e-6):
        assert pmf[p <= a].sum() <= a
    assert p[0] == 1.0 and p[-1] < 1e-6  # every cell marked: the bets pay
    for bets in ([0.5, 1.0], [-0.1], []):  # all in: one unmarked cell would lose everything
        with pytest.raises(ValueError, match="bets"):
            sequential_log_e(cut(1), rate, bets)


def test_the_sequential_test_holds_for_an_account_that_follows_its_answers() -> None:
    """An account that, after each answer, sends its next row beside the rows whose
    answers were changed (as an active learner seeks the boundary a mark draws), and
    suspects built without its answers: the sequential p-value stays at or above chance;
    a suspect that leans toward the marks is named by it."""
    from types import SimpleNamespace

    from modelshield.audit.ownership import verify_sets

    k, rate = 3, 0.05
    wm = ServeWatermark(SECRET, spec(k), rate=rate)
    model = Smooth(k)
    rng = np.random.default_rng(10)
    low = np.zeros(6)
    p_null, p_clone = [], []
    for account in range(40):
        rows = [rng.uniform(0, 10, 6)]
        for _ in range(199):
            chosen, _ = wm.draws(f"acct{account}", np.array(rows[-1:]))
            step = 0.4 if chosen[0] else 3.0  # near a changed answer, or elsewhere
            rows.append(np.clip(rows[-1] + rng.normal(0, step, 6), low, 10))
        ws = watermark_set(wm, f"acct{account}", np.array(rows), model)
        key = SimpleNamespace(key_id=f"acct{account}", owner="", tier="pro")
        phase = rng.uniform(0, 6)

        def independent(x: np.ndarray, phase: float = phase) -> Prediction:
            z = np.stack([np.sin(x[:, j % 6] + j + phase) for j in range(k)], 1) * 3
            return Prediction(np.exp(z) / np.exp(z).sum(1, keepdims=True))

        got = verify_sets(wm, [(key, ws)], independent, "independent").accounts[0].result
        assert got.p_sequential is not None
        p_null.append(got.p_sequential)
        if account < 5:
            marked = dict(zip(wm.fingerprints(ws.x), ws.labels.tolist(), strict=True))

            def leaning(x: np.ndarray, marked: dict[bytes, int] = marked) -> Prediction:
                p = model.predict(x).probabilities
                for i, f in enumerate(wm.fingerprints(x)):
                    if f in marked:
                        p[i, marked[f]] = 0.8 * p[i].max()
                return Prediction(p / p.sum(1, keepdims=True))

            p_clone.append(verify_sets(wm, [(key, ws)], leaning, "clone")
                           .accounts[0].result.p_sequential)
    assert np.mean(np.array(p_null) <= 0.1) <= 0.1 + 3 * (0.1 * 0.9 / 40) ** 0.5
    assert min(p_null) > 1e-3 and max(p_clone) <= 1e-3
