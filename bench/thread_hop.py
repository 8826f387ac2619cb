"""What one hop from the event loop to a request thread and back costs, in CPU.

    python bench/thread_hop.py [--calls 8000] [--repeats 5]

The gateway answers each classifier request on a thread (the Shield blocks: the model,
the audit commit). Eight concurrent callers each await ``--calls / 8`` hops of a function
that returns at once, through starlette's ``run_in_threadpool`` (anyio: a queue with a
condition variable, a capacity limiter) and through the gateway's ``off_loop`` (a plain
``ThreadPoolExecutor``); the process's CPU time per hop, median of ``--repeats``
alternating runs. Writes bench/results/thread_hop.json.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import arguments, show, write
from starlette.concurrency import run_in_threadpool

from modelshield.serve.context import off_loop


def nothing() -> int:
    return 1


async def cpu_per_hop(hop: Callable[[], Awaitable[int]], calls: int) -> float:
    """The process's CPU time per hop (µs), 8 callers at once."""
    async def caller(n: int) -> None:
        for _ in range(n):
            await hop()

    start = time.process_time()
    await asyncio.gather(*[caller(calls // 8) for _ in range(8)])
    return (time.process_time() - start) / (8 * (calls // 8)) * 1e6


async def measure(calls: int, repeats: int) -> dict[str, list[float]]:
    hops = {"run_in_threadpool": lambda: run_in_threadpool(nothing),
            "off_loop": lambda: off_loop(nothing)}
    out: dict[str, list[float]] = {name: [] for name in hops}
    for hop in hops.values():  # warm both pools
        await cpu_per_hop(hop, 800)
    for _ in range(repeats):
        for name, hop in hops.items():
            out[name].append(await cpu_per_hop(hop, calls))
    return out


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--calls", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs = asyncio.run(measure(args.calls, args.repeats))
    medians = {name: statistics.median(v) for name, v in runs.items()}
    show("CPU per hop to a request thread and back (µs, median of runs)",
         ["hop", "median", "runs"],
         [[name, round(medians[name], 1), " ".join(f"{v:.0f}" for v in runs[name])]
          for name in runs])
    write("thread_hop", {"args": vars(args), "cpu_us_per_hop": runs,
                         "median_cpu_us": medians})


if __name__ == "__main__":
    main()
