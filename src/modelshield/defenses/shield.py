"""The Shield: the defense pipeline every query passes, in-process or behind the gateway.

Each request passes an ordered list of stages (:mod:`modelshield.defenses.stages`)::

    classifier:      authenticate -> check inputs -> limit -> model -> detect -> watermark
                     -> shape -> record
    language model:  authenticate -> check request -> limit requests -> size bound
                     -> tokenize -> system prompt -> check prompts -> limit tokens
                     -> detect -> generate -> leak filter -> record

Admission stages refuse with :class:`~modelshield.errors.Denied` (401/403/413/422/429/503);
a request refused for its inputs costs no rate-limit budget (a language model's prompt is
checked once its request limits admit it: tokenizing is work), and every refusal is
recorded as one. Detectors flag an account, and the tier's ``on_flag`` action (alert, throttle,
degrade, deny) applies from then on; a flag is kept in the state store and in the durable
store. The recorder commits the audit record before the answer leaves. The same object
serves :class:`~modelshield.oracle.ShieldOracle` and the HTTP gateway; the gateway's factory
(:mod:`modelshield.serve.factory`) builds it from a config.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from limits import RateLimitItem, parse_many, storage, strategies
from limits.strategies import RateLimiter
from sqlalchemy.exc import SQLAlchemyError

from modelshield.answer import Answer, ApiSpec, FloatArray, LMChoice, LMRequest
from modelshield.defenses.auth_failures import CODES as AUTH_CODES
from modelshield.defenses.auth_failures import AuthFailures
from modelshield.defenses.config import ShieldConfig, Tier
from modelshield.defenses.detectors import Detector, Flag, Probing, make_detector
from modelshield.defenses.leakfilter import LeakFinder
from modelshield.defenses.limits_batch import charger
from modelshield.defenses.limits_memory import SweptMemoryStorage
from modelshield.defenses.llm import Delta
from modelshield.defenses.lm_stages import LM_STAGES
from modelshield.defenses.policies import OutputPolicy, parse_policy
from modelshield.defenses.stages import (
    CLASSIFIER_STAGES,
    MAX_KEY_CHARS,
    Authenticate,
    Call,
    Stage,
    StageFactory,
)
from modelshield.defenses.state import STORE_ERRORS, redis_timeouts, state_from_url
from modelshield.defenses.watermark import ServeWatermark
from modelshield.errors import ConfigError, Denied
from modelshield.store import ApiKey, AuditRecord, AuditStore
from modelshield.victims.base import ModelAdapter

__all__ = ["MAX_KEY_CHARS", "Decision", "Shield", "lm_spec"]

log = logging.getLogger("modelshield.shield")


@dataclass
class _LoopCall:
    """A request whose stages run on an event loop (:meth:`Shield.handle_on_loop`): the
    records they commit, each with whether the answer waits on it, for the loop to
    await; and the detection deferred until the answer is committed and sent."""

    records: list[tuple[AuditRecord, bool]] = field(default_factory=list)
    deferred: list[tuple[str, Callable[[], None]]] = field(default_factory=list)


_ON_LOOP: contextvars.ContextVar[_LoopCall | None] = contextvars.ContextVar("on_loop",
                                                                            default=None)
FAST_MODEL_SECONDS = 0.002
"""``answer_on: auto`` runs the stages on the loop for a model faster than this a row."""
LOOP_MAX_ROWS = 16
"""A request of more rows runs on a request thread even so: its model call and its
detection would hold up every other request on the loop."""


@dataclass
class Decision:
    """What the Shield decided for one request (it goes into the audit record)."""

    key_id: str | None = None
    tier: str | None = None
    action: str = "allow"
    policy: str = ""
    flags: list[Flag] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    watermarked: int = 0  # rows answered with the watermark's label
    redacted: int = 0  # choices the leak filter redacted
    prompt_tokens: int = 0  # a language model's prompts as answered (system prompt included)
    disconnected: bool = False  # a stream's reader hung up: generation stopped there

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tier": self.tier, "action": self.action, "policy": self.policy,
            "flags": [{"detector": f.detector, "score": round(f.score, 4), "reason": f.reason}
                      for f in self.flags]}
        if self.watermarked:
            out["watermarked"] = self.watermarked
        if self.redacted:
            out["redacted"] = self.redacted
        if self.disconnected:
            out["disconnected"] = True
        return out


def _output_policies(config: ShieldConfig
                     ) -> tuple[dict[str, OutputPolicy], dict[str, OutputPolicy]]:
    """Each tier's output policy, and its degrade policy."""
    secret = config.noise_secret
    policies = {name: parse_policy(t.policy, secret=secret) for name, t in config.tiers.items()}
    degraded = {name: parse_policy(t.degrade_policy, secret=secret)
                for name, t in config.tiers.items()}
    return policies, degraded


