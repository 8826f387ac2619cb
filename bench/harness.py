"""The benchmarks' harness, so that a benchmark script holds its experiment and nothing else.

- ``arguments``: the argument parser with the shared options (--seed or --seeds, --workers,
  --out), the script's docstring as its help;
- ``run_cells``: a job list run through a process pool whose workers run one thread each;
- ``report``: tables on screen and the result in ``bench/results/NAME.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

#: Where results go; MODELSHIELD_BENCH_RESULTS points a trial run elsewhere.
RESULTS = Path(os.environ.get("MODELSHIELD_BENCH_RESULTS") or Path(__file__).parent / "results")
console = Console(width=160)

#: (title, column names, rows): one table on screen.
TableSpec = tuple[str, list[str], list[list[Any]]]


def arguments(description: str | None, *, seed: int | None = None,
              seeds: Sequence[int] | None = None, workers: int | None = None,
              out: str | Path | None = None) -> argparse.ArgumentParser:
    """A parser with the options most benchmarks share; each is added only when given a
    default: ``--seed N``, ``--seeds N ...``, ``--workers N`` and ``--out NAME`` (a result
    name in bench/results/, or a folder where the default is a Path)."""
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if seed is not None:
        ap.add_argument("--seed", type=int, default=seed)
    if seeds is not None:
        ap.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    if workers is not None:
        ap.add_argument("--workers", type=int, default=workers,
                        help="worker processes")
    if out is not None:
        ap.add_argument("--out", type=type(out), default=out,
                        help="result name in bench/results/" if isinstance(out, str)
                        else "folder for the run's files")
    return ap


def one_thread() -> None:
    """A pool worker's initializer: one thread for torch, BLAS and OpenMP. With a worker
    per core, more only contend (scikit-learn's histogram boosting, for one, slows down
    when its OpenMP threads spin against another worker's); and a network's weights, so an
    active learner's next query, can depend on how many threads summed them."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


@contextmanager
def pool(workers: int, spawn: bool = False) -> Iterator[Executor]:
    """A process pool of one-thread workers. ``spawn``: fresh interpreters rather than forks
    (a forked worker can hang on the parent's OpenMP or torch intra-op threads)."""
    ctx = multiprocessing.get_context("spawn") if spawn else None
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=one_thread) as ex:
        yield ex


def run_cells(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int, *,
          spawn: bool = False, flat: bool = False,
          progress: Callable[[Any], str] | None = None,
          executor: Executor | None = None) -> list[Any]:
    """``fn`` over ``jobs`` in a pool (``workers`` one-thread processes, or ``executor``),
    results in the jobs' order. ``flat``: each job returns a list, and the lists are joined.
    ``progress``: a line to print for each result as it comes."""
    if executor is None:
        with pool(workers, spawn) as ex:
            return run_cells(fn, jobs, workers, flat=flat, progress=progress, executor=ex)
    out: list[Any] = []
    for i, r in enumerate(executor.map(fn, jobs), 1):
        if progress is not None:
            print(f"[{i}/{len(jobs)}] {progress(r)}", flush=True)
        if flat:
            out.extend(r)
        else:
            out.append(r)
    return out


def report(name: str, payload: dict[str, Any], tables: Sequence[TableSpec] = ()) -> Path:
    """Each table on screen, then the result written to bench/results/NAME.json."""
    for title, columns, rows in tables:
        show(title, columns, rows)
    return write(name, payload)


def write(name: str, payload: dict[str, Any]) -> Path:
    """``payload`` in bench/results/NAME.json, after the benchmark's name, the time and the
    machine."""
    RESULTS.mkdir(exist_ok=True)
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
               "machine": platform.platform(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    console.print(f"wrote {path}")
    return path


def show(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    console.print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"
    return str(v)
