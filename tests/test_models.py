"""The estimators attacks build: scikit-learn conventions and what each computes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification

from modelshield.errors import ConfigError
from modelshield.models import MeanEnsemble, TorchMLPClassifier


def _soft_data() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_classification(300, 6, n_informative=4, n_classes=3, random_state=0)
    soft = np.full((len(y), 3), 0.1)
    soft[np.arange(len(y)), y] = 0.8
    return x, soft


def test_mean_ensemble_averages_members_trained_from_different_seeds() -> None:
    x, soft = _soft_data()
    one = TorchMLPClassifier((16,), n_classes=3, epochs=20, loss="logits")
    ens = MeanEnsemble.seeds(one, 3, random_state=7).fit(x, soft)
    assert [e.random_state for e in ens.estimators_] == [7, 8, 9]
    members = [e.predict_proba(x) for e in ens.estimators_]
    assert not np.allclose(members[0], members[1])  # the seeds make different students
    np.testing.assert_allclose(ens.predict_proba(x), np.mean(members, axis=0))
    np.testing.assert_array_equal(ens.predict(x), ens.predict_proba(x).argmax(axis=1))
    assert ens.n_features_in_ == 6 and list(ens.classes_) == [0, 1, 2]
    # scikit-learn's conventions: the constructor stores, fit learns, clone copies params
    copy = clone(ens)
    assert [e.random_state for e in copy.estimators] == [7, 8, 9]
    assert not hasattr(copy, "estimators_")


def test_mean_ensemble_of_two_losses_and_its_refusals() -> None:
    x, soft = _soft_data()
    ens = MeanEnsemble([TorchMLPClassifier((16,), n_classes=3, epochs=20, loss=loss)
                        for loss in ("logits", "kl")]).fit(x, soft)
    assert [e.loss for e in ens.estimators_] == ["logits", "kl"]
    assert ens.predict_proba(x).shape == (300, 3)
    np.testing.assert_allclose(ens.predict_proba(x).sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ConfigError, match="'members'"):
        MeanEnsemble.seeds(TorchMLPClassifier(), 0, random_state=0)
    with pytest.raises(ConfigError, match="'estimators'"):
        MeanEnsemble([]).fit(x, soft)


def test_torch_mlp_learning_rate_schedule() -> None:
    x, soft = _soft_data()
    runs = {s: TorchMLPClassifier((16,), n_classes=3, epochs=10, schedule=s).fit(x, soft)
            for s in ("cosine", "constant")}
    assert not np.allclose(runs["cosine"].predict_proba(x), runs["constant"].predict_proba(x))
    with pytest.raises(ConfigError, match="'schedule' parameter must be 'cosine' or"):
        TorchMLPClassifier(schedule="step").fit(x, soft)


def test_score_forest_regresses_the_scores_and_completes_withheld_ones() -> None:
    from modelshield.models import ScoreForestClassifier

    x, soft = _soft_data()
    forest = ScoreForestClassifier(50, random_state=3).fit(x, soft)
    # no bootstrap, and leaves split until their scores agree: each training row's own back
    np.testing.assert_allclose(forest.predict_proba(x), soft, atol=1e-12)
    np.testing.assert_array_equal(forest.predict(x), soft.argmax(axis=1))
    assert list(forest.classes_) == [0, 1, 2] and forest.n_features_in_ == 6
    # top-1 answers: the withheld mass is shared over the other classes
    top1 = np.where(soft == 0.8, 0.8, np.nan)
    np.testing.assert_allclose(ScoreForestClassifier(50).fit(x, top1).predict_proba(x), soft,
                               atol=1e-12)
    # labels: one-hot over n_classes, a class no row has included
    labels = ScoreForestClassifier(50, n_classes=4).fit(x, soft.argmax(axis=1))
    assert labels.predict_proba(x).shape == (300, 4)
    assert not hasattr(clone(forest), "forest_")