def _leak_finders(config: ShieldConfig, system_prompts: dict[str, str | None]
                  ) -> dict[str, LeakFinder]:
    """The leak filter of each tier that has one, over the tier's system prompt."""
    out: dict[str, LeakFinder] = {}
    for name, t in config.tiers.items():
        if t.llm.leak_filter is None:
            continue
        secret = system_prompts[name]
        if secret is None:
            raise ConfigError(f"tiers.{name}.llm.leak_filter: there is no system prompt "
                              "to guard; set model.system_prompt (or system_prompt_file) "
                              f"or tiers.{name}.llm.system_prompt")
        out[name] = LeakFinder(secret, t.llm.leak_filter.ngram, t.llm.leak_filter.public)
    return out


class Shield:
    """Authenticate, limit, watch, shape and record every query to one model."""

    def __init__(self, config: ShieldConfig, model: ModelAdapter | Any, spec: ApiSpec,
                 store: AuditStore, *, benign: FloatArray | None = None,
                 clock: Callable[[], float] = time.time,
                 stages: Sequence[StageFactory] | None = None,
                 lm_stages: Sequence[StageFactory] | None = None,
                 limiter: RateLimiter | None = None, scoped: bool = False) -> None:
        """``limiter``: one shared by the Shields of a gateway's models (so that global and
        per-address limits count every model's requests); ``scoped``: keep this model's
        detector state apart in a shared store (a gateway of several models)."""
        self.config, self.model, self.spec, self.store, self.clock = \
            config, model, spec, store, clock
        self.limiter = limiter or make_limiter(config)
        # A request's limits are charged all or none; on Redis with the moving window in
        # one script call (one round trip).
        self.charge = charger(self.limiter, config.storage.strategy == "moving-window")
        self.policies, self.degraded = _output_policies(config)
        self.llm_policies = {name: t.llm.model_copy(update={
            "noise_key": config.noise_secret or "",
            "watermark_key": config.watermark_secret or ""})
            for name, t in config.tiers.items()}
        model_prompt = config.model.read_system_prompt()
        self.system_prompts = {name: t.llm.system_prompt or model_prompt
                               for name, t in config.tiers.items()}
        self.leak_finders = _leak_finders(config, self.system_prompts)
        self.watermarks = {
            name: ServeWatermark(config.watermark_secret or "", spec, t.watermark.rate,
                                 t.watermark.cell, t.watermark.projections)
            for name, t in config.tiers.items() if t.watermark is not None and spec.n_classes > 1}
        self.state = state_from_url(config.storage.limits, spec.name if scoped else "")
        self.detectors = {name: self._detectors(name, tier, benign)
                          for name, tier in config.tiers.items()}
        self.auth_failures = AuthFailures(store, clock, spec.name)
        self.flagged: dict[str, Flag] = {}  # this replica's view; the state store is shared
        self._rates: dict[str, list[RateLimitItem]] = {}
        self.stages: list[Stage] = [make(self) for make in stages or CLASSIFIER_STAGES]
        self.lm_stages: list[Stage] = [make(self) for make in lm_stages or LM_STAGES]
        self._after: ThreadPoolExecutor | None = None  # detection off the path, in order
        self._pending: dict[str, Future[None]] = {}
        self._loop_pending: dict[str, Callable[[], None]] = {}  # the same, on the loop
        # Held while loop-deferred work is taken and run: a thread that settles an
        # account waits for the loop's run of its work, and two never run at once.
        self._pending_lock = threading.Lock()
        self.on_loop = self._answers_on_loop()
        self._restore_flags()

    def _detectors(self, name: str, tier: Tier, benign: FloatArray | None) -> list[Detector]:
        """The tier's detectors, calibrated on ``benign`` (natural data the model was not
        trained on) for the tier's false-positive rate, shared equally among the detectors
        that test the data (not volume); ``llm.detect_probing`` adds the probing detector
        with its settings."""
        out = [make_detector(d, state=self.state) for d in tier.detectors]
        p = tier.llm
        if p.detect_probing and not any(d.name == Probing.name for d in out):
            out.append(Probing(state=self.state, distinct_bias_tokens=p.probe_distinct_bias_tokens,
                               min_requests=p.probe_min_requests,
                               bias_novelty=p.probe_bias_novelty,
                               single_token_prompts=p.probe_single_token_requests,
                               logit_vectors=p.probe_logit_vectors))
        for det in out:
            if isinstance(det, Probing):  # logit vectors are counted in the model's vocabulary
                det.vocab = int(getattr(self.model, "vocab", 0) or 0)
        tested = [d for d in out if d.kind == "classifier" and d.needs_calibration]
        if tested and benign is None:
            raise ConfigError(
                f"model.calibration: tier {name!r} has the detectors "
                f"{', '.join(d.name for d in tested)}, which are calibrated on the owner's "
                "natural data (rows the model was not trained on, as customers send them): "
                "name a .npz, .csv or .parquet file of such rows in model.calibration "
                "(modelshield calibrate --from-audit-log writes one from past traffic)")
        for det in tested:
            det.alpha = tier.fpr / len(tested)
            det.calibrate(benign, self.model.predict)  # type: ignore[arg-type]  # checked above
        return out

    def _answers_on_loop(self) -> bool:
        """Whether the gateway runs this classifier's small requests on its event loop
        (``answer_on``; auto: an in-process model that answers a row within
        :data:`FAST_MODEL_SECONDS`, with memory state and a SQLite log, where nothing on
        the path waits on the network)."""
        choice, c = self.config.answer_on, self.config
        if self.lm is not None or choice == "threads":
            return False
        if c.model.upstream:
            if choice == "loop":
                raise ConfigError.invalid(
                    "answer_on", "threads or auto for a model behind an upstream server (its "
                    "calls wait on the network, and would hold up the event loop)", choice)
            return False
        if choice == "loop":
            return True
        if not c.storage.limits.startswith("memory://") or \
                self.store.engine.dialect.name != "sqlite":
            return False
        row = np.asarray(self.spec.low, dtype=np.float64)[None, :]
        took = []
        for _ in range(3):
            start = time.perf_counter()
            try:
                self.model.predict(row)
            except Exception:  # it cannot answer its domain's corner: leave it to threads
                return False
            took.append(time.perf_counter() - start)
        return sorted(took)[1] < FAST_MODEL_SECONDS

    def _restore_flags(self) -> None:
        """Put the durable flags of groups back into the state store (a restarted
        ``memory://`` gateway, or a Redis without persistence, would have lost them)."""
        with contextlib.suppress(*STORE_ERRORS):
            for f in self.store.flags():
                if self.state.get(f"flag:{f['ident']}") is None:
                    self.state.set(f"flag:{f['ident']}", {"detector": f["detector"],
                                                          "score": f["score"],
                                                          "reason": f["reason"]})

    def close(self) -> None:
        """Release the store's connections and the model's (an upstream client, say)."""
        if self._after is not None:  # pending detection finishes first
            self._after.shutdown(wait=True)
        for key_id in list(self._loop_pending):  # and the loop's, if it never got to it
            self._run_pending(key_id)
        self.auth_failures.close()
        self.store.close()
        close = getattr(self.model, "close", None)
        if callable(close):
            close()

    # -- the pipeline ------------------------------------------------------------------------
    def handle(self, api_key: str | None, inputs: Any, client_ip: str = "127.0.0.1"
               ) -> tuple[Answer, Decision]:
        """Answer one batch for the holder of ``api_key``, or raise Denied. A refusal is
        recorded too (its status, code and reason; the rows if they were valid)."""
        if self.lm is not None:
            raise Denied(404, "not_a_classifier",
                         f"{self.spec.name!r} is a language model; use /v1/completions or "
                         "/v1/chat/completions.", {"X-Error-Param": "model"})
        call = self.run(self.stages, Call(api_key, client_ip, Decision(), inputs=inputs))
        if call.answer is None:
            raise RuntimeError("the stages gave no answer (no Shape stage?)")
        return call.answer, call.decision

    async def handle_on_loop(self, api_key: str | None, inputs: Any,
                             client_ip: str = "127.0.0.1") -> tuple[Answer, Decision]:
        """:meth:`handle` on the running event loop, with nothing on it that waits: the
        stages run here (an in-process model, its state in memory or a nearby Redis),
        their audit records are committed by the log's writer thread while the loop goes
        on, and the answer returns once its record is committed (else 503, as
        :meth:`commit`). Detection after the answer runs on the loop too, before the
        account's next request."""
        await self._settled_off_loop(api_key)
        call = _LoopCall()
        token = _ON_LOOP.set(call)
        try:
            answer, decision = self.handle(api_key, inputs, client_ip)
        except Denied:
            await self._commit_on_loop(call)
            raise
        finally:
            _ON_LOOP.reset(token)
        await self._commit_on_loop(call)  # a 503 here: its detection is dropped, as on
        loop = asyncio.get_running_loop()  # a thread, where it is deferred once committed
        for key_id, work in call.deferred:
            self.settle(key_id)  # the account's earlier work first (at most one pending)
            self._loop_pending[key_id] = work
            # Once the caller has sent the answer (it does not yield before then), in a
            # context of its own (the request's has ended).
            loop.call_soon(self._run_pending, key_id, work, context=contextvars.Context())
        return answer, decision

    async def _settled_off_loop(self, api_key: str | None) -> None:
        """Await the account's detection running on a thread (a large request's), so the
        stages' ``settle`` finds it done and does not hold up the loop."""
        if not self._pending:  # nothing runs on a thread: no key to look up
            return
        record = self.store.cached(api_key) if api_key else None
        future = self._pending.get(record.key_id) if record is not None else None
        if future is not None and not future.done():
            with contextlib.suppress(Exception):  # _logged: it raises nothing
                await asyncio.wrap_future(future)

    async def _commit_on_loop(self, call: _LoopCall) -> None:
        """Commit the records a request's stages made; an answer's record that cannot be
        committed refuses the answer (a refusal's stands without its record)."""
        if not call.records:
            return
        try:
            await self.store.commit_async([r for r, _ in call.records])
        except Exception as exc:
            if any(needed for _, needed in call.records):
                raise _audit_unavailable(exc) from None

    @property
    def lm(self) -> Any:
        """The served language model (local, or upstream), or None for a classifier."""
        return self.model if hasattr(self.model, "next_logits") or \
            hasattr(self.model, "complete") else None

    def handle_completion(self, api_key: str | None, req: LMRequest,
                          client_ip: str = "127.0.0.1",
                          on_step: Callable[[Decision, list[Delta]], bool | None] | None = None
                          ) -> tuple[list[LMChoice], Decision]:
        """Answer one completion request for the holder of ``api_key``, or raise Denied:
        the same kinds of stage as ``handle``, with the tier's language-model policy in
        place of the output policy. ``on_step`` receives each step's tokens as they are
        generated (streaming); if it returns False, generation stops there (the reader is
        gone) and what was generated is recorded."""
        if self.lm is None:
            raise Denied(404, "not_a_language_model",
                         f"{self.spec.name!r} is not a language model; use /v1/models/"
                         f"{self.spec.name}/predict.")
        call = self.run(self.lm_stages, Call(api_key, client_ip, Decision(), req=req,
                                             on_step=on_step))
        return call.choices, call.decision

    def run(self, stages: Sequence[Stage], call: Call) -> Call:
        """Pass ``call`` through ``stages`` in order; a refusal is recorded, then raised."""
        with self.store.in_flight():  # the log's group commit waits only for others
            try:
                for stage in stages:
                    stage(call)
            except Denied as exc:
                self._refused(exc, call.decision, call.client_ip, call.x)
                raise
        for work in call.after:
            self.defer(call.key.key_id, work)
        return call

    def defer(self, key_id: str, work: Callable[[], None]) -> None:
        """Run ``work`` off the request's path, after the account's earlier work (one
        thread, in order; on the event loop, a callback there once the request's record
        is committed and its answer sent); the account's next request waits for it
        (:meth:`settle`)."""
        on_loop = _ON_LOOP.get()
        if on_loop is not None:  # once the answer is committed and sent (handle_on_loop)
            on_loop.deferred.append((key_id, work))
            return
        if self._after is None:
            self._after = ThreadPoolExecutor(1, thread_name_prefix="detect-after")
        future = self._after.submit(_logged, work)
        self._pending[key_id] = future
        future.add_done_callback(
            lambda f: self._pending.pop(key_id, None) if self._pending.get(key_id) is f
            else None)

    def _run_pending(self, key_id: str, work: Callable[[], None] | None = None) -> None:
        """The account's deferred work on the loop (``work``: only if that is still what
        is pending), unless a request of the account ran it first."""
        with self._pending_lock:
            pending = self._loop_pending.get(key_id)
            if pending is None or (work is not None and pending is not work):
                return
            del self._loop_pending[key_id]
            _logged(pending)

    def settle(self, key_id: str) -> None:
        """Wait for the account's deferred work (a flag it raises acts from now on)."""
        self._run_pending(key_id)
        future = self._pending.get(key_id)
        if future is not None:
            future.result()

    def authenticate(self, api_key: str | None, client_ip: str = "127.0.0.1",
                     tier: bool = True) -> ApiKey:
        """The key's record, or Denied (recorded as a refusal): the gateway's check before
        it reads a request's body. ``tier=False`` skips the check that this model knows the
        key's tier (a gateway of many models checks that per model)."""
        decision = Decision()
        try:
            return self._key(api_key, client_ip, decision, tier)
        except Denied as exc:
            self._refused(exc, decision, client_ip, None)
            raise

    def account(self, api_key: str | None, client_ip: str = "127.0.0.1") -> dict[str, Any]:
        """What the holder of ``api_key`` may see of its own account (or raise Denied):
        its tier, that tier's output policy and limits, and the terms it accepted."""
        key = self._key(api_key, client_ip, Decision())
        tier = self.config.tiers[key.tier]
        return {"key_id": key.key_id, "tier": key.tier, "policy": self.policies[key.tier].spec,
                "limits": tier.limits.model_dump(), "max_batch": tier.max_batch,
                "expires_at": key.expires_at, "terms_version": key.terms_version,
                "terms_accepted_at": key.terms_accepted_at}

    def _key(self, api_key: str | None, client_ip: str, decision: Decision,
             tier: bool = True) -> ApiKey:
        auth = next((s for s in self.stages if isinstance(s, Authenticate)), None) \
            or Authenticate(self)
        return auth.key(api_key, client_ip, decision, tier)

    # -- services the stages share -------------------------------------------------------------
    def commit(self, record: AuditRecord) -> None:
        """Commit a record before its answer leaves; if the log cannot take it, refuse.
        On the event loop the record is queued, and the answer waits for it there."""
        on_loop = _ON_LOOP.get()
        if on_loop is not None:
            on_loop.records.append((record, True))
            return
        try:
            self.store.commit([record])
        except Exception as exc:  # the database refused or is gone: nothing leaves unlogged
            raise _audit_unavailable(exc) from None

    def _refused(self, exc: Denied, decision: Decision, ip: str, rows: Any) -> None:
        """Record a refusal: who, why, and the rows when they were valid. The refusal
        itself stands even if the log cannot take the record. A request without a valid
        key is counted in its address's summary instead (:mod:`.auth_failures`)."""
        if decision.key_id is None and exc.code in AUTH_CODES:
            self.auth_failures.note(ip, exc.code)
            return
        record = AuditRecord(
            ts=self.clock(), key_id=decision.key_id, client_ip=ip, model=self.spec.name,
            rows=0 if rows is None else len(rows), inputs=rows, answer=None,
            decision={**decision.to_record(), "action": "refuse", "status": exc.status,
                      "code": exc.code, "reason": str(exc)})
        on_loop = _ON_LOOP.get()
        if on_loop is not None:
            on_loop.records.append((record, False))
            return
        with contextlib.suppress(Exception):
            self.store.commit([record])

    def rates(self, rate: str) -> list[RateLimitItem]:
        """A rate string parsed once (``100/hour;1000/day``)."""
        if rate not in self._rates:
            self._rates[rate] = parse_many(rate)
        return self._rates[rate]

    def shared(self, step: Callable[..., Any], *args: Any) -> Any:
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

    def record_flag(self, ident: str, flag: Flag, decision: Decision) -> None:
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

    def act_on_flag(self, key: ApiKey, tier: Tier, ip: str, decision: Decision) -> None:
        """Apply the tier's ``on_flag`` action if the key or its group is flagged."""
        flag = self.flag_of(key, tier, ip)
        if flag is not None:
            self.flagged.setdefault(key.key_id, flag)
            decision.action = tier.on_flag
            if tier.on_flag == "deny":
                raise Denied(403, "extraction_suspected",
                             f"Access suspended: {flag.detector} detector: {flag.reason}.",
                             {"X-Modelshield-Flag": flag.detector})

    def flag_of(self, key: ApiKey, tier: Tier, ip: str) -> Flag | None:
        """The flag on this key or on its group, from the shared state (or the durable
        store, when the state store has lost it: a flush, a restart without persistence)."""
        group = self.group_of(tier, key, ip)
        for ident in (key.key_id, group):
            if ident is not None:
                value = self.state.get(f"flag:{ident}")
                if value is not None:
                    return Flag(**value)
        durable = key.flag if key.flag is not None else \
            None if group is None else self.store.flag(group)
        if durable is not None:
            flag = Flag(durable["detector"], durable["score"], durable["reason"])
            self.state.set(f"flag:{key.key_id if key.flag is not None else group}",
                           flag.__dict__)
            return flag
        return None

    @staticmethod
    def group_of(tier: Tier, key: ApiKey, ip: str) -> str | None:
        """The group a tier's ``group_by`` watches the key in: its owner, or its /24."""
        if tier.group_by == "owner":
            return f"owner:{key.owner}"
        if tier.group_by == "ip":
            parts = ip.split(".")
            return "ip:" + (".".join(parts[:3]) if len(parts) == 4 else ip)  # IPv4 /24
        return None


