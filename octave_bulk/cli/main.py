"""The ``octave-bulk`` group: commands loaded on first use, and the process's exit.

``octave-bulk --version`` and ``--help`` load no command module (their one-line summaries are
listed here), so they start in the time it takes to import click. A bug ends the process with
:attr:`ExitCode.INTERNAL` (never 0 or 1, which monitoring reads as success) and a traceback
with the API key removed.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import traceback
from typing import Any

import click

from octave_bulk.errors import ExitCode

__all__ = ["COMMANDS", "LazyGroup", "cli", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("octave_bulk.cli.run", "Poll the async jobs OUT awaits (run --mode async --detach) and write their results."),
    "demo": ("octave_bulk.cli.tools", "A real batch against the built-in simulator: no API key, no network."),
    "doctor": ("octave_bulk.cli.tools", "Check the settings, the API key and the agent: workspace, credits, agent type."),
    "enqueue": ("octave_bulk.cli.jobs_pg", "Admit INPUT as run would and add what is to send to the job NAME on the shared ledger."),
    "export": ("octave_bulk.cli.files", "One CSV row per successful contact, ready to import into a sequencer."),
    "history": ("octave_bulk.cli.files", "Every run of an output: when, sent, succeeded, failed, credits, exit."),
    "ledger": ("octave_bulk.cli.ledger_pg", "Rebuild or check the ledger (OUT.ledger.sqlite) from the output's files."),
    "pipeline": ("octave_bulk.cli.pipeline", "Run several agents in turn, each on the results of the one before."),
    "plan": ("octave_bulk.cli.plan", "Forecast a run before paying: contacts to send, credits against those left, time."),
    "probe": ("octave_bulk.cli.run", "Measure what your workspace sustains: rate, calls in flight, latency."),
    "query": ("octave_bulk.cli.query", "Run one SQL statement over OUT's results and run history; nothing is written."),
    "report": ("octave_bulk.cli.report", "Write a run's report: throughput, latency, 429s, limits, failures, credits, as HTML."),
    "run": ("octave_bulk.cli.run", "Run an Octave agent for every contact of INPUT (CSV, NDJSON or results, - for stdin)."),
    "simulate": ("octave_bulk.cli.tools", "Run the Octave simulator as a standalone server (no API key or network needed)."),
    "status": ("octave_bulk.cli.files", "What a run has done so far (works while a run is in progress)."),
    "validate": ("octave_bulk.cli.run", "Read, map and validate INPUT exactly as run would; zero API calls."),
    "worker": ("octave_bulk.cli.jobs_pg", "Claim, pace, send and settle the contacts of the job NAME until it is drained."),
}  # fmt: skip
"""Command name -> (module defining it, its one-line summary: the first line of its help)."""


class LazyGroup(click.Group):
    """A click group whose commands are imported when one is run or asked for help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        command = getattr(importlib.import_module(COMMANDS[cmd_name][0]), cmd_name)
        assert isinstance(command, click.Command)  # noqa: S101 - the table above says so
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:
            close = difflib.get_close_matches(name, COMMANDS, n=1, cutoff=0.6)
            if close:
                ctx.fail(f"No such command {name!r}. Did you mean {close[0]!r}?")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, summary) in sorted(COMMANDS.items())])


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="octave-bulk")
def cli() -> None:
    """Run Octave's Sequence Agent over many contacts: fast, rate-limited, crash-safe."""


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``octave-bulk`` console script."""
    try:
        return cli.main(args=argv, prog_name="octave-bulk")
    except Exception as exc:  # a bug: show where, but never the key
        text = "".join(traceback.format_exception(exc))
        click.echo(_redact(text), err=True)
        click.echo(
            f"internal error (exit {int(ExitCode.INTERNAL)}): please report it with the lines "
            "above; every result written before it is safe, run the same command to resume.",
            err=True,
        )
        sys.exit(ExitCode.INTERNAL)


def _redact(text: str) -> str:
    from octave_bulk.redact import scrub

    key = os.environ.get("OCTAVE_API_KEY")
    text = text.replace(key, "***") if key else text
    return scrub(text)
