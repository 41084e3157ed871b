"""``export`` and ``status``: the commands that read a run's output files."""

from __future__ import annotations

import contextlib
import datetime
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from octave_bulk.cli.common import fail
from octave_bulk.cli.job import (
    ExportChoice,
    export_job,
    history_job,
    job_option,
    selected_runs,
    status_job,
)
from octave_bulk.errors import OctaveBulkError
from octave_bulk.observe.words import counted

if TYPE_CHECKING:
    from octave_bulk.export.writer import ExportReport
    from octave_bulk.state.idset import IdSet
    from octave_bulk.state.store import ExportMarks

__all__ = ["export", "history", "status"]

_SEQUENCERS = ("instantly", "smartlead", "lemlist")  # their importers get no CRM id columns
_AGENT_PRESETS = ("enrich-person", "enrich-company", "qualify-person", "qualify-company",
                  "content", "call-prep", "prospector")  # fmt: skip
_LEDGER_HELP = (
    "The run history database, when not OUT.ledger.sqlite (a shared one); with --job: the "
    "shared ledger's postgresql:// URL [env: OCTAVE_LEDGER]."
)
_NO_OUTPUT = "Missing argument 'OUT.ndjson' (or --job NAME to read a job of the shared ledger)."


@click.command()
@click.argument("results", metavar="OUT.ndjson", required=False)
@click.option(
    "-o",
    "--output",
    "target",
    help="CSV file to write, or - for stdout [default: stdout when it is not a terminal].",
)
@click.option(
    "--preset",
    type=click.Choice(["generic", *_SEQUENCERS, *_AGENT_PRESETS, "hubspot", "salesforce"]),
    default="generic",
    show_default=True,
    help="Column names for the sequencer you import into, or an agent's own columns.",
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
@click.option(
    "--new",
    "only_new",
    is_flag=True,
    help="Only results not exported before with --new (per preset), then mark them exported "
    "(to a file only).",
)
@click.option(
    "--undo-mark",
    is_flag=True,
    help="Move the preset's --new mark back to where the last export --new found it "
    "(nothing else is done).",
)
@click.option(
    "--run", "run_ids", metavar="RUN_ID", multiple=True, help="Only the results of this run."
)
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]),
    help="Only the results of the runs started since then (UTC).",
)
@click.option("--all-versions", is_flag=True, help="Every result of a person, not just the latest.")
@click.option(
    "--exclude-missing-from",
    "current_input",
    type=click.Path(path_type=Path),
    help="Leave out the people not in this CRM export (deleted from the CRM since).",
)
@click.option("--ledger", "ledger_text", metavar="PATH|URL", help=_LEDGER_HELP)
@job_option
def export(
    results: str | None,
    target: str,
    preset: str,
    body_format: str,
    max_field_chars: int | None,
    only_new: bool,
    undo_mark: bool,
    run_ids: tuple[str, ...],
    since: datetime.datetime | None,
    all_versions: bool,
    current_input: Path | None,
    ledger_text: str | None,
    job: str | None,
) -> None:
    """One CSV row per successful contact, ready to import into a sequencer.

    One row per person (the latest result; --all-versions for every one). Identity columns,
    then step1_subject, step1_body ... stepN_*, num_steps, request_id, completed_at. Cells
    that could run as spreadsheet formulas are escaped. With --new, the mark moves only once
    the file is written: an export that fails is done again next time; --undo-mark moves it
    back one export (the next --new writes those rows again).

    With --job NAME: the job's results in the shared ledger (every host's), one row per
    person; --new marks are per job and preset, shared by every host.
    """
    if job is None and results is None:
        raise click.UsageError(_NO_OUTPUT)
    if job is not None and (undo_mark or results is not None):
        raise click.UsageError("--job reads the shared ledger: no OUT.ndjson, no --undo-mark")
    path, ledger = Path(results or "."), _ledger_path(ledger_text, job)
    if undo_mark:
        _undo_mark(path, preset, ledger)
        return
    if target is None and (only_new or sys.stdout.isatty()):
        raise click.UsageError(
            "Missing option '-o' / '--output': a CSV file, or - for stdout (the default when "
            "stdout is a pipe or a file, without --new)."
        )
    target = target or "-"
    if only_new and target == "-":
        raise click.UsageError(
            "--new cannot write to stdout: the mark would move over rows the reader may never "
            "read (| head, a pipe that fails). Export to a file (-o new.csv) and read that, or "
            "leave out --new (--run RUN_ID or --since select rows without a mark)."
        )
    try:
        present = None if current_input is None else _people_of(current_input)
        choice = ExportChoice(preset, body_format, max_field_chars, only_new, run_ids, since,
                              all_versions, present)  # fmt: skip
        if job is not None:
            report = export_job(job, ledger_text, target, choice)
        else:
            report = _export_file(path, ledger, target, choice)
    except OctaveBulkError as exc:
        fail(exc)
    for warning in report.warnings():
        click.echo(f"warning: {warning}", err=True)
    where = "stdout" if target == "-" else target
    older = f" ({report.superseded} older results left out)" if report.superseded else ""
    what = (
        f"{counted(report.rows, 'row')} with {len(report.agent_columns)} {preset} columns"
        if preset in (*_AGENT_PRESETS, "hubspot", "salesforce")
        else f"{counted(report.rows, 'contact')} with up to {counted(report.steps, 'step')}"
    )
    click.echo(f"exported {what} to {where}{older}", err=True)


