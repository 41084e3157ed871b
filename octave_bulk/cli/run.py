"""``run`` and ``validate``: the commands that read an input file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from octave_bulk.cli.common import (
    fail,
    load_settings,
    notify_end,
    notify_refusal,
    print_probe,
    print_summary,
    run_async,
)
from octave_bulk.cli.options import (
    INPUT_FIELDS,
    PROBE_SHOWN,
    RUN_FIELDS,
    RUN_SHOWN,
    SectionedCommand,
    config_option,
    key_file_option,
    settings_options,
)
from octave_bulk.errors import ExitCode, OctaveBulkError

__all__ = ["collect", "probe", "run", "validate"]


@click.command(cls=SectionedCommand)
@click.argument("input_path", metavar="INPUT")
@click.option(
    "-o", "--output", required=True, help="Results file OUT.ndjson (side files go next to it)."
)
@click.option(
    "--show-request",
    is_flag=True,
    hidden=True,
    help="With --dry-run: print the first request and the counts as JSON instead of the plan.",
)
@config_option
@key_file_option
@settings_options(*RUN_FIELDS, *INPUT_FIELDS, shown=RUN_SHOWN)
def run(
    input_path: str,
    output: str,
    show_request: bool,
    config_file: str | None,
    api_key_file: str | None,
    **flags: Any,
) -> None:
    """Run an Octave agent for every contact of INPUT (CSV, NDJSON or results, - for stdin).

    \b
    octave-bulk run export.csv -o results.ndjson --agent ca_...
    octave-bulk run results.ndjson -o best.ndjson --agent ca_... --where "score >= 7"

    The Sequence Agent unless --agent-type says otherwise. INPUT may be an earlier run's
    OUT.ndjson (chaining: --where, --context-from). Re-running the same command resumes:
    contacts already in OUT are skipped. Exit 0: done; 1: contacts failed tonight (--fail-on);
    2: nothing sent, fix the cause; 3-6 and 130: stopped, the same command resumes.
    """
    from octave_bulk.observe.log import configure_logging
    from octave_bulk.run.engine import run_batch

    settings = None
    try:
        settings = load_settings(config_file, api_key_file, **flags)
        configure_logging(
            settings.log_format, str(settings.log_file) if settings.log_file else None
        )
        if settings.dry_run and not show_request:
            from octave_bulk.cli.plan import print_plan

            sys.exit(print_plan(input_path, output, settings))
        summary = run_async(lambda: run_batch(input_path, output, settings, handle_signals=True))
    except OctaveBulkError as exc:
        if settings is not None:  # refused before its first call: the operator hears of it
            notify_refusal(settings, exc)
        fail(exc)
    if summary.get("dry_run"):
        import json

        click.echo(json.dumps(summary.to_dict(), indent=2, default=str, ensure_ascii=False))
        sys.exit(summary["exit_code"])
    if settings.log_format != "json":  # with JSON logs, the stop event is the summary
        print_summary(summary)
    notify_end(settings, summary)
    sys.exit(summary["exit_code"])


@click.command(cls=SectionedCommand)
@click.argument("input_path", metavar="INPUT")
@click.option(
    "-o", "--output", required=True, help="Results file OUT.ndjson (side files go next to it)."
)
@click.option(
    "--max-calls",
    "probe_calls",
    type=click.IntRange(min=1),
    required=True,
    help="Paid calls to spend at most, retries included (the contacts are real work).",
)
@config_option
@key_file_option
@settings_options(
    *(f for f in RUN_FIELDS if f not in {"max_calls", "dry_run", "detach"}),
    *INPUT_FIELDS,
    shown=PROBE_SHOWN,
)
def probe(
    input_path: str,
    output: str,
    probe_calls: int,
    config_file: str | None,
    api_key_file: str | None,
    **flags: Any,
) -> None:
    """Measure what your workspace sustains: rate, calls in flight, latency.

    \b
    octave-bulk probe export.csv -o results.ndjson --agent ca_... --max-calls 200
    octave-bulk probe export.csv -o results.ndjson --agent ca_... --max-calls 200 --concurrency 128

    Spends at most --max-calls paid calls on the first contacts of INPUT (their results are
    kept in OUT like any run's), ramping the rate and the calls in flight as run does, and
    reports the latency, where 429s began and the flags to use. The limits found are stored
    next to OUT: the next run on OUT starts there.
    """
    from octave_bulk.observe.log import configure_logging
    from octave_bulk.run.engine import run_batch

    try:
        settings = load_settings(config_file, api_key_file, max_calls=probe_calls, **flags)
        configure_logging(
            settings.log_format, str(settings.log_file) if settings.log_file else None
        )
        summary = run_async(lambda: run_batch(input_path, output, settings, handle_signals=True))
    except OctaveBulkError as exc:
        fail(exc)
    print_summary(summary)
    print_probe(summary)
    # Spending the budget is what a probe is for; other stops keep their codes.
    done = summary.exit_code in (ExitCode.OK, ExitCode.MAX_CALLS, ExitCode.SOME_FAILED)
    sys.exit(ExitCode.OK if done else summary.exit_code)


def _resend_against(input_path: str, output: str, settings: Any) -> dict[str, Any] | None:
    """What a run of INPUT on OUT would pay again (the re-send guard's numbers), when OUT has
    results."""
    from octave_bulk.run.guard import check_resend
    from octave_bulk.state.file_view import read_state
    from octave_bulk.state.paths import OutputPaths

    paths = OutputPaths.for_output(output)
    if not paths.results.exists():
        return None
    state = read_state(paths, settings.ledger)
    return check_resend(input_path, settings, state).to_dict()


@click.command(cls=SectionedCommand)
@click.argument("input_path", metavar="INPUT")
@click.option(
    "-o",
    "--output",
    help="OUT.ndjson whose rejects file to write [default: INPUT without its extension].",
)
@config_option
@settings_options("agent_type", "agent_oid", "experiment_oid")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@settings_options(*INPUT_FIELDS)
def validate(
    input_path: str,
    output: str | None,
    config_file: str | None,
    as_json: bool,
    **flags: Any,
) -> None:
    """Read, map and validate INPUT exactly as run would; zero API calls.

    Writes OUT.rejects.ndjson. Exit 0: all valid; 1: some rejected; 2: unreadable file or bad header.
    """
    import json

    from octave_bulk.agents import get_agent
    from octave_bulk.input.intake import reader_options
    from octave_bulk.input.validate import validate_input
    from octave_bulk.run.build import request_spec
    from octave_bulk.state.lock import refuse_while_running
    from octave_bulk.state.paths import OutputPaths
    from octave_bulk.state.preflight import check_file

    try:
        settings = load_settings(config_file, None, **flags)
        targeted = bool(settings.agent_oid or settings.experiment_oid)
        if not targeted:
            settings = settings.model_copy(
                update={"agent_oid": "ca_validate"}
            )  # only for the model check
        if output is None:
            stem = Path(input_path).with_suffix("") if input_path != "-" else Path("stdin")
            output = str(stem) + ".ndjson"
        rejects = OutputPaths.for_output(output).rejects
        check_file(rejects)  # a missing folder is made; an unwritable one is exit 2
        refuse_while_running(OutputPaths.for_output(output), "validate would rewrite its rejects")
        report = validate_input(
            input_path,
            reader_options(settings),
            request_spec(settings),
            rejects,
            get_agent(settings.agent_type),
        )
        # The target is part of every request: without it, no comparison with OUT's results.
        resend = _resend_against(input_path, output, settings) if targeted else None
    except OctaveBulkError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "resend": resend}, indent=2))
    else:
        click.echo(
            f"{report.path}: {report.format}, {report.encoding}"
            + (f" ({report.encoding_note})" if report.encoding_note else "")
        )
        click.echo(report.mapping.render())
        click.echo(f"read {report.read}, valid {report.valid}, rejected {report.rejected_total}")
        if report.filtered_out:
            click.echo(f"  left out by --where: {report.filtered_out}")
        if report.footer_rows:
            click.echo(f"  (and {report.footer_rows} report footer lines, dropped)")
        for reason, count in sorted(report.rejected.items(), key=lambda kv: -kv[1]):
            click.echo(f"  {reason}: {count}")
        for line in report.render_notes():
            click.echo(line)
        if report.rejected_total:
            click.echo(f"rejects: {report.rejects_path}")
        if resend is not None:
            click.echo(
                f"against {output}: {resend['people_done_unchanged']} people done and unchanged, "
                f"{resend['people_done_resent']} would be paid again"
                f" ({resend['resent_share']:.0%})"
                + (f": {', '.join(resend['changed_fields'])}" if resend["changed_fields"] else "")
            )
    sys.exit(ExitCode.SOME_FAILED if report.rejected_total else ExitCode.OK)


@click.command(cls=SectionedCommand)
@click.argument("output", metavar="OUT")
@config_option
@key_file_option
@settings_options(
    "agent_type", "agent_oid", "experiment_oid", "base_url", "poll_rate", "fail_on",
    "progress", "log_format", "log_file", "ledger", "metrics_textfile",
)  # fmt: skip
def collect(output: str, config_file: str | None, api_key_file: str | None, **flags: Any) -> None:
    """Poll the async jobs OUT awaits (run --mode async --detach) and write their results.

    Never submits anything: the jobs of OUT.jobs.ndjson are polled until each has its result
    or is given up on (job_timeout), with a run's guarantees (lock, durable writes, resumable
    after a kill, summary, exit codes). The agent, API and poll settings are the last run's
    (OUT.summary.json) unless flags, env or --config say otherwise.
    """
    from octave_bulk.observe.log import configure_logging
    from octave_bulk.run.collect import collect_jobs, remembered_settings

    try:
        given = load_settings(config_file, api_key_file, **flags)
        remembered = {
            name: value
            for name, value in remembered_settings(output).items()
            if name not in given.model_fields_set
        }
        settings = load_settings(config_file, api_key_file, **(flags | remembered))
        configure_logging(
            settings.log_format, str(settings.log_file) if settings.log_file else None
        )
        summary = run_async(lambda: collect_jobs(output, settings, handle_signals=True))
    except OctaveBulkError as exc:
        fail(exc)
    if settings.log_format != "json":
        print_summary(summary)
    sys.exit(summary["exit_code"])
