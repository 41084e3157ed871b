"""``plan``: the forecast before paying - contacts to send, credits, time - as ``run --dry-run``
also prints it."""

from __future__ import annotations

import sys
from typing import Any

import click

from octave_bulk.cli.common import fail, load_settings, run_async
from octave_bulk.cli.options import (
    INPUT_FIELDS,
    PLAN_SHOWN,
    RUN_FIELDS,
    SectionedCommand,
    config_option,
    key_file_option,
    settings_options,
)
from octave_bulk.errors import ExitCode, OctaveBulkError

__all__ = ["plan", "print_plan"]


def print_plan(
    input_path: str, output: str, settings: Any, *, as_json: bool = False, listing: bool = False
) -> ExitCode:
    """Print the forecast of a run on stdout (``as_json``: as one JSON document; ``listing``:
    with every contact it would pay, and why); 3 when the run would be refused (it would
    cost more credits than remain), else 0."""
    from octave_bulk.run.plan import plan_with_client

    forecast = run_async(lambda: plan_with_client(input_path, output, settings, listing=listing))
    refused = forecast.overdraft and not settings.allow_overdraft
    if as_json:
        import json

        click.echo(json.dumps(forecast.to_dict(), indent=2))
        return ExitCode.FATAL if refused else ExitCode.OK
    target = settings.agent_oid or settings.experiment_oid
    click.echo(f"plan: {input_path} -> {output} ({settings.agent_type} {target}); nothing sent")
    for line in forecast.lines():
        click.echo(f"  {line}")
    if listing:
        click.echo(f"to be paid ({len(forecast.contacts or ())}):")
        for c in forecast.contacts or ():  # input line, who, requestId, why
            click.echo(f"  line {c.line}: {c.who or '-'} ({c.request_id}): {c.reason}")
    return ExitCode.FATAL if refused else ExitCode.OK


@click.command(cls=SectionedCommand)
@click.argument("input_path", metavar="INPUT")
@click.option(
    "-o", "--output", required=True, help="Results file OUT.ndjson the run would write to."
)
@click.option("--json", "as_json", is_flag=True, help="Print the forecast as JSON.")
@click.option(
    "--list",
    "listing",
    is_flag=True,
    help="List every contact the run would pay, and why (new, FIELD changed, failed before...).",
)
@config_option
@key_file_option
@settings_options(*(f for f in RUN_FIELDS if f != "dry_run"), *INPUT_FIELDS, shown=PLAN_SHOWN)
def plan(
    input_path: str,
    output: str,
    as_json: bool,
    listing: bool,
    config_file: str | None,
    api_key_file: str | None,
    **flags: Any,
) -> None:
    """Forecast a run before paying: contacts to send, credits against those left, time.

    Reads INPUT as run would (rejects, duplicates, people already done in OUT) and asks the
    API (not paid) for the agent's cost per run and the credits remaining. The time is a
    range, from OUT's remembered limits and latency when it has any, else from the settings.
    --list names every contact the run would pay, with why (the run's own verdicts).
    Exit 0; 3 when the run would cost more credits than remain (run refuses it too).
    """
    try:
        settings = load_settings(config_file, api_key_file, **flags)
        code = print_plan(input_path, output, settings, as_json=as_json, listing=listing)
    except OctaveBulkError as exc:
        fail(exc)
    sys.exit(code)
