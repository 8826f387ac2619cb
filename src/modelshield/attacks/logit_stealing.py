"""Stealing a language model's hidden size and output projection through its API
(Carlini et al., "Stealing Part of a Production Language Model", ICML 2024; Finlayson et al.,
"Logits of API-Protected LLMs Leak Proprietary Information", COLM 2024).

A transformer's logits are ``W x`` with W the (vocabulary x hidden) output projection, so
logit vectors collected over many prompts span a space of dimension ``hidden``: the singular
values of the stacked vectors drop sharply after the hidden size, and the top right singular
vectors give W up to a hidden x hidden linear map.

The logit vectors come from one of three variants of the API, the cheapest first:

- ``full``: the API returns every token's logprob (``logprobs = vocabulary``), one query a
  vector; logprobs are logits minus one constant per prompt, which centring removes;
- ``topk-bias``: top-k logprobs plus logit bias. Biasing k-1 tokens by B puts them in the
  top k beside the reference token r, and ``(lp_i - b_i) - (lp_r - b_r) = z_i - z_r``:
  k-1 logit differences per query. When the API's logprobs ignore the bias (the vendors'
  fix of March 2024) the biased tokens never show, and the variant says so;
- ``bias-search``: no logprobs at all. At temperature 0 the answer is the argmax, so the
  smallest bias that makes token i win is ``z_r - z_i``, found by bisection: about
  log2(B / tolerance) queries per logit. The tolerance sets a noise floor in the spectrum
  that can hide a trained model's weakest directions; while the floor measured is the one
  the tolerance predicts, every bracket found so far is narrowed 1024 times (10 queries a
  logit), until the floor is the model's own.

An attacker does not need every token to learn the hidden size: any m > hidden tokens span
the same rank, so the hidden-size attack reads logits of a random subset of tokens.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from modelshield.errors import AttackFailed, BudgetExhausted, ConfigError, Refused, VariantBlocked
from modelshield.oracle.lm import LMOracle
from modelshield.registry import Registry

LM_ATTACKS: Registry[type[LMAttack]] = Registry("language-model attack")
VARIANTS = ("full", "topk-bias", "bias-search")


@dataclass
class LMExtraction:
    """What a language-model attack took away, and what it cost."""

    attack: str
    variant: str
    queries: int
    requests: int
    tokens: int
    cost: float
    seconds: float
    hidden_size: int | None = None
    singular_values: list[float] = field(default_factory=list)
    W: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class LMAttack:
    """Base: a dataclass of parameters with one entry, ``run(oracle, budget)``."""

    name: ClassVar[str]
    paper: ClassVar[str] = "Carlini et al., ICML 2024; Finlayson et al., COLM 2024"
    needs: ClassVar[str] = "logprobs or logit bias"

    variant: str = "auto"
    prompts_per_round: int = 64
    prompt_length: int = 8
    top_k: int = 5
    bias: float = 100.0
    tolerance: float = 1e-3
    random_state: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            LM_ATTACKS.add(cls.name, cls)

    def __post_init__(self) -> None:
        if self.variant not in ("auto", *VARIANTS):
            raise ConfigError.invalid("variant", "auto, " + ", ".join(VARIANTS), self.variant)
        if self.top_k < 2:
            raise ConfigError.invalid("top_k", "an integer >= 2", self.top_k)
        if self.prompts_per_round < 1 or self.prompt_length < 1:
            raise ConfigError.invalid("prompts_per_round", "an integer >= 1",
                                      self.prompts_per_round)

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0]

    def run(self, oracle: LMOracle, budget: int) -> LMExtraction:
        """Try the variants cheapest first (or the one asked for); a blocked variant is
        reported with the API's reason and the cost of the ones left."""
        if budget < 1:
            raise ConfigError.invalid("budget", "an integer >= 1", budget)
        start = time.perf_counter()
        rng = np.random.default_rng(self.random_state)
        blocked: dict[str, str] = {}
        tried = VARIANTS if self.variant == "auto" else (self.variant,)
        for variant in tried:
            try:
                out = self.extract(Collector(oracle, budget, variant, self, rng), rng)
            except VariantBlocked as exc:
                blocked[variant] = str(exc)
                continue
            except (AttackFailed, BudgetExhausted) as exc:
                if not blocked:
                    raise
                # The variant that ran out says why; the ones refused before it keep theirs.
                raise AttackFailed(f"{variant}: {exc}; before it, " + "; ".join(
                    f"{v} was blocked: {why}" for v, why in blocked.items())) from exc
            out.seconds = time.perf_counter() - start
            out.info["blocked_variants"] = blocked
            return out
        raise VariantBlocked(f"{self.name}: " + "; ".join(
            f"{v}: {why}" for v, why in blocked.items()) + "; " + remaining_cost(
            oracle.vocab, self.top_k, blocked, self.bias, self.tolerance, tried))

    def extract(self, c: Collector, rng: np.random.Generator) -> LMExtraction:
        raise NotImplementedError


