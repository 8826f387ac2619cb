"""A victim: a trained model plus what its owner knows about it.

The model itself sits behind :class:`ModelAdapter` (scikit-learn, PyTorch, ONNX), which turns
a batch of inputs into a :class:`~modelshield.answer.Prediction`. Only the oracle and the
evaluation ever call it; attacks never see a Victim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier

from modelshield.answer import ApiSpec, FloatArray, IntArray, Prediction


class ModelAdapter(Protocol):
    """Anything that maps a batch of inputs to class probabilities."""

    def predict(self, inputs: FloatArray) -> Prediction: ...


@dataclass
class Victim:
    """A served model with its test set, its domain, and an attacker's natural data.

    pool: data an attacker could plausibly own (same distribution, disjoint from the
        victim's training data); never labelled by the victim.
    kind: "linear", "mlp", "tree" or "model" (anything else); attacks do not read it.
    """

    name: str
    model: ModelAdapter
    spec: ApiSpec
    X_test: FloatArray
    y_test: IntArray
    pool: FloatArray
    X_train: FloatArray
    kind: str = "model"
    description: str = ""
    parameters: dict[str, FloatArray] = field(default_factory=dict)

    @property
    def calibration(self) -> FloatArray:
        """The owner's held-out natural rows the detectors are calibrated on: every other
        test row (the first, third, ...). Disjoint from the training data and from the
        attacker's pool."""
        return self.X_test[0::2]

    @property
    def honest(self) -> FloatArray:
        """The test rows the detectors were not calibrated on: what honest customers send
        in the audit and the benchmarks, so that false positives are measured on rows the
        calibration never saw."""
        return self.X_test[1::2]

    def predict(self, inputs: FloatArray) -> Prediction:
        return self.model.predict(np.asarray(inputs, dtype=np.float64))

    def predict_labels(self, inputs: FloatArray) -> IntArray:
        return self.predict(inputs).labels


@dataclass(frozen=True)
class MembershipTask:
    """Who is in a victim's training data: the ground truth membership inference is scored
    against, and the attacker's own labelled data.

    members / non_members: training rows and rows of the same distribution the model never
    saw (its test set), with their true labels. population: the attacker's labelled data,
    disjoint from both. recipe: how the victim was trained (``models.make_estimator``), for
    an attacker who knows the procedure (LiRA's threat model); empty if no recipe made it.
    """

    victim: str
    members: FloatArray
    member_labels: IntArray
    non_members: FloatArray
    non_member_labels: IntArray
    population: FloatArray
    population_labels: IntArray
    recipe: str = ""

    @property
    def candidates(self) -> FloatArray:
        """Members, then non-members: what the attacker is asked about."""
        return np.concatenate([self.members, self.non_members])

    @property
    def labels(self) -> IntArray:
        return np.concatenate([self.member_labels, self.non_member_labels])

    @property
    def is_member(self) -> NDArray[np.bool_]:
        return np.arange(len(self.members) + len(self.non_members)) < len(self.members)


class SklearnAdapter:
    """A fitted scikit-learn classifier (or pipeline) with ``predict_proba``.

    Decision trees (alone or at the end of a pipeline of stateless steps) also report the
    node each input reached. A feature given as NaN stops the path at the first node that
    tests it — how BigML answered incomplete queries — and that node answers.
    """

    def __init__(self, estimator: Any) -> None:
        if not hasattr(estimator, "predict_proba"):
            raise TypeError(f"{type(estimator).__name__} has no predict_proba")
        self.estimator = estimator
        final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
        self.tree = final if isinstance(final, DecisionTreeClassifier) else None

    def predict(self, inputs: FloatArray) -> Prediction:
        if self.tree is not None:
            return self._tree_predict(inputs)
        probs = np.asarray(self.estimator.predict_proba(inputs), dtype=np.float64)
        return Prediction(probabilities=probs)

    def _tree_predict(self, inputs: FloatArray) -> Prediction:
        t = self.tree.tree_  # type: ignore[union-attr]
        # scikit-learn compares float32 inputs against float64 thresholds; do the same.
        x = inputs.astype(np.float32).astype(np.float64)
        node = np.zeros(len(x), dtype=np.int64)
        active = t.children_left[node] >= 0
        while active.any():
            idx = np.flatnonzero(active)
            f = t.feature[node[idx]]
            values = x[idx, f]
            missing = np.isnan(values)
            go_left = values <= t.threshold[node[idx]]
            nxt = np.where(go_left, t.children_left[node[idx]], t.children_right[node[idx]])
            node[idx] = np.where(missing, node[idx], nxt)
            active[idx[missing]] = False
            active &= t.children_left[node] >= 0
        counts = t.value[node][:, 0, :] * t.weighted_n_node_samples[node][:, None]
        probs = counts / counts.sum(axis=1, keepdims=True)
        return Prediction(probabilities=probs, node_ids=node, node_counts=counts)


class TorchAdapter:
    """A PyTorch module mapping (n, d) float inputs to (n, c) logits."""

    def __init__(self, module: Any) -> None:
        import torch

        self.module = module.eval()
        self._torch = torch

    def predict(self, inputs: FloatArray) -> Prediction:
        torch = self._torch
        param = next(self.module.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        with torch.no_grad():
            logits = self.module(torch.as_tensor(inputs, dtype=dtype))
            probs = torch.softmax(logits.double(), dim=1).numpy()
        return Prediction(probabilities=probs)


class OnnxAdapter:
    """An ONNX classifier run by onnxruntime; the output named like 'prob' is used."""

    def __init__(self, path: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise ImportError("ONNX victims need: pip install 'modelshield[onnx]'") from exc
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = next((o for o in outputs if "prob" in o.lower()), outputs[-1])

    def predict(self, inputs: FloatArray) -> Prediction:
        feed = {self.input_name: inputs.astype(np.float32)}
        out = self.session.run([self.output_name], feed)[0]
        if isinstance(out, list):  # skl2onnx's ZipMap: a list of {class: prob}
            out = np.array([[row[k] for k in sorted(row)] for row in out])
        return Prediction(probabilities=np.asarray(out, dtype=np.float64))
