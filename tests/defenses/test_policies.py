"""Each output policy keeps the promise it declares (property tests)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from modelshield.answer import Prediction
from modelshield.defenses import POLICIES, KeyedNoise, parse_policy
from modelshield.errors import ConfigError, UnknownNameError


@st.composite
def predictions(draw: st.DrawFn) -> tuple[Prediction, np.ndarray]:
    n = draw(st.integers(1, 8))
    c = draw(st.integers(2, 6))
    raw = draw(arrays(np.float64, (n, c), elements=st.floats(1e-6, 1.0)))
    probs = raw / raw.sum(axis=1, keepdims=True)
    x = draw(arrays(np.float64, (n, 3), elements=st.floats(-5, 5)))
    return Prediction(probabilities=probs), x


SCORE_POLICIES = ["full", "round:3", "top-k:2", "noise:0.1", "reverse-sigmoid",
                  "mad-argmax:eps=1"]


@pytest.mark.parametrize("spec", [*SCORE_POLICIES, "label"])
@given(case=predictions())
@settings(max_examples=40, deadline=None)
def test_label_is_always_the_true_top1(spec: str, case: tuple[Prediction, np.ndarray]) -> None:
    pred, x = case
    answer = parse_policy(spec).apply(pred, x)
    np.testing.assert_array_equal(answer.labels, pred.labels)


@pytest.mark.parametrize("spec", [s for s in SCORE_POLICIES if parse_policy(s).keeps_top1])
@given(case=predictions())
@settings(max_examples=60, deadline=None)
def test_policies_that_promise_top1_rank_it_first(spec: str,
                                                  case: tuple[Prediction, np.ndarray]) -> None:
    pred, x = case
    answer = parse_policy(spec).apply(pred, x)
    assert answer.probabilities is not None
    np.testing.assert_array_equal(np.nanargmax(answer.probabilities, axis=1), pred.labels)


@given(case=predictions(), decimals=st.integers(0, 6))
@settings(max_examples=60, deadline=None)
def test_rounding_is_within_half_a_unit(case: tuple[Prediction, np.ndarray], decimals: int) -> None:
    pred, x = case
    out = parse_policy(f"round:{decimals}").apply(pred, x).probabilities
    assert out is not None
    assert np.all(np.abs(out - pred.probabilities) <= 0.5 * 10.0**-decimals + 1e-12)
    np.testing.assert_allclose(out, np.round(out, decimals))


@given(case=predictions(), k=st.integers(1, 6))
@settings(max_examples=60, deadline=None)
def test_top_k_reveals_exactly_k_scores(case: tuple[Prediction, np.ndarray], k: int) -> None:
    pred, x = case
    out = parse_policy(f"top-k:{k}").apply(pred, x).probabilities
    assert out is not None
    revealed = ~np.isnan(out)
    assert np.all(revealed.sum(axis=1) == min(k, out.shape[1]))
    np.testing.assert_array_equal(out[revealed], pred.probabilities[revealed])


@given(case=predictions())
@settings(max_examples=40, deadline=None)
def test_keyed_noise_is_deterministic_per_input_and_key(
        case: tuple[Prediction, np.ndarray]) -> None:
    pred, x = case
    policy = KeyedNoise(sigma=0.2, key="k1")
    a = policy.apply(pred, x).probabilities
    b = policy.apply(pred, x.copy()).probabilities
    np.testing.assert_array_equal(a, b)
    assert a is not None
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    other = KeyedNoise(sigma=0.2, key="k2").apply(pred, x).probabilities
    assert not np.array_equal(a, other)


def test_keyed_noise_differs_between_inputs_so_it_is_not_a_constant_offset() -> None:
    probs = np.full((2, 4), 0.25)
    probs[:, 0] = 0.4
    probs /= probs.sum(axis=1, keepdims=True)
    out = KeyedNoise(sigma=0.1).apply(Prediction(probs), np.array([[0.0], [1.0]])).probabilities
    assert out is not None
    assert not np.allclose(out[0], out[1])


def test_reverse_sigmoid_changes_scores_but_keeps_them_a_distribution() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.34, 0.33, 0.33]])
    out = parse_policy("reverse-sigmoid:beta=0.7,gamma=0.4").apply(Prediction(probs),
                                                                  np.zeros((2, 1)))
    assert out.probabilities is not None
    assert not np.allclose(out.probabilities, probs)
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0)


def test_label_policy_withholds_scores() -> None:
    answer = parse_policy("label").apply(Prediction(np.array([[0.2, 0.8]])), np.zeros((1, 1)))
    assert answer.probabilities is None and answer.confidence is None


def test_leaf_confidence_is_the_wilson_lower_bound() -> None:
    counts = np.array([[8.0, 2.0]])
    pred = Prediction(counts / 10, node_ids=np.array([3]), node_counts=counts)
    conf = parse_policy("leaf-confidence").apply(pred, np.zeros((1, 1))).confidence
    assert conf is not None
    # Wilson score interval lower bound for 8/10 at z=1.96 (a textbook value: 0.4902).
    assert conf[0] == pytest.approx(0.4902, abs=1e-4)


def test_tree_policies_refuse_non_tree_predictions() -> None:
    with pytest.raises(ConfigError, match="decision-tree"):
        parse_policy("leaf-id").apply(Prediction(np.array([[0.5, 0.5]])), np.zeros((1, 1)))


@pytest.mark.parametrize(("text", "message"), [
    ("round:x", "'decimals' parameter of policy 'round' must be a int"),
    ("round:-1", "'decimals' parameter must be an integer in \\[0, 15\\]"),
    ("top-k:0", "'k' parameter must be an integer >= 1"),
    ("noise:sigma=2", "'sigma' parameter must be a number in \\[0, 1\\]"),
    ("round:digits=2", "has no parameter 'digits'"),
])
def test_bad_policy_specs_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy(text)


def test_unknown_policy_lists_the_choices() -> None:
    with pytest.raises(UnknownNameError) as info:
        parse_policy("blur")
    for name in POLICIES:
        assert name in str(info.value)


def test_policy_spec_round_trips() -> None:
    for text in ["full", "round:decimals=4", "top-k:k=3", "reverse-sigmoid:beta=0.5,gamma=0.2"]:
        assert parse_policy(text).spec == text


@given(case=predictions(), tau=st.floats(0.3, 0.9))
@settings(max_examples=60, deadline=None)
def test_misinformation_spares_sure_answers_and_misleads_unsure_ones(
        case: tuple[Prediction, np.ndarray], tau: float) -> None:
    pred, x = case
    answer = parse_policy(f"misinform:tau={tau},nu=200").apply(pred, x)
    assert answer.probabilities is not None
    np.testing.assert_allclose(answer.probabilities.sum(axis=1), 1.0)
    ymax = pred.probabilities.max(axis=1)
    sure, unsure = ymax > tau + 0.05, ymax < tau - 0.05
    np.testing.assert_array_equal(answer.labels[sure], pred.labels[sure])
    np.testing.assert_allclose(answer.probabilities[sure], pred.probabilities[sure], atol=1e-3)
    clear = unsure & (np.sort(pred.probabilities, axis=1)[:, -2] < ymax - 1e-6)
    assert np.all(answer.labels[clear] != pred.labels[clear])


def test_misinformation_parameters_are_checked() -> None:
    with pytest.raises(ConfigError, match="tau"):
        parse_policy("misinform:tau=1.5")
    with pytest.raises(ConfigError, match="nu"):
        parse_policy("misinform:tau=0.5,nu=-1")


@pytest.mark.parametrize("name", ["mad", "mad-argmax"])
@given(case=predictions(), eps=st.floats(0.0, 2.0))
@settings(max_examples=60, deadline=None)
def test_prediction_poisoning_stays_within_eps_and_is_the_same_for_the_same_input(
        name: str, case: tuple[Prediction, np.ndarray], eps: float) -> None:
    pred, x = case
    policy = parse_policy(f"{name}:eps={eps}", secret="k1")
    out = policy.apply(pred, x).probabilities
    assert out is not None
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert np.all(out >= 0)
    assert np.all(np.abs(out - pred.probabilities).sum(axis=1) <= eps + 1e-9)
    again = parse_policy(f"{name}:eps={eps}", secret="k1").apply(pred, x.copy()).probabilities
    np.testing.assert_array_equal(out, again)


def test_prediction_poisoning_gram_is_the_surrogates_gradient_gram() -> None:
    """The closed form against autograd on the same surrogate network."""
    torch = pytest.importorskip("torch")
    policy = parse_policy("mad:eps=1,hidden=7", secret="k")
    rng = np.random.default_rng(0)
    x, c = rng.normal(size=(3, 5)), 4
    gram = policy.gram(x, c)
    w1, b1, w2, b2 = (torch.tensor(a, requires_grad=True) for a in policy._net(5, c))
    for i, row in enumerate(x):
        xs = torch.tensor(row / np.sqrt(np.mean(row * row)))
        logp = torch.log_softmax(torch.relu(xs @ w1.T + b1) @ w2.T + b2, dim=0)
        grads = [torch.cat([g.flatten() for g in torch.autograd.grad(
            logp[k], (w1, b1, w2, b2), retain_graph=True)]) for k in range(c)]
        jac = torch.stack(grads).numpy()
        np.testing.assert_allclose(gram[i], jac @ jac.T, rtol=1e-9, atol=1e-9)


def test_prediction_poisoning_turns_the_gradient_further_than_any_other_vertex() -> None:
    """The answer's angle from the truth, in the surrogate's gradient space, is the
    largest among the simplex directions the budget allows."""
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5), size=20)
    pred, x = Prediction(probabilities=probs), rng.normal(size=(20, 6))
    policy = parse_policy("mad:eps=0.6", secret="k")
    out = policy.apply(pred, x).probabilities
    assert out is not None
    gram = policy.gram(x, 5)

    def cos(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
        return float(a @ m @ b / np.sqrt((a @ m @ a) * (b @ m @ b)))

    for i in range(20):
        y = probs[i]
        mine = cos(out[i], y, gram[i])
        for k in range(5):
            e = np.eye(5)[k]
            alpha = min(1.0, 0.6 / np.abs(e - y).sum())
            assert mine <= cos((1 - alpha) * y + alpha * e, y, gram[i]) + 1e-9
        assert mine < 1 - 1e-6


def test_prediction_poisoning_parameters_are_checked() -> None:
    with pytest.raises(ConfigError, match="eps"):
        parse_policy("mad:eps=3")
    with pytest.raises(ConfigError, match="hidden"):
        parse_policy("mad-argmax:hidden=0")
    with pytest.raises(ConfigError, match="takes eps, hidden, key"):
        parse_policy("mad:_nets=1")
