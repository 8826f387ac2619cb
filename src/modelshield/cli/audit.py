"""``audit``, ``report`` and ``demo``: a model's exposure, every attacker x defense x
budget, written as a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from modelshield.cli._common import WorkersOpt, console
from modelshield.cli.render import audit_table
from modelshield.errors import ConfigError

if TYPE_CHECKING:
    from modelshield.audit.scenario import Scenario

RATING_COLORS = {"HIGH": "red", "MEDIUM": "yellow", "LOWER": "green"}

ScenarioFile = Annotated[Path, typer.Argument(
    help="Scenario file (YAML); `modelshield init --audit` writes an example.")]
AuditOut = Annotated[Path, typer.Option(
    help="Folder for results.json, report.html, summary.md and the cell cache.")]
Fresh = Annotated[bool, typer.Option(help="Ignore cached cells and run everything.")]
Executor = Annotated[str, typer.Option(
    help="Where cells run: 'process' (a process pool here) or 'ray' (a Ray cluster; "
         "pip install 'modelshield[ray]').")]
Address = Annotated[str | None, typer.Option(
    help="With --executor ray: the cluster's address (host:port); none starts a local "
         "Ray instance.")]
Results = Annotated[Path, typer.Argument(help="results.json written by an audit.")]
ReportOut = Annotated[Path | None, typer.Option(
    help="Folder for report.html and summary.md (default: beside the results).")]
DemoOut = Annotated[Path, typer.Option(help="Folder for the report, results and cache.")]


def audit(scenario: ScenarioFile, out: AuditOut = Path("results/audit"),
          workers: WorkersOpt = 0, fresh: Fresh = False, executor: Executor = "process",
          address: Address = None) -> None:
    """Measure a model's exposure: every attacker x defense x budget, in parallel.

    Finished cells are cached in OUT/cells by a hash of their configuration, so an
    interrupted audit resumes and an unchanged one takes seconds. With --executor ray the
    cells (and the shadow models of membership inference) run on a Ray cluster; the cache
    and the report stay here.
    """
    if executor not in ("process", "ray"):
        raise ConfigError.invalid("--executor", "'process' or 'ray'", executor)
    if address is not None and executor != "ray":
        raise ConfigError("--address goes with --executor ray.")
    import shutil

    from modelshield.audit.scenario import load_scenario

    s = load_scenario(scenario)
    if fresh:
        shutil.rmtree(out / "cells", ignore_errors=True)
    run_scenario(s, out, workers, executor, address)


def report(results: Results, out: ReportOut = None) -> None:
    """Redraw report.html and summary.md from an audit's results.json."""
    from modelshield.audit.report import load_results, write_report

    doc = load_results(results)
    paths = write_report(doc, out or results.parent)
    console.print(f"wrote {paths['html']} and {paths['markdown']}")


def demo(out: DemoOut = Path("results/demo"), workers: WorkersOpt = 0) -> None:
    """Audit a built-in scenario: the digits MLP under four defenses, four attackers (one
    of them adaptive: knockoff spread over 10 keys).

    Writes OUT/report.html (open it in a browser), results.json and summary.md.
    """
    from modelshield.audit.scenario import DEMO, load_scenario

    run_scenario(load_scenario(DEMO), out, workers)


def run_scenario(scenario: Scenario, out: Path, workers: int, executor: str = "process",
                 address: str | None = None) -> dict[str, Any]:
    """Run an audit with a progress bar, write results.json, report.html and summary.md."""
    from modelshield.audit.report import write_report
    from modelshield.audit.runner import run_audit

    columns = (TextColumn("{task.description:<52}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("checking the target", total=None)

        def start(total: int, cached: int) -> None:
            progress.update(task, total=total,
                            description=f"{scenario.name[:32]} ({cached} cells cached)")

        def done(cell: dict[str, Any], cached: bool) -> None:
            progress.update(task, advance=1, description=_cell_description(cell))

        doc = run_audit(scenario, out, workers, on_start=start, on_done=done,
                        executor=executor, address=address)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    paths = write_report(doc, out)
    _print_summary(doc)
    console.print(f"wrote {out / 'results.json'}, {paths['html']}, {paths['markdown']} "
                  f"({doc['seconds']:.0f} s, {doc['cells_cached']} of {len(doc['cells'])} "
                  "cells from cache)")
    return doc


def _cell_description(cell: dict[str, Any]) -> str:
    what = cell.get("attacker") or {"privacy": "membership inference"}.get(
        cell.get("kind", ""), "honest users")
    return f"{what[:24]} vs {cell['defense'][:20]}"


def _print_summary(doc: dict[str, Any]) -> None:
    """The exposure table and the risk rating with its facts."""
    console.print(audit_table(doc))
    rating = doc["analysis"]["rating"]
    color = RATING_COLORS[rating["level"]]
    console.print(f"risk as deployed ({rating['defense']}): [bold {color}]{rating['level']}[/]")
    for fact in rating["facts"]:
        console.print(f"  - {fact}", highlight=False)
