"""``status/history/export/report --job NAME``: a job of the shared ledger, read from the
database (docs/scale-out.md, "Reading a job: status, history, export, report").

Contract: :func:`job_option` is the option; :func:`open_job` opens the job named by ``--job``
on the ledger of ``--ledger`` (or ``OCTAVE_LEDGER``), a ``postgresql://`` URL; a missing URL is a usage error, a server out of
reach or a job the ledger does not hold exits 2 with the URL shown without its password. The
other functions are the commands' ``--job`` paths; what they print mirrors the commands on an
output's files (``cli/files.py``, ``cli/report.py``).
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from octave_bulk.cli.common import fail
from octave_bulk.errors import ConfigError, OctaveBulkError

if TYPE_CHECKING:
    from octave_bulk.export.writer import ExportReport
    from octave_bulk.report.data import ReportData
    from octave_bulk.state.idset import IdSet
    from octave_bulk.state.pg.read import JobReader

__all__ = [
    "ExportChoice",
    "export_job",
    "history_job",
    "job_option",
    "job_report",
    "open_job",
    "report_name",
    "selected_runs",
    "status_job",
]


def job_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--job NAME``: read a job of the shared ledger instead of an output's files. Here
    rather than in ``cli/options.py``: ``status`` must not load the settings model (pydantic)
    to read an output's files."""
    return click.option(
        "--job",
        metavar="NAME",
        help="Read the job NAME (its agent) from the shared ledger (--ledger postgresql://… or "
        "OCTAVE_LEDGER) instead of an output's files.",
    )(command)


def open_job(job: str, ledger: str | None) -> JobReader:
    """The job's reader (see the module docstring); exits 2 when it cannot be opened."""
    text = ledger or os.environ.get("OCTAVE_LEDGER")
    if not text:
        raise click.UsageError(
            "--job reads the shared ledger: give --ledger postgresql://… (or OCTAVE_LEDGER)"
        )
    try:
        from octave_bulk.state.pg.dsn import LedgerUrl
        from octave_bulk.state.pg.read import JobReader
    except ImportError:
        fail(ConfigError("--job needs the PostgreSQL driver: pip install 'octave-bulk[postgres]'"))
    try:
        return JobReader(LedgerUrl.parse(text), job)
    except OctaveBulkError as exc:
        fail(exc)


@dataclass(frozen=True, slots=True)
class ExportChoice:
    """What ``export`` was asked for (its options), whichever source it reads."""

    preset: str
    body_format: str
    max_field_chars: int | None
    only_new: bool
    run_ids: tuple[str, ...]
    since: datetime.datetime | None
    all_versions: bool
    present: IdSet | None


def export_job(job: str, ledger: str | None, target: str, choice: ExportChoice) -> ExportReport:
    """``export --job``: the job's results (done contacts, in the order they settled) as the
    preset's CSV; with ``only_new`` the rows after the job's mark of the preset, then the mark
    moves (``ob_export_mark``, one per job and preset, shared by every host)."""
    from octave_bulk.export.writer import export_lines

    fmt: Literal["text", "html"] = "html" if choice.body_format == "html" else "text"
    with open_job(job, ledger) as reader:
        try:
            selected = selected_runs(choice.run_ids, choice.since, reader.runs)
            options: dict[str, Any] = {
                "kind": reader.agent,
                "label": f"job {job}",
                "preset": choice.preset,
                "body_format": fmt,
                "max_field_chars": choice.max_field_chars,
                "run_ids": selected,
                "all_versions": choice.all_versions,
                "present": choice.present,
            }
            if not choice.only_new:
                upto = reader.horizon()  # both passes read the same rows
                return export_lines(
                    lambda count, _: reader.result_lines(0, upto, count), target, **options
                )
            with reader.export_mark(choice.preset) as increment:
                after, upto = increment.after, increment.upto
                return export_lines(
                    lambda count, _: reader.result_lines(after, upto, count), target, **options
                )
        except OctaveBulkError as exc:
            fail(exc)


def status_job(job: str, ledger: str | None, as_json: bool) -> None:
    """``status --job``: the job's counts, calls and live workers."""
    with open_job(job, ledger) as reader:
        try:
            info = reader.status()
        except OctaveBulkError as exc:
            fail(exc)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    workers = info["workers"]
    click.echo(
        f"job {info['job']} ({info['agent']}) on {info['ledger']}: "
        f"{len(workers)} live worker{'' if len(workers) == 1 else 's'}"
    )
    for key in ("contacts", "todo", "claimed", "submitted", "done", "failed", "paid_calls",
                "outcome_unknown", "late_answers"):  # fmt: skip
        click.echo(f"  {key.replace('_', ' ')}: {info[key]}")
    for worker in workers:
        click.echo(
            f"  worker {worker['host']} pid {worker['pid']}: heartbeat "
            f"{worker['heartbeat_age_s']:.1f} s ago, {worker['in_flight']} in flight"
        )


def history_job(job: str, ledger: str | None, last: int | None) -> list[dict[str, Any]]:
    """``history --job``: the job's runs, newest first (as ``history`` reads them)."""
    with open_job(job, ledger) as reader:
        try:
            return reader.runs(last)
        except OctaveBulkError as exc:
            fail(exc)


def job_report(job: str, ledger: str | None, run_id: str | None) -> ReportData:
    """``report --job``: the run's report data from the database (``report/job.py`` says what
    it leaves out)."""
    from octave_bulk.report.job import gather_job

    with open_job(job, ledger) as reader:
        return gather_job(reader, run_id)


def report_name(job: str) -> Path:
    """Where ``report --job`` writes by default: ``JOB.report.html`` in the current folder."""
    return Path(re.sub(r"[^\w.-]", "_", job) + ".report.html")


def selected_runs(
    run_ids: tuple[str, ...],
    since: datetime.datetime | None,
    runs: Callable[[], list[dict[str, Any]]],
) -> frozenset[str] | None:
    """``export --run/--since``: the runs whose results are exported (None: every run)."""
    selected = frozenset(run_ids) if run_ids else None
    if since is not None:
        start = since.replace(tzinfo=datetime.UTC).timestamp()
        recent = {run["run_id"] for run in runs() if run["started_at"] >= start}
        selected = frozenset(recent) if selected is None else selected & recent
    return selected
