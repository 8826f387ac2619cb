"""A model served elsewhere over the Open Inference Protocol (KServe v2), as an adapter.

The gateway then sits in front of it: every request passes the Shield here and only the
model's work goes upstream (``POST {url}/v2/models/{name}/infer``). The upstream must return
an output named ``probabilities`` (or, failing that, the first FP output) of shape (n, c).
"""

from __future__ import annotations

import httpx
import numpy as np

from modelshield.answer import FloatArray, Prediction
from modelshield.errors import OracleError


class V2Upstream:
    def __init__(self, url: str, model: str, timeout: float = 30.0) -> None:
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self.path = f"/v2/models/{model}/infer"

    def predict(self, inputs: FloatArray) -> Prediction:
        body = {"inputs": [{"name": "input-0", "shape": list(inputs.shape), "datatype": "FP64",
                            "data": inputs.ravel().tolist()}]}
        try:
            resp = self.client.post(self.path, json=body)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise OracleError(f"upstream model failed: {exc}") from None
        outputs = resp.json()["outputs"]
        out = next((o for o in outputs if o["name"] == "probabilities"),
                   next(o for o in outputs if o["datatype"].startswith("FP")))
        probs = np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
        return Prediction(probabilities=probs)

    def close(self) -> None:
        self.client.close()
