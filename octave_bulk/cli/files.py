"""``export`` and ``status``: the commands that read a run's output files."""

from __future__ import annotations

from pathlib import Path

import click

from octave_bulk.cli.common import fail
from octave_bulk.errors import OctaveBulkError

__all__ = ["export", "status"]


@click.command()
@click.argument("results", metavar="OUT.ndjson")
@click.option("-o", "--output", "target", required=True, help="CSV file to write, or - for stdout.")
@click.option(
    "--preset",
    type=click.Choice(["generic", "instantly", "smartlead", "lemlist"]),
    default="generic",
    show_default=True,
    help="Column names for the sequencer you import into.",
)
@click.option(
    "--body-format",
    type=click.Choice(["text", "html"]),
    default="text",
    show_default=True,
    help="Email bodies as plain text or HTML.",
)
@click.option(
    "--max-field-chars",
    type=int,
    help="Cut subjects/bodies longer than this, with a warning [default: per preset; 0: off].",
)
def export(
    results: str, target: str, preset: str, body_format: str, max_field_chars: int | None
) -> None:
    """One CSV row per successful contact, ready to import into a sequencer.

    Identity columns, then step1_subject, step1_body ... stepN_*, num_steps, request_id,
    completed_at. Cells that could run as spreadsheet formulas are escaped.
    """
    from octave_bulk.export import export_results

    try:
        report = export_results(
            Path(results),
            target,
            preset=preset,
            body_format=body_format,  # type: ignore[arg-type]
            max_field_chars=max_field_chars,
        )
    except OctaveBulkError as exc:
        fail(exc)
    for warning in report.warnings():
        click.echo(f"warning: {warning}", err=True)
    where = "stdout" if target == "-" else target
    click.echo(
        f"exported {report.rows} contacts with up to {report.steps} steps to {where}", err=True
    )


@click.command()
@click.argument("output", metavar="OUT.ndjson")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(output: str, as_json: bool) -> None:
    """What a run has done so far (works while a run is in progress)."""
    import json

    from octave_bulk.status import read_status

    try:
        info = read_status(output)
    except OctaveBulkError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(
        f"{info['output']}: {'running (' + info['running'] + ')' if info['running'] else 'not running'}"
    )
    for key in (
        "succeeded",
        "failed_retryable",
        "failed_permanent",
        "rejected",
        "credits",
        "in_flight",
        "outcome_unknown",
    ):
        click.echo(f"  {key.replace('_', ' ')}: {info[key]}")
    last = info.get("last_run")
    if last:
        click.echo(
            f"  last run: {last.get('run_id')} finished {last.get('finished_at')} exit {last.get('exit_code')} ({last.get('stop_reason') or 'finished'})"
        )
