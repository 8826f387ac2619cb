"""The ``modelshield`` command.

Every error modelshield raises on purpose is printed as one line and ends the command with
its ``exit_code`` (2 for a wrong name or value), never with a traceback.

One module per command group; each command parses its options, calls into the library
and prints. The commands are registered here, in the order ``--help`` lists them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from modelshield.cli import attack, audit, catalog, gateway, ownership, privacy
from modelshield.cli._common import err
from modelshield.cli.audit_log import audit_log_app
from modelshield.cli.keys import keys_app
from modelshield.errors import ModelShieldError

app = typer.Typer(
    help="Measure and defend a served model's exposure to model extraction.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)

COMMANDS: list[tuple[str, Callable[..., None]]] = [
    ("victims", catalog.victims),
    ("attacks", catalog.attacks),
    ("policies", catalog.policies),
    ("attack", attack.attack),
    ("membership", privacy.membership),
    ("canaries", privacy.canaries),
    ("prompt-leak", privacy.prompt_leak),
    ("audit", audit.audit),
    ("report", audit.report),
    ("demo", audit.demo),
    ("init", gateway.init),
    ("calibrate", gateway.calibrate),
    ("serve", gateway.serve),
    ("verify", ownership.verify),
    ("evidence", ownership.evidence),
    ("detect-text", ownership.detect_text),
]
for _name, _command in COMMANDS:
    app.command(_name)(_command)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_log_app, name="audit-log")


def main() -> None:
    """Entry point: run the app, turning modelshield errors into one-line messages."""
    try:
        app()
    except ModelShieldError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)


__all__ = ["app", "main"]