def remaining_cost(vocab: int, k: int, blocked: dict[str, str], bias: float,
                   tolerance: float, tried: tuple[str, ...] = VARIANTS) -> str:
    """What each variant not tried would cost, in queries per full logit vector.

    Only a variant that was tried is known to be blocked; the others are "not tried" (the
    API may refuse them too), never "open"."""
    cost = {"full": 1, "topk-bias": 1 + math.ceil((vocab - 1) / (k - 1)),
            "bias-search": (vocab - 1) * bisection_steps(bias, tolerance)}
    left = [f"{v} ~{cost[v]:,} queries per logit vector" for v in VARIANTS
            if v not in blocked and v not in tried]
    if left:
        return "not tried (the API may refuse them too): " + ", ".join(left)
    return "every variant is blocked"


def bisection_steps(bias: float, tolerance: float) -> int:
    return max(1, math.ceil(math.log2(bias / tolerance))) + 1


class Collector:
    """Gathers logit-difference vectors of prompts over a token subset through one variant,
    within a query budget; counts what each vector cost."""

    def __init__(self, oracle: LMOracle, budget: int, variant: str, attack: LMAttack,
                 rng: np.random.Generator) -> None:
        self.oracle, self.budget, self.variant, self.a, self.rng = (oracle, budget, variant,
                                                                    attack, rng)
        self.start = oracle.used
        self.rows: list[np.ndarray] = []
        self.tolerance = attack.tolerance
        self.searches: list[_Bracket] = []

    @property
    def used(self) -> int:
        return self.oracle.used - self.start

    def _ask(self, prompts: list[list[int]], **kw: Any) -> Any:
        if self.used + len(prompts) > self.budget:
            raise BudgetExhausted(len(prompts), self.used, self.budget)
        try:
            return self.oracle.complete(prompts, **kw)
        except Refused as exc:
            if exc.status in (400, 403) and exc.code in (
                    "logprobs_not_allowed", "logit_bias_not_allowed", "invalid_value",
                    "logprobs_withdrawn"):
                raise VariantBlocked(f"the API refused it ({exc})") from None
            raise

    def prompts(self, n: int) -> list[list[int]]:
        """Random token prompts (the attacker needs no data)."""
        v = self.oracle.vocab
        return [list(map(int, self.rng.integers(0, v, self.a.prompt_length))) for _ in range(n)]

    def more(self, rows: list[np.ndarray], tokens: np.ndarray) -> bool:
        """Add one round of vectors to ``rows``; False when the budget has no room for it."""
        try:
            rows.extend(self.vectors(self.prompts(self.a.prompts_per_round), tokens))
        except BudgetExhausted:
            return False
        return True

    def vectors(self, prompts: list[list[int]], tokens: np.ndarray) -> np.ndarray:
        """(len(prompts), len(tokens)) logits up to one constant per prompt."""
        if self.variant == "full":
            return self._full(prompts, tokens)
        if self.variant == "topk-bias":
            return self._topk(prompts, tokens)
        return np.stack([self._search(p, tokens) for p in prompts])

    def _full(self, prompts: list[list[int]], tokens: np.ndarray) -> np.ndarray:
        v = self.oracle.vocab
        out = self._ask(prompts, max_tokens=1, logprobs=v)
        rows = []
        for c in out:
            top = c.top_logprobs[0] if c.top_logprobs else {}
            if len(top) < v:
                raise VariantBlocked(f"the API returned {len(top)} of {v} "
                                     "logprobs")
            rows.append(np.array([top[int(t)] for t in tokens]))
        return np.stack(rows)

    def _topk(self, prompts: list[list[int]], tokens: np.ndarray) -> np.ndarray:
        k, b = self.a.top_k, self.a.bias
        first = self._ask(prompts, max_tokens=1, logprobs=k)
        ref = []
        for c in first:
            top = c.top_logprobs[0] if c.top_logprobs else {}
            if not top:
                raise VariantBlocked("the API returned no top logprobs")
            ref.append(max(top, key=lambda t: top[t]))
        rows = np.full((len(prompts), len(tokens)), np.nan)
        for start in range(0, len(tokens), k - 1):
            chunk = [int(t) for t in tokens[start:start + k - 1]]
            out = self._ask(prompts, max_tokens=1, logprobs=k,
                            logit_bias={t: b for t in chunk})
            seen, expected = 0, len(prompts) * len(chunk)
            for i, c in enumerate(out):
                top = c.top_logprobs[0] if c.top_logprobs else {}
                r = ref[i]
                if r not in top:
                    continue
                lr = top[r] - (b if r in chunk else 0.0)
                for j, t in enumerate(chunk):
                    if t in top:
                        rows[i, start + j] = top[t] - b - lr
                        seen += 1
            if seen < expected / 2:  # a bias of +B puts them all there, if it counts
                raise VariantBlocked("biased tokens do not rise into the top logprobs: the "
                                     "API's logprobs ignore logit_bias")
        if np.isnan(rows).any():
            raise AttackFailed(f"{self.a.name}: {int(np.isnan(rows).sum())} logits were not "
                               "recovered (is the bias large enough?)")
        return rows

    def _search(self, prompt: list[int], tokens: np.ndarray) -> np.ndarray:
        """Bisection on the bias that makes each token the argmax: z_ref - z_t.

        The brackets are kept (``self.searches``), so that ``refine`` can narrow every
        vector's later, when the spectrum shows the tolerance was too coarse."""
        b = self.a.bias
        ref = self._ask([prompt], max_tokens=1, temperature=0.0)[0].tokens[0]
        lo, hi = np.zeros(len(tokens)), np.full(len(tokens), b)
        for j, t in enumerate(int(x) for x in tokens):
            if t == ref:
                hi[j] = 0.0
            elif self._ask([prompt], max_tokens=1, temperature=0.0,
                           logit_bias={t: b})[0].tokens[0] != t:
                raise AttackFailed(f"{self.a.name}: some logits lie more than the largest "
                                   "allowed bias below the argmax")
        search = _Bracket(prompt, tokens, lo, hi)
        self._narrow(search, self.tolerance)
        self.searches.append(search)
        return np.asarray(-(search.lo + search.hi) / 2)

    def _narrow(self, search: _Bracket, tol: float) -> None:
        for j, t in enumerate(int(x) for x in search.tokens):
            lo, hi = search.lo[j], search.hi[j]
            while hi - lo > tol:
                mid = (lo + hi) / 2
                won = self._ask([search.prompt], max_tokens=1, temperature=0.0,
                                logit_bias={t: mid})[0].tokens[0] == t
                lo, hi = (lo, mid) if won else (mid, hi)
                search.lo[j], search.hi[j] = lo, hi

    def refine(self, tol: float) -> list[np.ndarray]:
        """Narrow every bisection so far to ``tol`` (bias-search only); the rows anew."""
        for search in self.searches:
            self._narrow(search, tol)
        self.tolerance = tol  # reached by every bracket (a budget cut leaves it unchanged)
        return [-(s.lo + s.hi) / 2 for s in self.searches]


