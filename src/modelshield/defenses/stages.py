"""The Shield's stages: one interface, one ordered list per kind of model.

A stage is a callable on a :class:`Call`, the one request as it passes; it reads what the
stages before it left there, adds its own part, or refuses by raising
:class:`~modelshield.errors.Denied`. The Shield runs its list in order::

    classifier:      authenticate -> check inputs -> limit -> model -> detect -> watermark
                     -> shape -> record
    language model:  authenticate -> check request -> limit requests -> size bound
                     -> tokenize -> system prompt -> check prompts -> limit tokens
                     -> detect -> generate -> leak filter -> record  (defenses/lm_stages.py)

(A language model's detectors watch the request, so they run before the tokens are spent.)
Every stage holds the Shield for its services: the key and audit store, the rate limiter,
the detector state, the tiers' policies and detectors. A new defense is a new stage in the
list (``Shield.stages`` / ``Shield.lm_stages``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from limits import RateLimitItem

from modelshield.answer import Answer, FloatArray, LMChoice, LMRequest, Prediction
from modelshield.defenses.config import Limits, Tier
from modelshield.defenses.detectors import Detector, fresh_rows, record_rows, seen_read
from modelshield.defenses.limits_batch import Hit, RedisMovingWindowBatch
from modelshield.defenses.llm import Delta, Generation, shape_choices
from modelshield.defenses.state import STORE_ERRORS, Read, RedisState
from modelshield.errors import Denied, OracleError
from modelshield.store import ApiKey, AuditRecord

if TYPE_CHECKING:
    from modelshield.defenses.shield import Decision, Shield

MAX_KEY_CHARS = 256
"""Issued keys are 52 characters; anything longer than this is refused unread."""


@dataclass
class Call:
    """One request as it passes the stages."""

    api_key: str | None
    client_ip: str
    decision: Decision
    inputs: Any = None  # a classifier's rows, as sent
    req: LMRequest | None = None  # a language model's request, tokenized
    # Streaming: each step's tokens; returning False says the reader is gone.
    on_step: Callable[[Decision, list[Delta]], bool | None] | None = None
    x: FloatArray | None = None  # the rows once checked
    prediction: Any = None
    answer: Answer | None = None
    choices: list[LMChoice] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)  # once it is answered
    _key: ApiKey | None = field(default=None, repr=False)
    _tier: Tier | None = field(default=None, repr=False)

    def admit(self, key: ApiKey, tier: Tier) -> None:
        self._key, self._tier = key, tier

    @property
    def key(self) -> ApiKey:
        """The caller's key (Authenticate, the first stage, sets it)."""
        if self._key is None:
            raise RuntimeError("a stage ran before Authenticate")
        return self._key

    @property
    def lm_request(self) -> LMRequest:
        if self.req is None:
            raise RuntimeError("a language-model stage ran on a classifier request")
        return self.req

    @property
    def tier(self) -> Tier:
        if self._tier is None:
            raise RuntimeError("a stage ran before Authenticate")
        return self._tier


class Stage(Protocol):
    name: ClassVar[str]

    def __call__(self, call: Call) -> None: ...


class _Stage:
    name: ClassVar[str]

    def __init__(self, shield: Shield) -> None:
        self.shield = shield

    def __call__(self, call: Call) -> None:
        raise NotImplementedError