def _export_file(
    path: Path, ledger: Path | None, target: str, choice: ExportChoice
) -> ExportReport:
    """``export OUT``: the output's results file as the preset's CSV (its --new mark in the
    output's ledger)."""
    from octave_bulk.export import export_results
    from octave_bulk.state.file_store import open_ledger

    with contextlib.ExitStack() as stack:
        mark = (0, 0)
        if choice.only_new or choice.since is not None:
            history = stack.enter_context(open_ledger(path, ledger))
            marks: ExportMarks = history
        if choice.only_new:
            mark = marks.export_mark(path, choice.preset)
        selected = selected_runs(choice.run_ids, choice.since, lambda: history.runs())
        others = _other_records(path, ledger) if choice.preset not in _SEQUENCERS else None
        report = export_results(
            path,
            target,
            preset=choice.preset,
            body_format=choice.body_format,  # type: ignore[arg-type]
            max_field_chars=choice.max_field_chars,
            after_line=mark[0],
            after_byte=mark[1],
            run_ids=selected,
            all_versions=choice.all_versions,
            present=choice.present,
            other_crm_ids=others,
        )
        if choice.only_new:
            marks.set_export_mark(path, choice.preset, report.lines, report.bytes)
    return report


def _ledger_path(text: str | None, job: str | None) -> Path | None:
    """``--ledger`` as the run history's path (None with --job: the URL is read there)."""
    if text is None or job is not None:
        return None
    if text.startswith(("postgresql://", "postgres://")):
        raise click.UsageError("--ledger postgresql://… is read with --job NAME")
    return Path(text)


def _undo_mark(results: Path, preset: str, ledger: Path | None) -> None:
    """``export --undo-mark``: the preset's mark one export back."""
    from octave_bulk.state.file_store import open_ledger

    try:
        with open_ledger(results, ledger) as marks:
            undone = marks.undo_export_mark(results, preset)
    except OctaveBulkError as exc:
        fail(exc)
    if undone is None:
        raise click.UsageError(
            f"no export --new mark of preset {preset} to undo for {results} (none yet, or "
            "undone already: one step back only)"
        )
    was, now = undone
    click.echo(
        f"the {preset} --new mark of {results} is back at {now:,} results lines (it was at "
        f"{was:,}): the next export --new writes the {was - now:,} lines after it again",
        err=True,
    )


def _other_records(results: Path, ledger: Path | None) -> dict[int, str] | None:
    """Person -> the CRM ids of their other records, from the ledger when there is one."""
    from octave_bulk.state.history import RunHistory
    from octave_bulk.state.index import OutputIndex
    from octave_bulk.state.paths import OutputPaths

    path = ledger or OutputPaths.for_output(results).ledger
    if not path.exists():
        return None
    with RunHistory.open(path, readonly=True) as history:
        return OutputIndex(history, results, readonly=True).other_records()


def _people_of(input_path: Path) -> IdSet:
    """The person keys of a CRM export, read as ``run`` reads it (default mapping)."""
    from octave_bulk.identity import person_key
    from octave_bulk.input.intake import open_contacts
    from octave_bulk.input.records import Contact
    from octave_bulk.settings.model import Settings
    from octave_bulk.state.idset import IdSet, id_key

    people = IdSet(1024)
    with open_contacts(input_path, Settings.load()) as reader:
        for record in reader:
            if isinstance(record, Contact) and (key := person_key(record.fields)) is not None:
                people.add(id_key(key))
    return people


