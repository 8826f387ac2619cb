"""HttpOracle: the gateway's REST API as an oracle, with an API key.

The API's contract (input width, classes, domain) comes from ``GET /v2/models/{name}``;
each query batch is one ``POST /v1/models/{name}/predict`` (``protocol="rest"``) or one
``POST /v2/models/{name}/infer`` (``protocol="v2"``, the Open Inference Protocol). A refusal
(rate limit, suspended key) raises :class:`Blocked` with the HTTP status; with ``pace``, a
rate limit's 429 is waited out (its ``Retry-After``, up to ``pace`` seconds a wait) and the
request sent again, as a low-and-slow attacker does.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np

from modelshield.answer import Answer, ApiSpec, FloatArray
from modelshield.errors import Blocked, ConfigError, Denied, OracleError, Refused
from modelshield.oracle.base import BaseOracle

PACED_TRIES = 64  # waits per request, at most


class HttpOracle(BaseOracle):
    """Query a modelshield gateway (or any server speaking its v1 predict route)."""

    def __init__(self, url: str, api_key: str, *, model: str | None = None,
                 client: httpx.Client | None = None, timeout: float = 30.0,
                 protocol: str = "rest", pace: float | None = None, **kwargs: Any) -> None:
        if protocol not in ("rest", "v2"):
            raise ConfigError.invalid("protocol", "rest or v2", protocol)
        if pace is not None and pace <= 0:
            raise ConfigError.invalid("pace", "a number of seconds > 0", pace)
        self.protocol, self.pace, self.waited = protocol, pace, 0.0
        self._owns_client = client is None
        self.client = client or httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.model = model or ""
        try:
            self.model = model or self._only_model()
            spec = self._spec()
        except BaseException:
            self.close()  # a target that cannot be used leaves no connection open
            raise
        super().__init__(spec, **kwargs)
        try:
            account = self.check_key()
        except ConfigError:
            account = None  # a refused key: the first query says so
        if account and account.get("max_batch"):
            self.max_batch = int(account["max_batch"])

    def close(self) -> None:
        """Close the HTTP client (when this oracle made it)."""
        if self._owns_client:
            self.client.close()

    def check_key(self) -> dict[str, Any] | None:
        """The key's account (``GET /v1/account``), or ConfigError when the key is refused;
        None when the server has no such route (it then speaks only the v1/v2 protocol)."""
        try:
            resp = self.client.get("/v1/account", headers=self.headers,
                                   params={"model": self.model} if self.model else None)
        except httpx.HTTPError as exc:
            raise ConfigError(f"Cannot reach the target: {exc}") from None
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ConfigError(f"The target refused the API key: HTTP {resp.status_code}: "
                              f"{resp.text[:200]}")
        out: dict[str, Any] = resp.json()
        return out

    def _get(self, path: str) -> Any:
        return get_json(self.client, path, self.headers)

    def _only_model(self) -> str:
        models = self._get("/v2").get("models", [])
        if not models:  # the gateway lists only what the key may use: a refused key says so
            self.check_key()
        if len(models) != 1:
            raise ConfigError(f"The target serves {models}; name one (model=...).")
        return str(models[0])

    def _spec(self) -> ApiSpec:
        meta = self._get(f"/v2/models/{self.model}")
        p = meta["parameters"]
        return ApiSpec(n_features=int(meta["inputs"][0]["shape"][1]),
                       classes=tuple(p["classes"]), low=np.asarray(p["low"], float),
                       high=np.asarray(p["high"], float),
                       accepts_missing=bool(p["accepts_missing"]),
                       integer_features=bool(p["integer_features"]), name=self.model)

    def _answer(self, inputs: FloatArray) -> Answer:
        path, payload = self._request(inputs)
        body = self._body(self._post(path, payload))
        return _to_answer(_from_v2(body) if self.protocol == "v2" else body)

    def _request(self, inputs: FloatArray) -> tuple[str, dict[str, Any]]:
        """The route and JSON body that ask ``inputs`` (missing values as null)."""
        rows = [[None if np.isnan(v) else float(v) for v in row] for row in inputs]
        if self.protocol == "v2":
            return f"/v2/models/{self.model}/infer", {"inputs": [{
                "name": "input-0", "shape": list(inputs.shape), "datatype": "FP64",
                "data": [v for row in rows for v in row]}]}
        return f"/v1/models/{self.model}/predict", {"inputs": rows}

    def _post(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        """Send the request; with ``pace``, wait out a rate limit's 429 and send again (at
        most ``PACED_TRIES`` times)."""
        for tries in range(PACED_TRIES + 1):
            try:
                resp = self.client.post(path, json=payload, headers=self.headers)
            except httpx.HTTPError as exc:
                raise OracleError(f"the target did not answer: {exc}") from None
            wait = self._wait(resp)
            if wait is None or tries == PACED_TRIES:  # a request no window lets through
                break
            time.sleep(wait)
            self.waited += wait
        return resp

    def _body(self, resp: httpx.Response) -> Any:
        """The answer's JSON; a refusal raises :class:`Blocked` with the target's code."""
        try:
            body = resp.json()
        except ValueError:
            raise OracleError(f"the target answered HTTP {resp.status_code} without JSON: "
                              f"{resp.text[:200]}") from None
        if resp.status_code != 200:
            err = body.get("error", {}) if isinstance(body, dict) else {}
            if not isinstance(err, dict):  # KServe v2: the message flat, fields beside it
                err = {"message": str(err), "code": body.get("code", "error")}
            raise Blocked(Denied(resp.status_code, err.get("code", "error"),
                                 err.get("message", resp.text[:200])), self.used)
        return body

    def _wait(self, resp: httpx.Response) -> float | None:
        """Seconds to wait before sending again: a rate limit's 429 with a Retry-After
        within ``pace``; None to take the answer (or the refusal) as it is."""
        if self.pace is None or resp.status_code != 429:
            return None
        try:
            retry = float(resp.headers.get("Retry-After", ""))
        except ValueError:
            return None
        return max(retry, 0.05) if retry <= self.pace else None


def _to_answer(body: dict[str, Any]) -> Answer:
    """The REST route's fields as an :class:`Answer` (null scores: withheld, NaN)."""
    probs = body.get("probabilities")
    return Answer(
        labels=np.asarray(body["labels"], dtype=np.int64),
        probabilities=None if probs is None else np.array(
            [[np.nan if v is None else v for v in row] for row in probs], dtype=np.float64),
        confidence=None if "confidence" not in body else np.asarray(body["confidence"]),
        leaf_ids=None if "leaf_ids" not in body else np.asarray(body["leaf_ids"]),
        policy=body.get("policy", ""),
    )