class Authenticate(_Stage):
    """The key, before anything else: a key longer than any issued is refused unread; an
    address past its failed-authentication limit gets 429 instead of 401."""

    name = "authenticate"

    def __call__(self, call: Call) -> None:
        key = self.key(call.api_key, call.client_ip, call.decision)
        call.admit(key, self.shield.config.tiers[key.tier])

    def key(self, api_key: str | None, ip: str, decision: Decision,
            tier: bool = True) -> ApiKey:
        s = self.shield
        if not api_key:  # a missing key is a failed authentication too
            self._failed(ip)
            raise Denied(401, "missing_key", "An API key is required (Authorization: Bearer KEY).")
        cached = s.store.cached(api_key) if len(api_key) <= MAX_KEY_CHARS else None
        if cached is None:  # an address past its failures is refused before any lookup
            self._blocked(ip)
        key = cached or (s.store.lookup(api_key) if len(api_key) <= MAX_KEY_CHARS else None)
        if key is None:
            self._failed(ip)
            raise Denied(401, "invalid_key", "The API key is not valid" + (
                f" (keys are at most {MAX_KEY_CHARS} characters)." if len(api_key) >
                MAX_KEY_CHARS else "."))
        decision.key_id = key.key_id
        if not key.usable(s.clock()):
            why = "revoked" if key.revoked_at is not None else "expired"
            raise Denied(403, f"key_{why}", "The API key " + (
                "was revoked." if why == "revoked" else "has expired."))
        if tier and key.tier not in s.config.tiers:
            raise Denied(403, "unknown_tier", f"The key's tier {key.tier!r} is not offered on "
                         f"{s.spec.name!r}.")
        decision.tier = key.tier
        return key

    def _blocked(self, ip: str) -> None:
        """Refuse (429) an address already past its failed-authentication limit, without
        charging it (a valid key the store has cached never gets here)."""
        self._auth_limit(ip, charge=False)

    def _failed(self, ip: str) -> None:
        """Count a failed authentication of ``ip``; past its limit, refuse with 429. A
        valid key costs no trip to the limits store."""
        self._auth_limit(ip, charge=True)

    def _auth_limit(self, ip: str, charge: bool) -> None:
        s = self.shield
        rate = s.config.auth_failure_limits
        check = s.limiter.hit if charge else s.limiter.test
        for item in s.rates(rate) if rate else []:
            try:
                ok = check(item, f"authfail:{ip}")
            except STORE_ERRORS:
                return  # the rate-limit store's outage is seen elsewhere
            if not ok:
                raise Denied(429, "too_many_auth_failures",
                             f"Too many requests with bad API keys from this address (limit "
                             f"{item}); try again later.",
                             {"Retry-After": str(item.get_expiry())})


