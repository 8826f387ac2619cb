"""A suspect to test for a watermark: a model file answers through its adapter; a URL
needs a key before anything is sent."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from modelshield.errors import ConfigError
from modelshield.oracle.suspect import is_url, open_suspect


def test_a_model_file_answers_with_its_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    joblib.dump(LogisticRegression().fit(X, y), tmp_path / "m.joblib")
    s = open_suspect(str(tmp_path / "m.joblib"), 3)
    try:
        assert list(s.predict(X[:5]).labels) == list(y[:5])
    finally:
        s.close()


def test_a_url_suspect_needs_a_key() -> None:
    assert is_url("https://api.example.com") and not is_url("clone.joblib")
    with pytest.raises(ConfigError, match="--suspect-key"):
        open_suspect("http://127.0.0.1:9", 3)