@dataclass
class _Bracket:
    """One prompt's bisections: each token's bias bracket [lo, hi] around z_ref - z_t."""

    prompt: list[int]
    tokens: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def quantization_floor(tolerance: float, n: int, m: int) -> float:
    """The largest singular value bisection errors alone give an n x m stack: each entry is
    off by a uniform error within the tolerance (standard deviation tolerance / sqrt(12)),
    and the spectral norm of such noise is about that times sqrt(n) + sqrt(m)."""
    return tolerance / math.sqrt(12) * (math.sqrt(n) + math.sqrt(m))


def finer_tolerance(s: np.ndarray, tolerance: float, bias: float, n: int, m: int,
                    margin: int = 16) -> float | None:
    """A bisection tolerance 1024 times finer (but no finer than 1e-8 of the bias, about
    what float32 logits resolve) while the noise floor of ``s`` (the median of its last
    ``margin`` values, from n vectors of m logits) is the one ``tolerance`` itself raises;
    None once the floor is the model's own (or the API's), or no finer tolerance is left.

    A signal direction far below the largest (a trained model's last ones, 1e-7 of it in
    the logits) shows only once the bisection floor is under it; nothing in the spectrum
    says how far down it lies, so the search goes on until the floor stops following."""
    s = np.asarray(s, dtype=np.float64)
    if len(s) < margin + 1:
        return None
    if float(np.median(s[-margin:])) > 3 * quantization_floor(tolerance, n, m):
        return None
    tol = max(tolerance / 1024, 1e-8 * bias)
    return None if tol > tolerance / 2 else tol