def _from_v2(body: dict[str, Any]) -> dict[str, Any]:
    """A v2 inference response's output tensors as the REST route's fields."""
    names = {"label": "labels", "leaf_id": "leaf_ids"}
    out: dict[str, Any] = {"policy": body.get("parameters", {}).get("policy", "")}
    for t in body.get("outputs", []):
        data = t["data"]
        if len(t["shape"]) == 2:
            width = t["shape"][1]
            data = [data[i:i + width] for i in range(0, len(data), width)]
        out[names.get(t["name"], t["name"])] = data
    return out


def get_json(client: httpx.Client, path: str, headers: dict[str, str]) -> Any:
    """GET a JSON document of the target, or ConfigError saying why not."""
    try:
        resp = client.get(path, headers=headers)
    except httpx.HTTPError as exc:
        raise ConfigError(f"Cannot reach the target: {exc}") from None
    if resp.status_code != 200:
        raise ConfigError(f"GET {path}: HTTP {resp.status_code}: {resp.text[:200]}")
    return resp.json()


def post_openai(client: httpx.Client, path: str, body: dict[str, Any],
                headers: dict[str, str], used: int) -> Any:
    """POST to an OpenAI-compatible route: the JSON answer, or Refused with the server's
    error (``used``: the queries spent before), or OracleError when it did not answer."""
    try:
        resp = client.post(path, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise OracleError(f"the target did not answer: {exc}") from None
    try:
        data = resp.json()
    except ValueError:
        raise OracleError(f"HTTP {resp.status_code} without JSON: {resp.text[:200]}") from None
    if resp.status_code != 200:
        err = data.get("error", {}) if isinstance(data, dict) else {}
        raise Refused(resp.status_code, str(err.get("code")), str(err.get("message")),
                      err.get("param"), used)
    return data