def _audit_unavailable(exc: Exception) -> Denied:
    """The refusal of an answer the audit log could not record: nothing leaves unlogged."""
    return Denied(503, "audit_unavailable", f"The audit log cannot record this request "
                  f"({type(exc).__name__}); refusing.")


def _logged(work: Callable[[], None]) -> None:
    """Deferred work: a refusal it raises (the state store gone, failing closed) or a bug
    is logged; the request it watched was answered already."""
    try:
        work()
    except Denied as exc:
        log.warning("detection after the answer: %s", exc)
    except Exception:
        log.exception("detection after the answer failed")


def make_limiter(config: ShieldConfig) -> RateLimiter:
    """The rate limiter of ``storage``: its strategy over memory or Redis counters."""
    strategy = {"moving-window": strategies.MovingWindowRateLimiter,
                "sliding-window": strategies.SlidingWindowCounterRateLimiter,
                "fixed-window": strategies.FixedWindowRateLimiter}[config.storage.strategy]
    counters = SweptMemoryStorage() if config.storage.limits.startswith("memory://") \
        else storage.storage_from_string(config.storage.limits, **redis_timeouts())
    return strategy(counters)  # type: ignore[abstract]


def lm_spec(name: str) -> ApiSpec:
    """A language model's entry in the classifier-shaped contract: only its name is used."""
    return ApiSpec(n_features=1, classes=("next-token",), low=np.zeros(1), high=np.ones(1),
                   name=name)