def hidden_from_singular_values(s: np.ndarray, margin: int = 16, min_gap: float = 4.0
                                ) -> int | None:
    """How many singular values ``s`` (descending) stand above the noise floor.

    The floor is the median of the last ``margin`` values, which are noise once more than
    hidden + margin vectors of more than hidden + margin logits are stacked. The hidden size
    is the count of values over ten times the floor, accepted when at least ``margin``
    values lie below it and the last one drops by ``min_gap`` or more to the next (noise
    values differ from their neighbours by a few percent). (Not
    simply the sharpest drop: the final LayerNorm's bias adds one direction every prompt
    shares, which can be small, and the drop before it then outdoes the one after it.)
    """
    s = np.asarray(s, dtype=np.float64)
    s = s[s > 0]
    if len(s) < margin + 2:
        return None
    # The last few values only: a longer tail would reach into the signal when the stack is
    # barely taller than the hidden size. (With about as many vectors as logits the
    # smallest noise values fall towards zero; the attacks stop well before that.)
    floor = float(np.median(s[-margin:]))
    h = int(np.sum(s > 10 * floor))
    if h == 0 or h > len(s) - margin or s[h - 1] / s[h] < min_gap:
        return None
    return h


def centred_svd(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values and right singular vectors of the rows, each centred (logprobs are
    logits minus one constant per prompt)."""
    q = rows - rows.mean(axis=1, keepdims=True)
    _, s, vt = np.linalg.svd(q, full_matrices=False)
    return s, vt


def singular_values(rows: list[np.ndarray]) -> np.ndarray:
    q = np.stack(rows)
    return np.asarray(np.linalg.svd(q - q.mean(axis=1, keepdims=True), compute_uv=False))


@dataclass
class HiddenSize(LMAttack):
    """Recover a language model's hidden size from the rank of its logit vectors."""

    name = "llm-hidden-size"
    n_tokens: int = 0  # tokens whose logits are read (0: all for 'full', 768 otherwise)
    margin: int = 16

    def extract(self, c: Collector, rng: np.random.Generator) -> LMExtraction:
        v = c.oracle.vocab
        m = self.n_tokens or (v if c.variant == "full" else min(v, 768))
        tokens = np.sort(rng.choice(v, m, replace=False))
        rows: list[np.ndarray] = []
        hidden = None
        s = np.empty(0)

        def collect() -> None:
            nonlocal s, hidden
            while c.more(rows, tokens):
                s = singular_values(rows)
                hidden = hidden_from_singular_values(s, self.margin)
                if hidden is not None or len(rows) >= m + self.margin:
                    return  # more vectors than logits read cannot show more

        collect()
        first = {"hidden_at_start_tolerance": hidden, "queries_at_start_tolerance": c.used}
        refinements = []
        # Bisection's tolerance sets a noise floor of its own, and signal directions below it
        # vanish (a drop found there is too early). While the floor measured is the one the
        # tolerance predicts, every bracket found so far is narrowed further, until the floor
        # is the model's own.
        while c.variant == "bias-search":
            tol = finer_tolerance(s, c.tolerance, self.bias, len(rows), m, self.margin)
            if tol is None:
                break
            try:
                rows[:] = c.refine(tol)
            except BudgetExhausted:
                break
            refinements.append(tol)
            s = singular_values(rows)
            hidden = hidden_from_singular_values(s, self.margin)
            if hidden is None:
                collect()
        if hidden is None:
            tried = (f" (bisection tolerance narrowed to {c.tolerance:.2g})" if refinements
                     else "")
            raise AttackFailed(f"{self.name}: no drop to a noise floor in the singular values "
                               f"of {len(rows)} vectors of {m} logits{tried} (too coarse, or "
                               "the budget ran out first)")
        o = c.oracle
        info: dict[str, Any] = {"vectors": len(rows), "tokens_read": m,
                                "queries_per_vector": c.used / max(1, len(rows)),
                                "drop": float(s[hidden - 1] / s[hidden])}
        if c.variant == "bias-search":
            info["tolerance"] = c.tolerance
            info["tolerance_refinements"] = refinements
            info.update(first)
        return LMExtraction(self.name, c.variant, c.used, o.requests, o.tokens, o.cost, 0.0,
                            hidden_size=hidden, singular_values=[float(x) for x in s],
                            info=info)


@dataclass
class Projection(LMAttack):
    """Recover the output projection W (up to a hidden x hidden map) from full logit vectors."""

    name = "llm-projection"
    hidden: int = 0  # 0: find it first from the same vectors
    extra: int = 32
    vectors: int = 0  # 0: hidden + extra; more vectors average the rounding noise down

    def extract(self, c: Collector, rng: np.random.Generator) -> LMExtraction:
        v = c.oracle.vocab
        tokens = np.arange(v)
        rows: list[np.ndarray] = []
        hidden = self.hidden or None
        while c.more(rows, tokens):
            if hidden is None:  # found once, it stays found
                hidden = hidden_from_singular_values(singular_values(rows))
            if hidden is not None and len(rows) >= max(self.vectors, hidden + self.extra):
                break
            if hidden is None and len(rows) >= max(self.vectors, v // 2):
                break  # no noise floor in sight: the logprobs are too coarse
        if hidden is None or len(rows) < hidden:
            raise AttackFailed(f"{self.name}: {len(rows)} vectors are too few to find the "
                               "hidden size")
        s, vt = centred_svd(np.stack(rows))
        W = (vt[:hidden].T * s[:hidden]) / math.sqrt(len(rows))
        o = c.oracle
        return LMExtraction(self.name, c.variant, c.used, o.requests, o.tokens, o.cost, 0.0,
                            hidden_size=hidden, singular_values=[float(x) for x in s], W=W,
                            info={"vectors": len(rows),
                                  "queries_per_vector": c.used / max(1, len(rows))})


def alignment_error(W_hat: np.ndarray, W: np.ndarray) -> dict[str, float]:
    """RMS of ``W_hat G - W_c`` for the best hidden x hidden ``G`` (least squares), where
    ``W_c`` is W with its mean row removed (the part logprobs determine); also relative to
    the RMS of ``W_c``. The defender's check: it needs the true W."""
    Wc = W - W.mean(axis=0, keepdims=True)
    G, *_ = np.linalg.lstsq(W_hat, Wc, rcond=None)
    err = W_hat @ G - Wc
    rms = float(np.sqrt(np.mean(err ** 2)))
    return {"rms": rms, "relative_rms": rms / float(np.sqrt(np.mean(Wc ** 2)))}
