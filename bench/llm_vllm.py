"""Logit stealing against a real vLLM (its CPU build), through the gateway and straight at it.

    python bench/llm_vllm.py [--vocab 384] [--budget 20000]

Builds the tests' two small models (tests/servers.py: a Llama of hidden size 64 and a
Qwen2 of hidden size 96, random weights, head size 32, a byte-level BPE tokenizer), starts
vLLM's OpenAI server on each from .venv-vllm (or $VLLM_PYTHON) and fronts each with a
gateway (``model.lm_upstream``, an open tier). The Llama server caps logprobs at vLLM's
default 20 and gives processed logprobs (after logit_bias), so the attack reads logits by
top-k plus logit bias; the Qwen2 server gives every logprob. For each model and each way in,
``llm-hidden-size`` and ``llm-projection`` run; the result records the variant, queries,
requests, whether the hidden size is exact, W's relative alignment error and the wall time.
Writes bench/results/llm_vllm.json, with each server's start-up time.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from harness import arguments, show, write

from modelshield.attacks.logit_stealing import HiddenSize, Projection, alignment_error
from modelshield.oracle.lm import OpenAIOracle
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from modelshield.victims.lm import LMVictim
from tests.servers import live_app, start_vllm, stop_vllm, tiny_hf_lm, wait_vllm

SERVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("tiny-llama", {"max_logprobs": 20, "processed": True}),
    "qwen2": ("tiny-qwen2", {"max_logprobs": 0, "processed": False}),  # 0: the vocabulary
}


def attack(oracle: OpenAIOracle, reference: LMVictim, budget: int) -> list[dict[str, Any]]:
    rows = []
    for cls in (HiddenSize, Projection):
        start, requests = time.perf_counter(), oracle.requests
        e = cls(top_k=20).run(oracle, budget)
        row = {"attack": e.attack, "variant": e.variant, "queries": e.queries,
               "requests": oracle.requests - requests, "hidden_size": e.hidden_size,
               "true_hidden_size": reference.hidden,
               "exact": e.hidden_size == reference.hidden,
               "seconds": time.perf_counter() - start}
        if e.W is not None:
            row["W_relative_rms"] = alignment_error(e.W, reference.W)["relative_rms"]
        rows.append(row)
    return rows


def ready_after(procs: dict[str, Any], begun: float) -> dict[str, float]:
    """Seconds from ``begun`` until each server answers /health (waited for side by side)."""
    def wait(arch: str) -> float:
        _, _, url, proc, log = procs[arch]
        wait_vllm(proc, url, log)
        return time.perf_counter() - begun

    with ThreadPoolExecutor(len(procs)) as pool:
        return dict(zip(procs, pool.map(wait, procs), strict=True))


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--vocab", type=int, default=384)
    ap.add_argument("--budget", type=int, default=20_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llm-vllm-"))
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        begun = time.perf_counter()  # both servers start at once, on the same 2 cores
        procs = {}
        for arch, (name, options) in SERVERS.items():
            path = tiny_hf_lm(tmp, arch, args.vocab)
            options = {**options, "max_logprobs": options["max_logprobs"] or args.vocab}
            proc, url, log = start_vllm(path, name, **options)
            stack.callback(stop_vllm, proc)
            procs[arch] = (name, path, url, proc, log)
        starts = ready_after(procs, begun)
        for arch, (name, path, url, _, _) in procs.items():
            reference = LMVictim.from_directory(path)
            shield = build_shield({"model": {"lm_upstream": url, "upstream_model": name,
                                             "upstream_vocab": args.vocab},
                                   "audit_url": f"sqlite:///{tmp}/{arch}.db",
                                   "tiers": {"open": {"llm": {"max_top_logprobs": 4096}}}})
            stack.callback(shield.close)
            gateway = stack.enter_context(live_app(create_app(shield)))
            ways = {"gateway": OpenAIOracle(str(gateway.base_url),
                                            shield.store.create_key("open")[0],
                                            client=gateway),
                    "direct": OpenAIOracle(url, "none", vocab=args.vocab)}
            for way, oracle in ways.items():
                for row in attack(oracle, reference, args.budget):
                    runs.append({"model": arch, "way": way, **row})
    show("logit stealing against vLLM (CPU)",
         ["model", "way", "attack", "variant", "queries", "exact", "W rel. RMS", "s"],
         [[r["model"], r["way"], r["attack"], r["variant"], r["queries"], r["exact"],
           r.get("W_relative_rms"), r["seconds"]] for r in runs])
    write("llm_vllm", {"vocab": args.vocab, "budget": args.budget, "cpus": os.cpu_count(),
                       "server_start_seconds": starts, "runs": runs})


if __name__ == "__main__":
    main()
