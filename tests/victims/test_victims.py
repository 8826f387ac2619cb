"""Built-in victims: trained from shipped data, disjoint pools, cached, and wrappable models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from modelshield.errors import ConfigError, UnknownNameError
from modelshield.victims import ZOO, Victim, load_model_file, load_victim, wrap_estimator


def _rows(a: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in np.ascontiguousarray(a)}


@pytest.mark.parametrize("name", ["breast-cancer-lr", "digits-mlp", "wine-tree"])
def test_pool_and_test_set_are_disjoint_from_training_data(
        victims: dict[str, Victim], name: str) -> None:
    v = victims[name]
    assert not _rows(v.X_train) & _rows(v.X_test)
    original_pool = v.pool[: len(v.pool) // 9] if v.spec.integer_features else v.pool
    assert not _rows(v.X_train) & _rows(original_pool)


def test_every_built_in_victim_learns_its_task() -> None:
    for name in ZOO:
        v = load_victim(name)
        # Well above chance: the depth-8 tree over 4 classes reaches 0.72 (chance 0.25).
        chance = 1 / v.spec.n_classes
        accuracy = np.mean(v.predict_labels(v.X_test) == v.y_test)
        if name.startswith("tabular-mlp"):
            # Made to memorize 1,000 noisy rows of 10 classes (about 0.5 on unseen rows), or
            # trained by DP-SGD (about 0.18 at epsilon 1, 0.35 at 8): above chance only.
            assert accuracy > (4 if name == "tabular-mlp" else 1.5) * chance, name
            continue
        assert accuracy > 0.7 and accuracy > 1.5 * chance, name
        assert v.spec.n_features == v.X_test.shape[1]
        assert np.all(v.X_test >= v.spec.low) and np.all(v.X_test <= v.spec.high)


def test_the_cache_returns_the_same_model(victims: dict[str, Victim]) -> None:
    again = load_victim("digits-mlp")
    x = victims["digits-mlp"].X_test
    np.testing.assert_array_equal(again.predict(x).probabilities,
                                  victims["digits-mlp"].predict(x).probabilities)


def test_a_victim_whose_build_changed_is_built_again_not_loaded_from_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from modelshield.victims.zoo import ZooEntry, _cached_fit

    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path))
    builds: list[int] = []

    def train(split: object, seed: int) -> dict[str, int]:
        builds.append(seed)
        return {"build": len(builds)}

    entry = ZooEntry("a test entry", "wine", "lr", train)
    assert _cached_fit("x", 0, entry, None) == {"build": 1}  # type: ignore[arg-type]
    assert _cached_fit("x", 0, entry, None) == {"build": 1}  # type: ignore[arg-type]
    newer = replace(entry, revision=1)
    assert _cached_fit("x", 0, newer, None) == {"build": 2}  # type: ignore[arg-type]
    assert _cached_fit("x", 0, newer, None) == {"build": 2}  # type: ignore[arg-type]
    assert len(list(tmp_path.glob("victims/x-seed0*.joblib"))) == 2


def test_a_network_victim_comes_out_the_same_whatever_the_threads_of_the_process_training_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A victim's weights must not depend on the machine's cores: the figures in docs are
    measured on them. With two threads, digits-sized matrix products sum in another
    order; the zoo trains on one, cached or not, and gives the process its threads back."""
    import torch
    from sklearn.datasets import load_digits

    from modelshield.models import TorchMLPClassifier
    from modelshield.victims.zoo import ZooEntry, _cached_fit, _train

    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path))
    X, y = load_digits(return_X_y=True)
    seen: list[int] = []

    def train(split: object, seed: int) -> TorchMLPClassifier:
        seen.append(torch.get_num_threads())
        return TorchMLPClassifier((64, 64), n_classes=10, epochs=3, random_state=seed).fit(X, y)

    entry = ZooEntry("a test entry", "digits", "mlp", train)
    before = torch.get_num_threads()
    try:
        probs = []
        for threads in (2, 1):
            torch.set_num_threads(threads)
            probs.append(_train(entry, None, 0).predict_proba(X))  # type: ignore[arg-type]
            assert torch.get_num_threads() == threads
        torch.set_num_threads(2)
        probs.append(_cached_fit("x", 0, entry, None).predict_proba(X))  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1, 1]
    np.testing.assert_array_equal(probs[0], probs[1])
    np.testing.assert_array_equal(probs[0], probs[2])


def test_tree_node_ids_match_scikit_learn(victims: dict[str, Victim]) -> None:
    v = victims["digits-tree"]
    pred = v.predict(v.X_test)
    tree = v.model.tree  # type: ignore[attr-defined]
    np.testing.assert_array_equal(pred.node_ids, tree.apply(v.X_test.astype(np.float32)))
    np.testing.assert_allclose(pred.probabilities, tree.predict_proba(v.X_test))


def test_any_fitted_classifier_and_joblib_file_can_be_a_victim(
        victims: dict[str, Victim], tmp_path) -> None:  # type: ignore[no-untyped-def]
    import joblib

    base = victims["breast-cancer-lr"]
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(base.X_train,
                                                                         np.arange(len(base.X_train)) % 2)
    v = wrap_estimator(forest, base.X_test, base.y_test, name="forest")
    np.testing.assert_allclose(v.predict(base.X_test).probabilities,
                               forest.predict_proba(base.X_test))
    path = tmp_path / "m.joblib"
    joblib.dump(forest, path)
    adapter = load_model_file(path)
    np.testing.assert_allclose(adapter.predict(base.X_test).probabilities,
                               forest.predict_proba(base.X_test))


def test_onnx_file_can_be_a_victim(victims: dict[str, Victim], tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx

    v = victims["digits-lr"]
    estimator = v.model.estimator  # type: ignore[attr-defined]
    onx = to_onnx(estimator, v.X_test[:1].astype(np.float32), options={"zipmap": False})
    path = tmp_path / "m.onnx"
    path.write_bytes(onx.SerializeToString())
    adapter = load_model_file(path)
    np.testing.assert_allclose(adapter.predict(v.X_test).probabilities,
                               estimator.predict_proba(v.X_test), atol=1e-4)


def test_torch_module_can_be_a_victim() -> None:
    import torch

    from modelshield.victims import TorchAdapter

    module = torch.nn.Linear(3, 2)
    probs = TorchAdapter(module).predict(np.zeros((4, 3))).probabilities
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_unknown_names_and_files_are_config_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownNameError, match="Choose one of: breast-cancer-lr"):
        load_victim("mnist")
    with pytest.raises(ConfigError, match="does not exist"):
        load_model_file(tmp_path / "nope.joblib")
    (tmp_path / "m.bin").write_text("x")
    with pytest.raises(ConfigError, match=r"unknown format '\.bin'"):
        load_model_file(tmp_path / "m.bin")


def test_the_membership_victims_keep_members_non_members_and_population_apart() -> None:
    from modelshield.models import make_estimator
    from modelshield.victims.zoo import membership_task

    for name in ("tabular-mlp", "tabular-mlp-dp8", "digits-mlp-overfit"):
        task = membership_task(name, seed=3)
        make_estimator(task.recipe)  # the recipe the victim was trained from parses
        sets = [task.members, task.non_members, task.population]
        rows = [{r.tobytes() for r in x} for x in sets]
        if name.startswith("tabular"):
            assert [len(x) for x in sets] == [1000, 1000, 2000]
            assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
        else:  # the population: twice as many digits as members, and eight shifts of each
            assert len(task.population) == 9 * 2 * len(task.members)
        assert task.is_member.sum() == len(task.members)
        assert len(task.population_labels) == len(task.population)
