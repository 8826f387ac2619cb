"""The Shield: the defense pipeline every query passes, in-process or behind the gateway.

One ordered pass per request::

    authenticate -> check inputs -> rate limits -> model -> detectors -> output policy -> record

Admission stages refuse with :class:`~modelshield.errors.Denied` (401/403/413/422/429/503);
a request refused for its inputs costs no rate-limit budget. Detectors flag an account, and
the tier's ``on_flag`` action (alert, throttle, degrade, deny) applies from then on. The
recorder commits the audit record before the answer leaves. The same object serves
:class:`~modelshield.oracle.ShieldOracle` and the HTTP gateway.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from limits import RateLimitItem, parse_many, storage, strategies
from sqlalchemy.exc import SQLAlchemyError

from modelshield.answer import Answer, ApiSpec, FloatArray, LMChoice, LMRequest
from modelshield.defenses.config import Limits, ShieldConfig, Tier, load_config
from modelshield.defenses.detectors import Detector, Flag, make_detector
from modelshield.defenses.limits_memory import SweptMemoryStorage
from modelshield.defenses.llm import Delta, Generation, LLMPolicy, check_request, shape_choices
from modelshield.defenses.policies import OutputPolicy, parse_policy
from modelshield.defenses.state import STORE_ERRORS, Read, state_from_url
from modelshield.errors import ConfigError, Denied, OracleError
from modelshield.store import ApiKey, AuditRecord, AuditStore
from modelshield.victims.base import ModelAdapter

log = logging.getLogger("modelshield.shield")


@dataclass
class Decision:
    """What the Shield decided for one request (it goes into the audit record)."""

    key_id: str | None = None
    tier: str | None = None
    action: str = "allow"
    policy: str = ""
    flags: list[Flag] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"tier": self.tier, "action": self.action, "policy": self.policy,
                "flags": [{"detector": f.detector, "score": round(f.score, 4),
                           "reason": f.reason} for f in self.flags]}


class Shield:
    """Authenticate, limit, watch, shape and record every query to one model."""

    def __init__(self, config: ShieldConfig, model: ModelAdapter | Any, spec: ApiSpec,
                 store: AuditStore, *, benign: FloatArray | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.model = model
        self.spec = spec
        self.store = store
        self.clock = clock
        strategy = {"moving-window": strategies.MovingWindowRateLimiter,
                    "sliding-window": strategies.SlidingWindowCounterRateLimiter,
                    "fixed-window": strategies.FixedWindowRateLimiter}[config.storage.strategy]
        counters = SweptMemoryStorage() if config.storage.limits.startswith("memory://") \
            else storage.storage_from_string(config.storage.limits)
        self.limiter = strategy(counters)  # type: ignore[abstract]
        secret = config.noise_secret
        self.policies = {name: parse_policy(t.policy, secret=secret)
                         for name, t in config.tiers.items()}
        self.degraded = {name: parse_policy(t.degrade_policy, secret=secret)
                         for name, t in config.tiers.items()}
        self.llm_policies = {name: t.llm.model_copy(update={"noise_key": secret or ""})
                             for name, t in config.tiers.items()}
        self.state = state_from_url(config.storage.limits)
        self.detectors: dict[str, list[Detector]] = {}
        for name, tier in config.tiers.items():
            self.detectors[name] = [make_detector(d, state=self.state) for d in tier.detectors]
            if benign is not None:
                for det in self.detectors[name]:
                    det.calibrate(benign, model.predict)
        self.flagged: dict[str, Flag] = {}  # this replica's view; the state store is shared
        self._rates: dict[str, list[RateLimitItem]] = {}
        self._restore_flags()

    def _restore_flags(self) -> None:
        """Put the durable flags of groups back into the state store (a restarted
        ``memory://`` gateway, or a Redis without persistence, would have lost them)."""
        with contextlib.suppress(*STORE_ERRORS):
            for f in self.store.flags():
                if self.state.get(f"flag:{f['ident']}") is None:
                    self.state.set(f"flag:{f['ident']}", {"detector": f["detector"],
                                                          "score": f["score"],
                                                          "reason": f["reason"]})

    @classmethod
    def from_config(cls, source: Any = None, **kwargs: Any) -> Shield:
        """Build from a YAML path, a dict or a ShieldConfig: model, store and all stages."""
        from modelshield.victims import load_model_file, load_victim

        config = source if isinstance(source, ShieldConfig) else load_config(source)
        m = config.model
        benign: Any
        model: Any
        if m.lm:
            from modelshield.victims.lm import load_lm

            lm = load_lm(m.lm, m.seed)
            model, spec, benign = lm, lm_spec(m.name or lm.name), None
        elif m.lm_upstream:
            from modelshield.victims.upstream import OpenAIUpstream

            key = os.environ.get(m.upstream_api_key_env) if m.upstream_api_key_env else None
            upstream_name = m.upstream_model or m.name or ""
            if not upstream_name:
                raise ConfigError("model.upstream_model: name the model as the upstream "
                                  "server serves it.")
            try:
                model = OpenAIUpstream(m.lm_upstream, upstream_name, api_key=key,
                                       vocab=m.upstream_vocab)
            except OracleError as exc:
                raise ConfigError(f"model.lm_upstream: {exc}") from None
            spec, benign = lm_spec(m.name or upstream_name), None
        elif m.file or m.upstream:
            spec = kwargs.pop("spec", None) or _spec_from_config(config)
            if m.file:
                model = load_model_file(m.file)
            else:
                from modelshield.victims.upstream import V2Upstream

                model = V2Upstream(m.upstream or "", spec.name)
            benign = kwargs.pop("benign", None)
        else:
            victim = load_victim(m.builtin or "digits-mlp", m.seed)
            # Natural data the model was not trained on stands in for the owner's
            # validation set when detectors are calibrated.
            model, spec, benign = victim.model, victim.spec, victim.pool
        store = kwargs.pop("store", None) or AuditStore(
            config.audit_url, sync=config.audit_sync,
            key_cache_seconds=config.key_cache_seconds)
        return cls(config, model, spec, store, benign=benign, **kwargs)

    def close(self) -> None:
        """Release the store's connections and the model's (an upstream client, say)."""
        self.store.close()
        close = getattr(self.model, "close", None)
        if callable(close):
            close()

    # -- the pipeline ------------------------------------------------------------------------
    def handle(self, api_key: str | None, inputs: Any, client_ip: str = "127.0.0.1"
               ) -> tuple[Answer, Decision]:
        """Answer one batch for the holder of ``api_key``, or raise Denied. A refusal is
        recorded too (its status, code and reason; the rows if they were valid)."""
        decision = Decision()
        checked: list[FloatArray] = []
        try:
            key = self._authenticate(api_key, decision, client_ip)
            tier = self.config.tiers[key.tier]
            x = self._check_inputs(inputs, tier)
            checked.append(x)
            self._limit(key, tier, client_ip, len(x), decision)
            try:
                prediction = self.model.predict(x)
            except OracleError as exc:  # an upstream model server failed
                raise Denied(502, "upstream_error", str(exc)) from None
            self._check_prediction(prediction)
            self._shared(self._detect, key, tier, x, prediction, decision, client_ip)
        except Denied as exc:
            self._refused(exc, decision, client_ip, checked[0] if checked else None)
            raise
        policy = self._policy(key, decision)
        answer = policy.apply(prediction, x)
        decision.policy = policy.spec
        self._commit(AuditRecord(
            ts=self.clock(), key_id=key.key_id, client_ip=client_ip, model=self.spec.name,
            rows=len(x), inputs=x, answer=_answer_record(answer), decision=decision.to_record()))
        return answer, decision

    def _commit(self, record: AuditRecord) -> None:
        """Commit a record before its answer leaves; if the log cannot take it, refuse."""
        try:
            self.store.commit([record])
        except Exception as exc:  # the database refused or is gone: nothing leaves unlogged
            raise Denied(503, "audit_unavailable", f"The audit log cannot record this request "
                         f"({type(exc).__name__}); refusing.") from None

    def _refused(self, exc: Denied, decision: Decision, ip: str, rows: Any) -> None:
        """Record a refusal: who, why, and the rows when they were valid. The refusal
        itself stands even if the log cannot take the record."""
        record = AuditRecord(
            ts=self.clock(), key_id=decision.key_id, client_ip=ip, model=self.spec.name,
            rows=0 if rows is None else len(rows), inputs=rows, answer=None,
            decision={**decision.to_record(), "action": "refuse", "status": exc.status,
                      "code": exc.code, "reason": str(exc)})
        with contextlib.suppress(Exception):
            self.store.commit([record])

    def _check_prediction(self, prediction: Any) -> None:
        """A model that answers NaN or infinity for valid inputs cannot be answered in JSON."""
        probs = getattr(prediction, "probabilities", None)
        if probs is not None and not np.isfinite(probs).all():
            raise Denied(422, "model_cannot_answer", "The model gives no finite scores for "
                         "these inputs; send rows inside the declared domain (GET /v2/models/"
                         f"{self.spec.name}).", {"X-Error-Param": "inputs"})

    @property
    def lm(self) -> Any:
        """The served language model (local, or upstream), or None for a classifier."""
        return self.model if hasattr(self.model, "next_logits") or \
            hasattr(self.model, "complete") else None

    def handle_completion(self, api_key: str | None, req: LMRequest,
                          client_ip: str = "127.0.0.1",
                          on_step: Callable[[Decision, list[Delta]], None] | None = None
                          ) -> tuple[list[LMChoice], Decision]:
        """Answer one completion request for the holder of ``api_key``, or raise Denied:
        the same key, limit, detector and audit stages as ``handle``, with the tier's
        language-model policy in place of the output policy."""
        lm = self.lm
        if lm is None:
            raise Denied(404, "not_a_language_model",
                         f"{self.spec.name!r} is not a language model; use /v1/models/"
                         f"{self.spec.name}/predict.")
        decision = Decision()
        try:
            return self._complete(lm, api_key, req, client_ip, decision, on_step)
        except Denied as exc:
            self._refused(exc, decision, client_ip, None)
            raise

    def _complete(self, lm: Any, api_key: str | None, req: LMRequest, client_ip: str,
                  decision: Decision,
                  on_step: Callable[[Decision, list[Delta]], None] | None = None
                  ) -> tuple[list[LMChoice], Decision]:
        key = self._authenticate(api_key, decision, client_ip)
        tier = self.config.tiers[key.tier]
        policy = self.llm_policies[key.tier]
        check_request(req, policy, lm.vocab, tier.max_batch)
        self._limit(key, tier, client_ip, len(req.prompts), decision, tokens=req.tokens)
        if policy.detect_probing:
            self._shared(self._probe, key, tier, req, decision, client_ip)
        if decision.action == "degrade" and req.logprobs is not None:
            raise Denied(403, "logprobs_withdrawn", "logprobs are withdrawn from this key: "
                         "its queries look like model extraction.")
        if hasattr(lm, "complete"):  # served upstream: the Shield shapes what comes back
            if req.logit_bias and req.logprobs is not None and \
                    not policy.bias_affects_logprobs:
                raise Denied(400, "logit_bias_with_logprobs",
                             "On this tier a logit bias may not change the returned logprobs, "
                             "and the upstream model server cannot promise that: send "
                             "logit_bias or logprobs, not both.", {"X-Error-Param": "logit_bias"})
            try:
                choices = shape_choices(lm.complete(req), req, policy, lm.vocab)
            except OracleError as exc:
                raise Denied(getattr(exc, "client_status", 502), "upstream_error",
                             str(exc)) from None
        else:
            gen = Generation(lm.next_logits, req, policy, lm.tokenizer.eos_token_id,
                             text=lm.decode, stepper=getattr(lm, "stepper", None))
            if on_step is not None:  # streamed: the admission is recorded before any token
                decision.policy = "llm"
                self._commit(self._lm_record(key, client_ip, req, {"stream": "started"},
                                             decision))
                for deltas in gen.steps():
                    on_step(decision, deltas)
            choices = gen.choices()
        decision.policy = "llm"
        self._commit(self._lm_record(key, client_ip, req, [
            {"tokens": c.tokens, "logprobs": c.logprobs, "top": c.top_logprobs}
            for c in choices], decision))
        return choices, decision

    def _lm_record(self, key: ApiKey, client_ip: str, req: LMRequest, answer: Any,
                   decision: Decision) -> AuditRecord:
        return AuditRecord(
            ts=self.clock(), key_id=key.key_id, client_ip=client_ip, model=self.spec.name,
            rows=len(req.prompts), inputs={"prompts": req.prompts, "max_tokens": req.max_tokens,
                                           "logprobs": req.logprobs,
                                           "logit_bias": {str(k): v for k, v
                                                          in req.logit_bias.items()},
                                           "temperature": req.temperature, "n": req.n,
                                           "seed": req.seed, "stop": req.stop},
            answer=answer, decision=decision.to_record())

    def _probe(self, key: ApiKey, tier: Tier, req: LMRequest, decision: Decision,
               ip: str) -> None:
        """Logit-bias sweeps and single-token probing, per account (and group): the query
        patterns of logit and projection stealing. Benign use of logit bias steers a few
        tokens again and again; a sweep biases ever new tokens. Benign completions run for
        more than one token; stealing asks for one token's logprobs, prompt after prompt."""
        policy = self.llm_policies[key.tier]
        idents = [key.key_id] + [g for g in [_group(tier.group_by, key, ip)] if g]
        reads: list[Read] = [r for ident in idents for r in (
            ("hash", f"lmprobe:{ident}"), ("value", f"flag:{ident}"))]
        with self.state.batch(reads):
            self._probe_each(idents, req, policy, decision)
            self._act(key, tier, ip, decision)

    def _probe_each(self, idents: list[str], req: LMRequest, policy: LLMPolicy,
                    decision: Decision) -> None:
        """Count per prompt, not per request: an attack that packs 64 prompts into each
        request is 64 probes. A logit-bias sweep is flagged by the share of bias entries
        that name a token the account never biased before, once it has biased many distinct
        tokens over several requests: an app that sends one fixed ban list again and again
        has a share that falls towards 0; a sweep keeps it near 1."""
        prompts = len(req.prompts) * req.n
        for ident in idents:
            amounts = {"requests": 1, "prompts": prompts, "bias_entries": len(req.logit_bias)}
            if req.max_tokens <= 1 and req.logprobs is not None:
                amounts["single"] = prompts
            counts = self.state.incr_many(f"lmprobe:{ident}", amounts)
            new = 0
            if req.logit_bias:
                seen = self.state.incr_many(f"lmbias:{ident}",
                                            {str(t): 1 for t in req.logit_bias})
                new = sum(1 for v in seen.values() if v == 1)
            distinct = self.state.incr(f"lmprobe:{ident}", "bias_tokens", new)
            flag = None
            novelty = distinct / max(counts["bias_entries"], 1)
            if distinct >= policy.probe_distinct_bias_tokens and \
                    counts["requests"] >= policy.probe_min_requests and \
                    novelty >= policy.probe_bias_novelty:
                flag = Flag("logit-bias", float(distinct),
                            f"logit bias on {distinct} distinct tokens over "
                            f"{counts['requests']} requests, {novelty:.0%} of entries new "
                            "(a sweep)")
            elif counts.get("single", 0) >= policy.probe_single_token_requests and \
                    counts["single"] >= 0.9 * counts["prompts"]:
                flag = Flag("single-token", float(counts["single"]),
                            f"{counts['single']} of {counts['prompts']} prompts ask one "
                            "token's logprobs")
            if flag is not None:
                self._record_flag(ident, flag, decision)

    def authenticate(self, api_key: str | None, client_ip: str = "127.0.0.1") -> ApiKey:
        """The key's record, or Denied (recorded as a refusal): the gateway's check before
        it reads a request's body."""
        decision = Decision()
        try:
            return self._authenticate(api_key, decision, client_ip)
        except Denied as exc:
            self._refused(exc, decision, client_ip, None)
            raise

    def account(self, api_key: str | None, client_ip: str = "127.0.0.1") -> dict[str, Any]:
        """What the holder of ``api_key`` may see of its own account (or raise Denied):
        its tier, that tier's output policy and limits, and the terms it accepted."""
        key = self._authenticate(api_key, Decision(), client_ip)
        tier = self.config.tiers[key.tier]
        return {"key_id": key.key_id, "tier": key.tier, "policy": self.policies[key.tier].spec,
                "limits": tier.limits.model_dump(), "max_batch": tier.max_batch,
                "expires_at": key.expires_at, "terms_version": key.terms_version,
                "terms_accepted_at": key.terms_accepted_at}

    def _authenticate(self, api_key: str | None, decision: Decision,
                      client_ip: str = "127.0.0.1") -> ApiKey:
        """The key's record, or Denied. Nothing else is done for a request before this. A
        key longer than any issued is refused unread; an address past its failed-
        authentication limit gets 429 instead of 401 (a valid key costs no extra trip)."""
        if not api_key:
            raise Denied(401, "missing_key", "An API key is required (Authorization: Bearer KEY).")
        key = self.store.lookup(api_key) if len(api_key) <= MAX_KEY_CHARS else None
        if key is None:
            self._auth_failed(client_ip)
            raise Denied(401, "invalid_key", "The API key is not valid" + (
                f" (keys are at most {MAX_KEY_CHARS} characters)." if len(api_key) >
                MAX_KEY_CHARS else "."))
        decision.key_id = key.key_id
        if not key.usable(self.clock()):
            why = "revoked" if key.revoked_at is not None else "expired"
            raise Denied(403, f"key_{why}", f"The API key was {why}.")
        if key.tier not in self.config.tiers:
            raise Denied(403, "unknown_tier", f"The key's tier {key.tier!r} is not configured.")
        decision.tier = key.tier
        return key

    def _auth_failed(self, ip: str) -> None:
        """Count a failed authentication of ``ip``; past its limit, refuse with 429."""
        rate = self.config.auth_failure_limits
        for item in self._parsed(rate) if rate else []:
            try:
                ok = self.limiter.hit(item, f"authfail:{ip}")
            except STORE_ERRORS:
                return  # the 401 stands; the rate-limit store's outage is seen elsewhere
            if not ok:
                raise Denied(429, "too_many_auth_failures",
                             f"Too many requests with bad API keys from this address (limit "
                             f"{item}); try again later.",
                             {"Retry-After": str(item.get_expiry())})

    def _parsed(self, rate: str) -> list[RateLimitItem]:
        if rate not in self._rates:
            self._rates[rate] = parse_many(rate)
        return self._rates[rate]

    def _check_inputs(self, inputs: Any, tier: Tier) -> FloatArray:
        try:
            x = np.asarray(inputs, dtype=np.float64)
        except (TypeError, ValueError):
            raise Denied(422, "invalid_inputs", "inputs must be a list of rows of numbers.") from None
        d = self.spec.n_features
        if x.ndim != 2 or x.shape[1] != d or len(x) == 0:
            raise Denied(422, "invalid_shape",
                         f"inputs must have shape (n, {d}) with n >= 1; got {list(x.shape)}.")
        if len(x) > tier.max_batch:
            raise Denied(413, "batch_too_large",
                         f"at most {tier.max_batch} rows per request; got {len(x)}.")
        if np.isinf(x).any() or (np.isnan(x).any() and not self.spec.accepts_missing):
            raise Denied(422, "invalid_values", "inputs must be finite numbers (no NaN or "
                         "infinity)" + ("" if not self.spec.accepts_missing else
                                        "; NaN marks a missing feature"))
        if self.config.model.enforce_domain:
            self._check_domain(x)
        return x

    def _check_domain(self, x: FloatArray) -> None:
        """Refuse values outside the declared domain (``low``/``high``), naming the first."""
        low, high = self.spec.low, self.spec.high
        with np.errstate(invalid="ignore"):
            outside = (x < low) | (x > high)  # NaN (a missing value) compares False
        if outside.any():
            row, col = (int(i) for i in np.argwhere(outside)[0])
            raise Denied(422, "out_of_domain",
                         f"inputs[{row}][{col}] = {x[row, col]!r} is outside feature {col}'s "
                         f"domain [{low[col]:g}, {high[col]:g}] (GET /v2/models/"
                         f"{self.spec.name} lists every feature's).", {"X-Error-Param": "inputs"})

    def _limit(self, key: ApiKey, tier: Tier, ip: str, rows: int, decision: Decision,
               tokens: int = 0) -> None:
        if key.flag is not None and tier.on_flag == "deny":  # durable: no store trip
            raise Denied(403, "extraction_suspected", f"Access suspended: "
                         f"{key.flag['detector']} detector: {key.flag['reason']}.",
                         {"X-Modelshield-Flag": key.flag["detector"]})
        throttled = tier.on_flag == "throttle" and \
            self._shared(self._flag, key, tier, ip) is not None
        limits = tier.throttled if throttled else tier.limits
        checks: list[tuple[Limits, str]] = [
            (self.config.global_limits, "global"), (self.config.ip_limits, f"ip:{ip}"),
            (limits, f"key:{key.key_id}")]
        for lim, who in checks:  # every limit charges what it names: requests, rows, tokens
            for kind, cost in (("requests", 1), ("rows", rows), ("tokens", tokens)):
                rate = getattr(lim, kind)
                if rate and cost:
                    for item in self._parsed(rate):
                        # RateLimit-* headers describe the caller's own key limits.
                        self._hit(item, f"{who}:{kind}", cost, decision, who.startswith("key"))

    def _hit(self, item: RateLimitItem, ident: str, cost: int, decision: Decision,
             report: bool) -> None:
        try:
            ok = self.limiter.hit(item, ident, cost=cost)
            # Stats cost a second storage call: only for the caller's own limits, or a refusal.
            stats = self.limiter.get_window_stats(item, ident) if report or not ok else None
        except STORE_ERRORS as exc:  # the shared store is unreachable
            if self.config.storage.fail == "open":
                return
            raise Denied(503, "limits_unavailable",
                         f"Rate-limit store unreachable ({type(exc).__name__}); refusing "
                         "(storage.fail = closed).") from None
        if stats is None:
            return
        retry = max(0, math.ceil(stats.reset_time - self.clock()))
        headers = {"RateLimit-Limit": str(item.amount), "RateLimit-Remaining": str(stats.remaining),
                   "RateLimit-Reset": str(retry)}
        decision.headers.update(headers)
        if not ok:
            raise Denied(429, "rate_limited", f"Rate limit {item} exceeded for {ident.split(':')[0]}"
                         f" ({ident.rsplit(':', 1)[1]}).", {**headers, "Retry-After": str(retry)})

    def _detect(self, key: ApiKey, tier: Tier, x: FloatArray, prediction: Any,
                decision: Decision, ip: str) -> None:
        """Watch the account and, with ``group_by``, its group: attackers who split the
        work over many keys from one network (or one owner) are seen as one extractor.
        A flag is kept in the shared state, so every replica acts on it."""
        watched = [key.key_id]
        group = _group(tier.group_by, key, ip)
        if group is not None:
            watched.append(group)
        detectors = self.detectors[key.tier]
        reads: list[Read] = []
        if self.state.batches:  # only a shared store fetches ahead
            reads = [("value", f"flag:{ident}") for ident in watched]
            for det in detectors:
                for ident in watched:
                    reads += det.reads(ident, prediction)
        with self.state.batch(reads):  # Redis: one round trip to read, one to write
            for det in detectors:
                for ident in watched:
                    flag = det.observe(ident, x, prediction)
                    if flag is not None:
                        self._record_flag(ident, flag, decision)
            self._act(key, tier, ip, decision)

    def _record_flag(self, ident: str, flag: Flag, decision: Decision) -> None:
        """Keep the first flag of an account (or group) in the shared state and in the
        durable store, so a restart or a store without persistence keeps a suspension."""
        decision.flags.append(flag)
        if self.state.get(f"flag:{ident}") is None:
            self.state.set(f"flag:{ident}", flag.__dict__)
            try:
                self.store.record_flag(ident, flag.detector, flag.score, flag.reason)
            except SQLAlchemyError:  # the flag still holds in the state store
                log.warning("flag of %s not written to the durable store", ident,
                            exc_info=True)
        self.flagged.setdefault(ident, flag)

    def _act(self, key: ApiKey, tier: Tier, ip: str, decision: Decision) -> None:
        """Apply the tier's ``on_flag`` action if the key or its group is flagged."""
        flag = self._flag(key, tier, ip)
        if flag is not None:
            self.flagged.setdefault(key.key_id, flag)
            decision.action = tier.on_flag
            if tier.on_flag == "deny":
                raise Denied(403, "extraction_suspected",
                             f"Access suspended: {flag.detector} detector: {flag.reason}.",
                             {"X-Modelshield-Flag": flag.detector})

    def _shared(self, step: Callable[..., Any], *args: Any) -> Any:
        """Run a step that uses the shared state; if the store is unreachable, refuse
        (fail closed) or go on without it (fail open), as ``storage.fail`` says."""
        try:
            return step(*args)
        except STORE_ERRORS as exc:  # only the store's own failures: a bug stays a bug
            if self.config.storage.fail == "open":
                return None
            raise Denied(503, "state_unavailable",
                         f"Detector state store unreachable ({type(exc).__name__}); refusing "
                         "(storage.fail = closed).") from None

    def _flag(self, key: ApiKey, tier: Tier, ip: str) -> Flag | None:
        """The flag on this key or on its group, from the shared state."""
        for ident in (key.key_id, _group(tier.group_by, key, ip)):
            if ident is not None:
                value = self.state.get(f"flag:{ident}")
                if value is not None:
                    return Flag(**value)
        if key.flag is not None:  # durable, but gone from the state store (a restart)
            flag = Flag(key.flag["detector"], key.flag["score"], key.flag["reason"])
            self.state.set(f"flag:{key.key_id}", flag.__dict__)
            return flag
        return None

    def _policy(self, key: ApiKey, decision: Decision) -> OutputPolicy:
        if decision.action == "degrade":
            return self.degraded[key.tier]
        return self.policies[key.tier]


MAX_KEY_CHARS = 256
"""Issued keys are 52 characters; anything longer than this is refused unread."""


def lm_spec(name: str) -> ApiSpec:
    """A language model's entry in the classifier-shaped contract: only its name is used."""
    return ApiSpec(n_features=1, classes=("next-token",), low=np.zeros(1), high=np.ones(1),
                   name=name)


def _spec_from_config(config: ShieldConfig) -> ApiSpec:
    """The API contract of a model file or upstream, from the ``model`` section."""
    m = config.model
    missing = [f for f in ("classes", "low", "high") if getattr(m, f) is None]
    if missing:
        raise ConfigError(f"model: a model file or upstream needs {', '.join(missing)} "
                          "(the classes and the input domain).")
    lengths = {len(v) for v in (m.low, m.high) if isinstance(v, list)}
    if m.n_features is not None:
        lengths.add(m.n_features)
    if len(lengths) != 1:
        raise ConfigError("model: give n_features, or low/high lists of one length; got "
                          f"lengths {sorted(lengths) or 'none'}.")
    d = lengths.pop()
    name = m.name or (Path(m.file).stem if m.file else "model")
    return ApiSpec(n_features=d, classes=tuple(m.classes or ()),
                   low=np.broadcast_to(np.asarray(m.low, dtype=float), (d,)).copy(),
                   high=np.broadcast_to(np.asarray(m.high, dtype=float), (d,)).copy(),
                   accepts_missing=m.accepts_missing, integer_features=m.integer_features,
                   name=name)


def _group(by: str, key: ApiKey, ip: str) -> str | None:
    if by == "owner":
        return f"owner:{key.owner}"
    if by == "ip":
        parts = ip.split(".")
        return "ip:" + (".".join(parts[:3]) if len(parts) == 4 else ip)  # IPv4 /24
    return None


def _answer_record(answer: Answer) -> dict[str, Any]:
    out: dict[str, Any] = {"labels": answer.labels}
    for name in ("probabilities", "confidence", "leaf_ids"):
        value = getattr(answer, name)
        if value is not None:
            out[name] = np.where(np.isnan(value), None, value) if name == "probabilities" \
                else value
    return out