@click.command()
@click.argument("output", metavar="OUT.ndjson", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--ledger", "ledger_text", metavar="PATH|URL", help=_LEDGER_HELP)
@job_option
def status(output: str | None, as_json: bool, ledger_text: str | None, job: str | None) -> None:
    """What a run has done so far (works while a run is in progress).

    With --job NAME: the job's contacts by state, paid calls, outcomes unknown, late answers
    (answers after their claim was lost) and live workers, from the shared ledger."""
    import json

    from octave_bulk.state.status import read_status

    if job is not None:
        status_job(job, ledger_text, as_json)
        return
    if output is None:
        raise click.UsageError(_NO_OUTPUT)
    try:
        info = read_status(output, ledger=_ledger_path(ledger_text, job))
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
    if info["async_awaiting"]:
        click.echo(
            f"  async jobs submitted, result not in yet: {info['async_awaiting']} "
            f"(oldest submitted {info['async_oldest_submit']}; `octave-bulk collect "
            f"{output}` polls them, as does the next run)"
        )
    progress = info.get("input_progress")
    if progress:
        click.echo(
            f"  {progress['input']}: {progress['done']:,} of {progress['requests']:,} done, "
            + (f"{progress['awaited']:,} awaited (async), " if progress.get("awaited") else "")
            + f"{progress['remaining']:,} remaining"
        )
    last = info.get("last_run")
    if last and last.get("finished_at") is None:
        click.echo(
            f"  last run: {last.get('run_id')} started {last.get('started_at')}, no end recorded "
            "(still going, or killed: the next run counts what it paid)"
        )
    elif last:
        click.echo(
            f"  last run: {last.get('run_id')} finished {last.get('finished_at')} exit {last.get('exit_code')} ({last.get('stop_reason') or 'finished'})"
        )


@click.command()
@click.argument("output", metavar="OUT.ndjson", required=False)
@click.option("--ledger", "ledger_text", metavar="PATH|URL", help=_LEDGER_HELP)
@click.option("--last", type=click.IntRange(min=1), help="Only the last N runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@job_option
def history(
    output: str | None, ledger_text: str | None, last: int | None, as_json: bool, job: str | None
) -> None:
    """Every run of an output: when, sent, succeeded, failed, credits, exit.

    "twice?" counts calls possibly paid twice (on the wire when a run was killed, sent again);
    an exit of "-" is a run still going, or one killed before its end; "killed" is a killed
    run whose counts the next run took from the ledger and the files. With --job NAME: the
    job's runs on every host, from the shared ledger."""
    import json

    from octave_bulk.state.file_store import open_ledger
    from octave_bulk.utc import utc_iso

    if job is not None:
        runs = history_job(job, ledger_text, last)
    elif output is None:
        raise click.UsageError(_NO_OUTPUT)
    else:
        ledger = _ledger_path(ledger_text, job)
        try:
            with open_ledger(Path(output), ledger, readonly=True) as runs_db:
                mine = str(Path(output).resolve())
                runs = [r for r in runs_db.runs(last) if ledger is None or r["output"] == mine]
        except OctaveBulkError as exc:
            fail(exc)
    if as_json:
        for run in runs:
            for name in ("started_at", "updated_at", "finished_at"):
                run[name] = run[name] and utc_iso(run[name])
        click.echo(json.dumps(runs, indent=2, default=str))
        return
    header = ("started (UTC)", "run", "sent", "ok", "failed", "rejected", "credits", "twice?",
              "exit", "minutes")  # fmt: skip
    rows = [header]
    for run in reversed(runs):
        finished = run["finished_at"]
        minutes = (finished or run["updated_at"]) - run["started_at"]
        exit_code = "-" if finished is None else str(run["exit_code"])  # running, or killed
        if run["stop_reason"] == "killed":  # its row corrected by the next run
            exit_code = "killed"
        rows.append((utc_iso(run["started_at"], ms=False), run["run_id"], str(run["paid_calls"]),
                     str(run["succeeded"]), str(run["failed"]), str(run["rejected"]),
                     f"{run['credits']:g}", str(run["paid_twice"]), exit_code,
                     f"{minutes / 60:.1f}"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        click.echo("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