class CheckInputs(_Stage):
    """Shape, values, batch size and the declared domain of a classifier's rows."""

    name = "check inputs"

    def __call__(self, call: Call) -> None:
        s = self.shield
        try:
            x = np.asarray(call.inputs, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise Denied(422, "invalid_inputs", "inputs must be a list of rows of numbers "
                         "that fit a 64-bit float.", {"X-Error-Param": "inputs"}) from None
        d = s.spec.n_features
        if x.ndim != 2 or x.shape[1] != d or len(x) == 0:
            raise Denied(422, "invalid_shape",
                         f"inputs must have shape (n, {d}) with n >= 1; got {list(x.shape)}.")
        if len(x) > call.tier.max_batch:
            raise Denied(413, "batch_too_large",
                         f"at most {call.tier.max_batch} rows per request; got {len(x)}.")
        if np.isinf(x).any() or (np.isnan(x).any() and not s.spec.accepts_missing):
            raise Denied(422, "invalid_values", "inputs must be finite numbers (no NaN or "
                         "infinity)" + ("" if not s.spec.accepts_missing else
                                        "; NaN marks a missing feature"))
        if s.config.model.enforce_domain:
            self._domain(x)
        call.x = x

    def _domain(self, x: FloatArray) -> None:
        """Refuse values outside the declared domain (``low``/``high``), naming the first."""
        spec = self.shield.spec
        with np.errstate(invalid="ignore"):
            outside = (x < spec.low) | (x > spec.high)  # NaN (a missing value) compares False
        if outside.any():
            row, col = (int(i) for i in np.argwhere(outside)[0])
            raise Denied(422, "out_of_domain",
                         f"inputs[{row}][{col}] = {float(x[row, col])!r} is outside feature {col}'s "
                         f"domain [{spec.low[col]:g}, {spec.high[col]:g}] (GET /v2/models/"
                         f"{spec.name} lists every feature's).", {"X-Error-Param": "inputs"})


class SystemPrompt(_Stage):
    """A chat request's prompt, built here from its messages once the key is known (the
    model's tokenizer may be an upstream server's): the deployment's system prompt (the
    tier's, else the model's) first."""

    name = "system prompt"

    def __call__(self, call: Call) -> None:
        req = call.lm_request
        if req.messages is not None:
            from modelshield.victims.chat import chat_ids

            secret = self.shield.system_prompts.get(call.key.tier)
            messages = req.messages if secret is None else [("system", secret), *req.messages]
            try:
                ids = chat_ids(self.shield.lm, messages)
            except OracleError as exc:
                raise Denied(getattr(exc, "client_status", 502), "upstream_error",
                             str(exc)) from None
            req = call.req = dataclasses.replace(req, prompts=[ids])
        call.decision.prompt_tokens = sum(len(p) for p in req.prompts)


class Limit(_Stage):
    """Rate limits per key, per address and global, on requests, rows and tokens; a key
    suspended in the durable store is refused here, before any limit is charged."""

    name = "limit"
    kinds: ClassVar[tuple[str, ...]] = ("requests", "rows", "tokens")
    """What this stage charges (a language model's request limits and its token limits
    are charged apart: the tokens only once the prompt is tokenized)."""

    def __call__(self, call: Call) -> None:
        s, key, tier, ip = self.shield, call.key, call.tier, call.client_ip
        if isinstance(s.state, RedisState):  # values an earlier request primed (and did
            s.state.prime({})  # not read: refused) are not this request's
        if key.flag is not None and tier.on_flag == "deny":  # durable: no store trip
            raise Denied(403, "extraction_suspected", f"Access suspended: "
                         f"{key.flag['detector']} detector: {key.flag['reason']}.",
                         {"X-Modelshield-Flag": key.flag["detector"]})
        throttled = tier.on_flag == "throttle" and \
            s.shared(s.flag_of, key, tier, ip) is not None
        limits = tier.throttled if throttled else tier.limits
        rows = len(call.x) if call.x is not None else call.req.count if call.req else 1
        tokens = call.req.tokens if call.req is not None else 0
        checks: list[tuple[Limits, str]] = [
            (s.config.global_limits, "global"), (s.config.ip_limits, f"ip:{ip}"),
            (limits, f"key:{key.key_id}:{s.spec.name}")]  # a key's limits are per model
        hits: list[Hit] = []
        for lim, who in checks:  # every limit charges what it names: requests, rows, tokens
            for kind, cost in (("requests", 1), ("rows", rows), ("tokens", tokens)):
                rate = getattr(lim, kind)
                if rate and cost and kind in self.kinds:
                    # RateLimit-* headers describe the caller's own key limits.
                    hits += [(item, f"{who}:{kind}", cost, who.startswith("key"))
                             for item in s.rates(rate)]
        self._charge(hits, call.decision, self._ahead(call))

    def _ahead(self, call: Call) -> list[str]:
        """With detection after the answer on Redis, the suspension flags the request
        checks next, read in the limits' own script call: one round trip for both. The
        account's deferred detection is waited for first, so its flag is among them."""
        s = self.shield
        if call.tier.detect != "after" or call.req is not None or \
                not isinstance(s.charge, RedisMovingWindowBatch) or \
                not isinstance(s.state, RedisState):
            return []
        s.settle(call.key.key_id)
        group = s.group_of(call.tier, call.key, call.client_ip)
        return [f"flag:{i}" for i in (call.key.key_id, group) if i is not None]

    def _charge(self, hits: list[Hit], decision: Decision, ahead: list[str]) -> None:
        """Charge every limit of the request, or none of them if any refuses
        (defenses/limits_batch.py): on Redis with the moving window, one script call,
        which also reads the ``ahead`` keys of the detector state."""
        s = self.shield
        try:
            if ahead and isinstance(s.charge, RedisMovingWindowBatch) and \
                    isinstance(s.state, RedisState):
                state = s.state
                results, values = s.charge.charge_and_get(
                    hits, [state.prefix + k for k in ahead])
                state.prime({k: None if v is None else json.loads(v)
                             for k, v in zip(ahead, values, strict=True)})
            else:
                results = s.charge.charge(hits)
        except STORE_ERRORS as exc:
            if s.config.storage.fail == "open":
                return
            raise Denied(503, "limits_unavailable",
                         f"Rate-limit store unreachable ({type(exc).__name__}); refusing "
                         "(storage.fail = closed).") from None
        refused = None
        for (item, ident, _, _), result in zip(hits, results, strict=True):
            if result is None:
                continue
            ok, reset, remaining = result
            if ok:
                self._report(item, ident, ok, reset, remaining, decision)
            elif refused is None:
                refused = (item, ident, reset, remaining)
        if refused is not None:
            self._report(*refused[:2], False, refused[2], refused[3], decision, raise_=True)

    def _report(self, item: RateLimitItem, ident: str, ok: bool, reset: float,
                remaining: int, decision: Decision, raise_: bool = False) -> None:
        """RateLimit-* headers for the caller's limits (the one nearest its end, when there
        are several); a 429 for a refused one."""
        retry = max(0, math.ceil(reset - self.shield.clock()))
        headers = {"RateLimit-Limit": str(item.amount), "RateLimit-Remaining": str(remaining),
                   "RateLimit-Reset": str(retry)}
        shown = decision.headers.get("RateLimit-Remaining")
        if raise_ or (ok and (shown is None or remaining < int(shown))):
            decision.headers.update(headers)
        if raise_:
            raise Denied(429, "rate_limited", f"Rate limit {item} exceeded for {ident.split(':')[0]}"
                         f" ({ident.rsplit(':', 1)[1]}).", {**headers, "Retry-After": str(retry)})


class Model(_Stage):
    """The classifier's prediction (a model server it fronts may fail: 502)."""

    name = "model"

    def __call__(self, call: Call) -> None:
        s = self.shield
        if call.x is None:
            raise RuntimeError("Model ran before CheckInputs")
        try:
            call.prediction = s.model.predict(call.x)
        except OracleError as exc:  # an upstream model server failed
            raise Denied(502, "upstream_error", str(exc)) from None
        probs = getattr(call.prediction, "probabilities", None)
        if probs is not None and not np.isfinite(probs).all():
            raise Denied(422, "model_cannot_answer", "The model gives no finite scores for "
                         "these inputs; send rows inside the declared domain (GET /v2/models/"
                         f"{s.spec.name}).", {"X-Error-Param": "inputs"})


class Detect(_Stage):
    """The tier's detectors watch the account and, with ``group_by``, its group (attackers
    who split the work over keys from one network or owner are seen as one); then the
    tier's ``on_flag`` action applies. With Redis, one round trip reads every detector's
    state and one more writes it."""

    name = "detect"

    def __call__(self, call: Call) -> None:
        s = self.shield
        if call.tier.detect == "after" and call.req is None:
            # Off the path: the account's previous detection first (its flag acts now),
            # then this request's once it is answered, on its own copy of the decision.
            s.settle(call.key.key_id)
            s.shared(s.act_on_flag, call.key, call.tier, call.client_ip, call.decision)
            seen = dataclasses.replace(call, decision=type(call.decision)(), after=[])
            call.after.append(lambda: s.shared(self._watch, seen, False))
            return
        s.shared(self._watch, call)

    def _watch(self, call: Call, act: bool = True) -> None:
        s, key, tier = self.shield, call.key, call.tier
        watched = [key.key_id] + [g for g in [s.group_of(tier, key, call.client_ip)] if g]
        lm = call.req is not None
        detectors = [d for d in s.detectors[key.tier]
                     if (d.kind == "language-model") == lm]
        # The rate tests and PRADA see only the rows each watched account has not sent
        # before; volume sees them all.
        wanted = set() if lm else {d.sees for d in detectors}
        reads = self._reads(call, watched, detectors, wanted) if s.state.batches else []
        with s.state.batch(reads):
            views = {} if lm or call.x is None else \
                self._views(call.x, call.prediction, watched, wanted)
            for det in detectors:
                for ident in watched:
                    flag = self._observe(det, ident, call, views.get((ident, det.sees)))
                    if flag is not None:
                        s.record_flag(ident, flag, call.decision)
            if act:
                s.act_on_flag(key, tier, call.client_ip, call.decision)

    @staticmethod
    def _reads(call: Call, watched: list[str], detectors: list[Detector], wanted: set[str]
               ) -> list[Read]:
        """What a shared store fetches ahead for the watched accounts: their flags, their
        recent rows where a detector sees only new records, and each detector's state (for
        the whole batch's classes: a superset of a view's)."""
        reads: list[Read] = [("value", f"flag:{ident}") for ident in watched]
        if wanted & {"fresh", "records"} and call.x is not None:
            reads += [seen_read(ident, call.x) for ident in watched]
        if "records" in wanted:
            reads += [("rows", f"recent:{ident}") for ident in watched]
        for det in detectors:
            for ident in watched:
                reads += det.request_reads(ident) if call.req is not None else \
                    det.reads(ident, call.prediction)
        return reads

    def _views(self, x_all: FloatArray, prediction: Prediction | None, watched: list[str],
               wanted: set[str]) -> dict[tuple[str, str], tuple[Any, Any]]:
        """The rows and answers each watched account's detectors see, by (account, what the
        detector sees): all of them, the rows it has not sent before, and of those the
        ones not yet in its records."""
        state = self.shield.state
        views: dict[tuple[str, str], tuple[Any, Any]] = {}
        for ident in watched:
            views[ident, "all"] = (x_all, prediction)
            if wanted & {"fresh", "records"}:
                mask = fresh_rows(state, ident, x_all)
                x, p = x_all[mask], _subset(prediction, mask)
                views[ident, "fresh"] = (x, p)
                if "records" in wanted:
                    keep = record_rows(state, ident, x)
                    views[ident, "records"] = (x[keep], _subset(p, keep))
        return views

    @staticmethod
    def _observe(det: Detector, ident: str, call: Call, view: Any) -> Any:
        if call.req is not None:
            return det.observe_request(ident, call.req)
        x, prediction = view
        return det.observe(ident, x, prediction) if len(x) else None


def _subset(p: Prediction | None, mask: np.ndarray) -> Prediction | None:
    if p is None:
        return None
    return Prediction(p.probabilities[mask],
                      None if p.node_ids is None else p.node_ids[mask],
                      None if p.node_counts is None else p.node_counts[mask])


class Watermark(_Stage):
    """The tier's serve-time watermark (DAWN): a keyed share of the account's input cells
    answered with a keyed wrong label, scores permuted to match. After the detectors,
    which watch the model's own answers; before the output policy, which shapes it."""

    name = "watermark"

    def __call__(self, call: Call) -> None:
        wm = self.shield.watermarks.get(call.key.tier)
        if wm is None or call.x is None:
            return
        call.prediction, n = wm.apply(call.key.key_id, call.x, call.prediction)
        call.decision.watermarked = n


class Shape(_Stage):
    """The tier's output policy (its degrade policy once the account is degraded)."""

    name = "shape"

    def __call__(self, call: Call) -> None:
        s, key = self.shield, call.key
        policy = s.degraded[key.tier] if call.decision.action == "degrade" \
            else s.policies[key.tier]
        call.answer = policy.apply(call.prediction, call.x)  # type: ignore[arg-type]
        call.decision.policy = policy.spec


class Generate(_Stage):
    """The completion: decoded here under the tier's policy (a token at a time to
    ``on_step`` when streamed, the admission recorded before the first token), or
    generated by the upstream server and shaped here."""

    name = "generate"

    def __call__(self, call: Call) -> None:
        s, lm, req, key = self.shield, self.shield.lm, call.lm_request, call.key
        policy = s.llm_policies[key.tier]
        call.decision.policy = "llm"
        if call.decision.action == "degrade" and req.logprobs is not None:  # set by Detect
            raise Denied(403, "logprobs_withdrawn", "logprobs are withdrawn from this key: "
                         "its queries look like model extraction.")
        if hasattr(lm, "complete"):  # served upstream: the Shield shapes what comes back
            if req.logit_bias and req.logprobs is not None and not policy.bias_affects_logprobs:
                raise Denied(400, "logit_bias_with_logprobs",
                             "On this tier a logit bias may not change the returned logprobs, "
                             "and the upstream model server cannot promise that: send "
                             "logit_bias or logprobs, not both.", {"X-Error-Param": "logit_bias"})
            try:
                call.choices = shape_choices(lm.complete(req), req, policy, lm.vocab)
            except OracleError as exc:
                param = getattr(exc, "param", None)
                raise Denied(getattr(exc, "client_status", 502), "upstream_error", str(exc),
                             {"X-Error-Param": param} if param else None) from None
            return
        # A tier with a leak filter checks each choice whole before any of it leaves: the
        # stream then sends whole choices.
        streamed = call.on_step is not None and key.tier not in s.leak_finders
        gen = Generation(lm.next_logits, req, policy, lm.tokenizer.eos_token_id,
                         text=lm.decode, stepper=getattr(lm, "stepper", None),
                         stream=streamed)
        if streamed and call.on_step is not None:
            s.commit(lm_record(s, call, {"stream": "started"}))
            for deltas in gen.steps():
                if call.on_step(call.decision, deltas) is False:  # the reader is gone
                    gen.abort()
                    call.decision.disconnected = True
                    break
        call.choices = gen.choices()


class LeakFilter(_Stage):
    """Redact each choice that holds the tier's system prompt at or above the filter's
    threshold (defenses/leakfilter.py): its text becomes the tier's message, its tokens and
    logprobs go, and its finish reason is ``content_filter``. With ``cumulative`` the share
    counts what the account received before."""

    name = "leak filter"

    def __call__(self, call: Call) -> None:
        s, tier = self.shield, call.key.tier
        finder = s.leak_finders.get(tier)
        if finder is None:
            return
        spec = s.llm_policies[tier].leak_filter
        assert spec is not None
        lm = s.lm
        key = f"leak:{call.key.key_id}:{finder.digest}"
        seen: set[int] = set(s.shared(s.state.get, key) or []) if spec.cumulative else set()
        grown = False
        out = []
        for c in call.choices:
            text = c.text if c.text is not None else lm.decode(c.tokens)
            leak = finder.find(text)
            if len(seen | leak.grams) / finder.total >= spec.threshold:
                call.decision.redacted += 1
                out.append(LMChoice(c.prompt_index, [], [] if c.logprobs is not None else None,
                                    [] if c.top_logprobs is not None else None,
                                    "content_filter", spec.message))
                continue
            if not leak.grams <= seen:
                seen |= leak.grams
                grown = True
            out.append(c)
        call.choices = out
        if spec.cumulative and grown:
            s.shared(s.state.set, key, sorted(seen))


class Record(_Stage):
    """The hash-chained audit record, committed before the answer leaves."""

    name = "record"

    def __call__(self, call: Call) -> None:
        s, key = self.shield, call.key
        if call.req is not None:
            s.commit(lm_record(s, call, [
                {"tokens": c.tokens, "logprobs": c.logprobs, "top": c.top_logprobs}
                for c in call.choices]))
            return
        if call.x is None or call.answer is None:
            raise RuntimeError("Record ran before CheckInputs and Shape")
        s.commit(AuditRecord(
            ts=s.clock(), key_id=key.key_id, client_ip=call.client_ip, model=s.spec.name,
            rows=len(call.x), inputs=call.x, answer=answer_record(call.answer),
            decision=call.decision.to_record()))


def lm_record(shield: Shield, call: Call, answer: Any) -> AuditRecord:
    """A language-model request's record. A chat request is recorded by its messages, and
    the system prompt by a digest: the secret never enters the log."""
    req, key = call.lm_request, call.key
    sent: dict[str, Any] = {"prompts": req.prompts}
    if req.messages is not None:
        sent = {"messages": [list(m) for m in req.messages]}
        secret = shield.system_prompts.get(key.tier)
        if secret is not None:
            sent["system_prompt"] = hashlib.sha256(secret.encode()).hexdigest()[:16]
    return AuditRecord(
        ts=shield.clock(), key_id=key.key_id, client_ip=call.client_ip, model=shield.spec.name,
        rows=len(req.prompts), inputs={**sent, "max_tokens": req.max_tokens,
                                       "logprobs": req.logprobs,
                                       "logit_bias": {str(k): v for k, v in
                                                      req.logit_bias.items()},
                                       "temperature": req.temperature, "n": req.n,
                                       "seed": req.seed, "stop": req.stop},
        answer=answer, decision=call.decision.to_record())


def answer_record(answer: Answer) -> dict[str, Any]:
    out: dict[str, Any] = {"labels": answer.labels}
    for name in ("probabilities", "confidence", "leaf_ids"):
        value = getattr(answer, name)
        if value is not None:
            out[name] = np.where(np.isnan(value), None, value) if name == "probabilities" \
                else value
    return out


StageFactory = Callable[["Shield"], Stage]
"""A stage class (or any callable that builds a stage for a Shield)."""

CLASSIFIER_STAGES: tuple[StageFactory, ...] = (Authenticate, CheckInputs, Limit, Model, Detect,
                                               Watermark, Shape, Record)
"""A language model's stages are in :mod:`modelshield.defenses.lm_stages` (``LM_STAGES``)."""
