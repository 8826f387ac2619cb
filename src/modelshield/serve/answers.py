"""An :class:`~modelshield.answer.Answer` as each protocol writes it: the gateway's own
JSON (``/v1``) and the Open Inference Protocol's output tensors (``/v2``). A missing
score (NaN) is written as null."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelshield.answer import Answer


def v1_body(answer: Answer, model: str) -> dict[str, Any]:
    """The body of ``POST /v1/models/{model}/predict``."""
    out: dict[str, Any] = {"model": model, "labels": answer.labels.tolist(),
                           "policy": answer.policy}
    if answer.probabilities is not None:
        out["probabilities"] = _rows_nan_to_none(answer.probabilities)
    if answer.confidence is not None:
        out["confidence"] = answer.confidence.tolist()
    if answer.leaf_ids is not None:
        out["leaf_ids"] = answer.leaf_ids.tolist()
    return out


def v2_body(answer: Answer, model: str, request_id: str | None) -> dict[str, Any]:
    """The body of ``POST /v2/models/{model}/infer``: one output tensor a field."""
    n = len(answer)
    outputs = [{"name": "label", "shape": [n], "datatype": "INT64",
                "data": answer.labels.tolist()}]
    if answer.probabilities is not None:
        p = answer.probabilities
        outputs.append({"name": "probabilities", "shape": list(p.shape), "datatype": "FP64",
                        "data": _nan_to_none(p)})
    if answer.confidence is not None:
        outputs.append({"name": "confidence", "shape": [n], "datatype": "FP64",
                        "data": answer.confidence.tolist()})
    if answer.leaf_ids is not None:
        outputs.append({"name": "leaf_id", "shape": [n], "datatype": "INT64",
                        "data": answer.leaf_ids.tolist()})
    return {"model_name": model, "id": request_id, "outputs": outputs,
            "parameters": {"policy": answer.policy}}


def _nan_to_none(a: np.ndarray) -> list[Any]:
    """A flat list of ``a``'s values with NaN as None (JSON null)."""
    values = a.ravel().tolist()
    if not np.isnan(a).any():
        return values
    return [None if isinstance(v, float) and v != v else v for v in values]


def _rows_nan_to_none(a: np.ndarray) -> list[Any]:
    """``a``'s rows as lists, with NaN as None (JSON null)."""
    if not np.isnan(a).any():
        return list(a.tolist())
    return [_nan_to_none(row) for row in a]
