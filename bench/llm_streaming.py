"""Local generation against ``transformers``' own ``generate``, and streaming's first token.

    python bench/llm_streaming.py [--model lm-h128] [--tokens 32] [--rounds 20] [--seed 0]

1. Per-token latency, in one process, side by side in alternating rounds: the Shield's
   decoding (``defenses.llm.Generation`` with the model's key/value cache) against
   ``model.generate(max_new_tokens=N, do_sample=False)`` with its cache, on the same
   distinct prompts; and the old way (the whole prefix recomputed every token). Target:
   within 1.5x of ``generate``.
2. Streaming through the gateway (uvicorn on loopback, SQLite audit log): for N-token
   completions, the time to the first token's event and to the end of the stream.
   Target: the first token within 1/4 of the total.

Writes bench/results/llm_streaming.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _load import free_port, server
from harness import arguments, show, write

from modelshield.answer import LMRequest
from modelshield.defenses.llm import LLMPolicy, decode
from modelshield.store import AuditStore
from modelshield.victims.lm import load_lm


def per_token(lm: Any, prompts: list[list[int]], tokens: int, rounds: int) -> dict[str, Any]:
    import torch

    eos = lm.tokenizer.eos_token_id
    bias = {int(eos): -100.0}  # every completion runs its full length
    times: dict[str, list[float]] = {"generate (transformers, KV cache)": [],
                                     "modelshield (KV cache)": [],
                                     "modelshield (recompute, before)": []}

    def ours(p: list[int], cached: bool) -> None:
        req = LMRequest([p], tokens, temperature=0.0, logit_bias=bias)
        choice = decode(lm.next_logits, req, LLMPolicy(), eos,
                        stepper=lm.stepper if cached else None)[0]
        assert len(choice.tokens) == tokens

    def theirs(p: list[int]) -> None:
        with torch.no_grad():
            out = lm.model.generate(torch.tensor([p]), max_new_tokens=tokens, min_new_tokens=tokens,
                                    do_sample=False, pad_token_id=eos)
        assert out.shape[1] == len(p) + tokens

    runs = {"generate (transformers, KV cache)": theirs,
            "modelshield (KV cache)": lambda p: ours(p, True),
            "modelshield (recompute, before)": lambda p: ours(p, False)}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            p = prompts[r * len(runs) + list(runs).index(name)]
            start = time.perf_counter()
            runs[name](p)
            times[name].append((time.perf_counter() - start) / tokens * 1000)
    return {name: float(np.median(v)) for name, v in times.items()}


def streaming(lm: Any, prompts: list[list[int]], tokens: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        audit = f"sqlite:///{tmp}/audit.db"
        cfg = Path(tmp) / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({"model": {"lm": lm.name}, "audit_url": audit,
                                       "tiers": {"t": {"llm": {"max_tokens": 512}}}}))
        key = AuditStore(audit).create_key("t")[0]
        port = free_port()
        eos = str(lm.tokenizer.eos_token_id)
        first, total = [], []
        with server("modelshield.serve.main:app", port,
                    env={"MODELSHIELD_CONFIG": str(cfg)}), httpx.Client(timeout=60) as client:
            for i, p in enumerate(prompts):
                start = time.perf_counter()
                seen = None
                with client.stream("POST", f"http://127.0.0.1:{port}/v1/completions",
                                   headers={"Authorization": f"Bearer {key}"},
                                   json={"model": lm.name, "prompt": p, "max_tokens": tokens,
                                         "temperature": 0, "stream": True,
                                         "logit_bias": {eos: -100}}) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {") and seen is None:
                            seen = time.perf_counter() - start
                end = time.perf_counter() - start
                if i >= 2:  # the first requests warm the server up
                    first.append(seen or end)
                    total.append(end)
    return {"first_token_ms": 1000 * float(np.median(first)),
            "total_ms": 1000 * float(np.median(total)),
            "ratio": float(np.median(first) / np.median(total))}


def main() -> None:
    parser = arguments(__doc__, seed=0)
    parser.add_argument("--model", default="lm-h128")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    lm = load_lm(args.model)
    rng = np.random.default_rng(args.seed)
    prompts = [rng.integers(10, lm.vocab, 12).tolist() for _ in range(3 * args.rounds + 24)]
    latency = per_token(lm, prompts[:3 * args.rounds], args.tokens, args.rounds)
    base = latency["generate (transformers, KV cache)"]
    show(f"per-token latency, {args.model}, {args.tokens} tokens, median of {args.rounds}",
         ["decoding", "ms per token", "ratio to generate"],
         [[k, v, v / base] for k, v in latency.items()])
    stream = streaming(lm, prompts[3 * args.rounds:], args.tokens)
    show(f"streaming through the gateway, {args.tokens} tokens",
         ["first token (ms)", "whole stream (ms)", "first / whole"],
         [[stream["first_token_ms"], stream["total_ms"], stream["ratio"]]])
    write("llm_streaming", {"args": vars(args), "per_token_ms": latency,
                            "ratio_to_generate": latency["modelshield (KV cache)"] / base,
                            "streaming": stream,
                            "within_1_5x": latency["modelshield (KV cache)"] <= 1.5 * base,
                            "first_token_within_quarter": stream["ratio"] <= 0.25})


if __name__ == "__main__":
    main()
