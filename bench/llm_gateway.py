"""The language-model gateway against the bare model server: tokens per second and latency.

    python bench/llm_gateway.py [--model lm-h64] [--requests 400] [--rounds 4]
                                [--concurrency 4] [--no-upstream]

Three servers run at once under uvicorn on loopback, measured side by side with the same
load: 16-token completions of distinct 12-token prompts (the end token biased away so that
every completion has 16 tokens), ``--concurrency`` clients in a closed loop over
``--rounds`` rounds that alternate the order of the servers (so the machine's drift falls
on all alike), then single requests alternating between them for the moderate-load latency:

1. the bare server (bench/bare_lm_app.py): the model and the decoding loop, nothing else;
2. the gateway fronting a second bare server as its upstream, as it would front vLLM;
3. the gateway serving the same model itself.

The Shield has: key check, request and token limits (high enough not to refuse), the
probing detector, and the audit log in SQLite, committed before each response. Writes
bench/results/llm_gateway.json.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _load import free_port, run_alternating, run_load, server
from harness import arguments, show, write

from modelshield.store import AuditStore
from modelshield.victims.lm import load_lm

TOKENS = 16


def gateway(stack: contextlib.ExitStack, label: str, model: dict[str, Any], tmp: str,
            concurrency: int) -> tuple[str, str, list[dict[str, str]]]:
    """The gateway serving ``model`` on a loopback port for the rest of ``stack``, with a
    key for each client: (its label, its completions URL, the clients' headers)."""
    cfg = {"model": model, "audit_url": f"sqlite:///{tmp}/{len(label)}.db",
           "tiers": {"bench": {"limits": {"requests": "1000000/minute",
                                          "tokens": "100000000/minute"},
                               "llm": {"detect_probing": True}, "on_flag": "alert"}}}
    path = Path(tmp) / f"{len(label)}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    store = AuditStore(cfg["audit_url"])
    keys = [{"Authorization": f"Bearer {store.create_key('bench')[0]}"}
            for _ in range(concurrency)]
    store.close()
    port = free_port()
    stack.enter_context(server("modelshield.serve.main:app", port,
                               env={"MODELSHIELD_CONFIG": str(path)}))
    return label, f"http://127.0.0.1:{port}/v1/completions", keys


def main() -> None:
    parser = arguments(__doc__, seed=0)
    parser.add_argument("--model", default="lm-h64")
    parser.add_argument("--requests", type=int, default=400,
                        help="completions per server under load, split over the rounds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--moderate", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--no-upstream", dest="upstream", action="store_false",
                        help="skip the gateway fronting the bare server as an upstream")
    args = parser.parse_args()
    lm = load_lm(args.model)  # build it once, before any server starts
    rng = np.random.default_rng(args.seed)
    eos = str(lm.tokenizer.eos_token_id)
    # Distinct prompts for the warm-up, the loaded run and the one-at-a-time run: a prompt
    # asked twice of one server would come from its prefix cache. (Every server is its own
    # process with its own cache, so each sees each prompt once.)
    bodies = [{"model": args.model, "prompt": rng.integers(0, lm.vocab, 12).tolist(),
               "max_tokens": TOKENS, "temperature": 1.0, "seed": i,
               "logit_bias": {eos: -100}} for i in range(args.requests + args.moderate + 50)]
    loaded_bodies = bodies[:args.requests]
    moderate_bodies = bodies[args.requests:args.requests + args.moderate]
    warm_bodies = bodies[args.requests + args.moderate:]
    bench_env = {"PYTHONPATH": str(Path(__file__).parent), "BENCH_LM": args.model}

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        port = free_port()
        stack.enter_context(server("bare_lm_app:app", port, env=bench_env))
        servers = [("bare FastAPI", f"http://127.0.0.1:{port}/v1/completions", [{}])]
        if args.upstream:  # the gateway in front of a bare server of its own, as of vLLM
            up = free_port()
            stack.enter_context(server("bare_lm_app:app", up, env=bench_env))
            servers.append(gateway(stack, "modelshield fronting it", {
                "lm_upstream": f"http://127.0.0.1:{up}", "upstream_model": args.model,
                "upstream_vocab": lm.vocab}, tmp, args.concurrency))
        servers.append(gateway(stack, "modelshield", {"lm": args.model}, tmp,
                               args.concurrency))
        for _, url, headers in servers:
            run_load(url, warm_bodies, headers, concurrency=args.concurrency, requests=50)
        per_round = max(1, args.requests // args.rounds)
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in servers}
        for r in range(args.rounds):  # alternate the order so drift falls on all alike
            chunk = loaded_bodies[r * per_round:(r + 1) * per_round]
            for label, url, headers in (servers if r % 2 == 0 else servers[::-1]):
                runs[label].append(run_load(url, chunk, headers, concurrency=args.concurrency,
                                            requests=len(chunk)))
        moderate = run_alternating([(url, headers[0]) for _, url, headers in servers],
                                   moderate_bodies, args.moderate)
    rows = []
    for (label, _, _), mod in zip(servers, moderate, strict=True):
        done = runs[label]
        n, secs = sum(x["requests"] for x in done), sum(x["seconds"] for x in done)
        rows.append({"server": label, "requests": n, "seconds": secs, "throughput": n / secs,
                     "tokens_per_s": n / secs * TOKENS, "rounds": done, "moderate": mod})
    bare = rows[0]
    show(f"language-model gateway: {args.model}, {TOKENS}-token completions, "
         f"{args.concurrency} clients, {args.rounds} alternating rounds",
         ["server", "tokens/s", "req/s", "ratio", "moderate p50 / p99 ms", "added p50 / p99 ms"],
         [[r["server"], r["tokens_per_s"], r["throughput"],
           r["tokens_per_s"] / bare["tokens_per_s"],
           f"{r['moderate']['p50_ms']:.1f} / {r['moderate']['p99_ms']:.1f}",
           f"{r['moderate']['p50_ms'] - bare['moderate']['p50_ms']:.1f} / "
           f"{r['moderate']['p99_ms'] - bare['moderate']['p99_ms']:.1f}"] for r in rows])
    ratios = {r["server"]: r["tokens_per_s"] / bare["tokens_per_s"] for r in rows[1:]}
    write("llm_gateway", {"args": vars(args), "rows": rows,
                          "throughput_ratio": ratios["modelshield"], "ratios": ratios})


if __name__ == "__main__":
    main()
