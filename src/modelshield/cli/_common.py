"""What the commands share: the consoles, option types used by several commands, and
reading the gateway config."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from modelshield.defenses.config import ShieldConfig
    from modelshield.store import AuditStore

# Wide tables in logs and pipes; the terminal's own width when there is one.
console = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, soft_wrap=True)  # one line per error, paths unbroken

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Gateway config (YAML).")]
WorkersOpt = Annotated[int, typer.Option(min=0, help="Cells run at once (0: one per core).")]
JsonResult = Annotated[Path | None, typer.Option("--json", help="Write the result here.")]
JsonResults = Annotated[Path | None, typer.Option("--json", help="Write the results here.")]
Target = Annotated[str | None, typer.Option(
    help="URL of a running gateway to attack over HTTP instead of in-process.")]
ApiKeyOpt = Annotated[str | None, typer.Option(help="API key for --target.")]
TokenPrice = Annotated[float, typer.Option(min=0.0, help="Dollars per 1,000 tokens.")]


def load_config(config: Path | None) -> ShieldConfig:
    """The gateway config at ``config`` (None: the defaults)."""
    from modelshield.defenses.config import load_config as load

    return load(config)


def open_config_store(config: Path | None) -> AuditStore:
    """The key and audit store of the config at ``config``."""
    from modelshield.serve.factory import open_store

    return open_store(load_config(config))


def write_json(path: Path, doc: Any, **kwargs: Any) -> None:
    """Write ``doc`` to ``path`` as indented JSON and say so."""
    path.write_text(json.dumps(doc, indent=2, **kwargs))
    console.print(f"wrote {path}")


def progress_bar(*, transient: bool = True) -> Progress:
    """A bar with a description, the count done and the time taken."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=transient)
