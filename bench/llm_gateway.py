"""The language-model gateway against the bare model server: tokens per second and latency.

    python bench/llm_gateway.py [--model lm-h64] [--requests 400] [--concurrency 4]
                                [--no-upstream]

Three servers, one at a time, under uvicorn on loopback with the same load: 16-token
completions of distinct 12-token prompts (the end token biased away so that every
completion has 16 tokens), ``--concurrency`` clients in a closed loop, then one client at a
time for the moderate-load latency:

1. the bare server (bench/bare_lm_app.py): the model and the decoding loop, nothing else;
2. the gateway fronting that bare server as its upstream, as it would front vLLM;
3. the gateway serving the same model itself.

The Shield has: key check, request and token limits (high enough not to refuse), the
probing detector, and the audit log in SQLite, committed before each response. Writes
bench/results/llm_gateway.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _common import show, write
from _load import free_port, run_load, server

from modelshield.serve.store import AuditStore
from modelshield.victims.lm import load_lm

TOKENS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="lm-h64")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--moderate", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-upstream", dest="upstream", action="store_false",
                        help="skip the gateway fronting the bare server as an upstream")
    args = parser.parse_args()
    lm = load_lm(args.model)  # build it once, before either server starts
    rng = np.random.default_rng(args.seed)
    eos = str(lm.tokenizer.eos_token_id)
    # Distinct prompts for the warm-up, the loaded run and the one-at-a-time run: a prompt
    # asked twice would come from the model's prefix cache.
    bodies = [{"model": args.model, "prompt": rng.integers(0, lm.vocab, 12).tolist(),
               "max_tokens": TOKENS, "temperature": 1.0, "seed": i,
               "logit_bias": {eos: -100}} for i in range(args.requests + args.moderate + 50)]
    loaded_bodies = bodies[:args.requests]
    moderate_bodies = bodies[args.requests:args.requests + args.moderate]
    warm_bodies = bodies[args.requests + args.moderate:]
    rows: list[dict[str, Any]] = []

    def measure(label: str, url: str, headers: list[dict[str, str]]) -> None:
        run_load(url, warm_bodies, headers, concurrency=args.concurrency, requests=50)
        loaded = run_load(url, loaded_bodies, headers, concurrency=args.concurrency,
                          requests=args.requests)
        moderate = run_load(url, moderate_bodies, headers[:1], concurrency=1,
                            requests=args.moderate)
        rows.append({"server": label, **loaded, "tokens_per_s": loaded["throughput"] * TOKENS,
                     "moderate": moderate})

    def gateway(label: str, model: dict[str, Any], tmp: str) -> None:
        cfg = {"model": model, "audit_url": f"sqlite:///{tmp}/{label}.db",
               "tiers": {"bench": {"limits": {"requests": "1000000/minute",
                                              "tokens": "100000000/minute"},
                                   "llm": {"detect_probing": True}, "on_flag": "alert"}}}
        path = Path(tmp) / f"{label}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        store = AuditStore(cfg["audit_url"])
        keys = [{"Authorization": f"Bearer {store.create_key('bench')[0]}"}
                for _ in range(args.concurrency)]
        store.close()
        port = free_port()
        with server("modelshield.serve.main:app", port, env={"MODELSHIELD_CONFIG": str(path)}):
            measure(label, f"http://127.0.0.1:{port}/v1/completions", keys)

    bench_env = {"PYTHONPATH": str(Path(__file__).parent), "BENCH_LM": args.model}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        with server("bare_lm_app:app", port, env=bench_env):
            measure("bare FastAPI", f"http://127.0.0.1:{port}/v1/completions", [{}])
        if args.upstream:  # the gateway in front of a fresh bare server (an empty prefix
            port = free_port()  # cache), as it would front vLLM
            with server("bare_lm_app:app", port, env=bench_env):
                gateway("modelshield fronting it", {
                    "lm_upstream": f"http://127.0.0.1:{port}", "upstream_model": args.model,
                    "upstream_vocab": lm.vocab}, tmp)
        gateway("modelshield", {"lm": args.model}, tmp)
    bare = rows[0]
    show(f"language-model gateway: {args.model}, {TOKENS}-token completions, "
         f"{args.concurrency} clients",
         ["server", "tokens/s", "req/s", "p50 / p99 ms", "moderate p50 / p99 ms", "statuses"],
         [[r["server"], r["tokens_per_s"], r["throughput"],
           f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}",
           f"{r['moderate']['p50_ms']:.1f} / {r['moderate']['p99_ms']:.1f}", r["statuses"]]
          for r in rows])
    ratios = {}
    for r in rows[1:]:
        ratios[r["server"]] = r["tokens_per_s"] / bare["tokens_per_s"]
        print(f"{r['server']}: throughput ratio {ratios[r['server']]:.3f} of the bare server; "
              f"added moderate-load latency "
              f"p50 {r['moderate']['p50_ms'] - bare['moderate']['p50_ms']:.2f} ms, "
              f"p99 {r['moderate']['p99_ms'] - bare['moderate']['p99_ms']:.2f} ms")
    write("llm_gateway", {"args": vars(args), "rows": rows,
                          "throughput_ratio": ratios["modelshield"], "ratios": ratios})


if __name__ == "__main__":
    main()
