"""The ``octave-bulk`` command line: parse options, call the library, map errors to exit codes.

Exit codes and user-facing error text are decided here and nowhere else (SPEC.md §7).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
from pydantic import SecretStr

from octave_bulk import simulator as sim
from octave_bulk.errors import ConfigError, InputError, OctaveBulkError, StateError

__all__ = ["cli", "main"]

T = TypeVar("T")


def _parsed(parser: Callable[[str], T]) -> Callable[[click.Context, click.Parameter, str], T]:
    """A click callback that turns a parser's ValueError into a usage error (exit 2)."""

    def callback(_ctx: click.Context, param: click.Parameter, value: str) -> T:
        try:
            return parser(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param=param) from None

    return callback


def _emails_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        msg = f"bad range {text!r}: use e.g. 2-3 or 4"
        raise ValueError(msg) from None
    return lo, hi


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="octave-bulk")
def cli() -> None:
    """Run Octave's Sequence Agent over many contacts: fast, rate-limited, crash-safe."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8099, show_default=True, help="Port to listen on (0: any free).")
@click.option(
    "--latency",
    default="instant",
    show_default=True,
    callback=_parsed(sim.parse_latency),
    help="instant, fast (~50 ms), realistic (~40 s), or MEDIAN[:SIGMA] such as 1s:0.5.",
)
@click.option(
    "--rate-limit",
    default="none",
    show_default=True,
    callback=_parsed(sim.parse_rate_limit),
    help="Server-side token bucket, RATE[:BURST] such as 50/s:5 or 600/min; none to disable.",
)
@click.option(
    "--faults",
    default="",
    callback=_parsed(sim.parse_faults),
    help=f"kind=rate pairs, e.g. 500=0.02,reset=0.01; all=R spreads R. Kinds: {', '.join(sim.FAULT_KINDS)}.",
)
@click.option(
    "--retry-after-mix",
    default="seconds=1,date=1,absent=1",
    show_default=True,
    callback=_parsed(sim.parse_retry_after_mix),
    help="Weights of the Retry-After forms a 429 carries.",
)
@click.option(
    "--force",
    default="",
    callback=_parsed(sim.parse_forced),
    help="requestId=kind pairs: that id always gets that outcome (kinds above, 400-403, ok).",
)
@click.option(
    "--seed", default=0, show_default=True, help="Seed: the same seed gives the same faults."
)
@click.option(
    "--emails",
    default="2-3",
    show_default=True,
    callback=_parsed(_emails_range),
    help="Emails per sequence, MIN-MAX between 1 and 7.",
)
@click.option(
    "--require-key-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Accept only the key in this file (default: any non-empty key).",
)
@click.option(
    "--hang-seconds",
    default=3600.0,
    show_default=True,
    help="How long a 'hang' fault holds a call.",
)
def simulate(
    host: str,
    port: int,
    latency: sim.Latency,
    rate_limit: sim.RateLimit | None,
    faults: dict[str, float],
    retry_after_mix: sim.RetryAfterMix,
    force: dict[str, str],
    seed: int,
    emails: tuple[int, int],
    require_key_file: str | None,
    hang_seconds: float,
) -> None:
    """Run the Octave simulator as a standalone server (no API key or network needed)."""
    from octave_bulk.simulator.server import bind_socket, run_forever

    key = None
    if require_key_file:
        with open(require_key_file, encoding="utf-8") as handle:
            key = handle.read().strip()
    try:
        config = sim.SimulatorConfig(
            seed=seed,
            latency=latency,
            rate_limit=rate_limit,
            retry_after_mix=retry_after_mix,
            faults=faults,
            forced=force,
            emails_min=emails[0],
            emails_max=emails[1],
            api_key=key,
            hang_seconds=hang_seconds,
        )
        sock = bind_socket(host, port)
    except (ValueError, OSError) as exc:
        raise click.UsageError(str(exc)) from None
    url = f"http://{host}:{sock.getsockname()[1]}"
    click.echo(f"octave simulator listening on {url}", err=False)
    click.echo(f"  try: curl -s {url}/__simulator/stats", err=True)
    sys.stdout.flush()
    run_forever(sim.Simulator(config), sock)


def _run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of ``run`` (each also settable in the TOML file and via OCTAVE_* env)."""
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            help="TOML file with settings (flags win over env, env over the file).",
        ),
        click.option(
            "--agent", "agent_oid", help="Sequence agent to run (ca_...); env OCTAVE_AGENT_OID."
        ),
        click.option("--experiment", "experiment_oid", help="Experiment to run instead (ae_...)."),
        click.option(
            "--base-url",
            help="API base URL; env OCTAVE_BASE_URL [default: https://app.octavehq.com].",
        ),
        click.option(
            "--api-key-file",
            type=click.Path(dir_okay=False),
            help="File holding the API key (else env OCTAVE_API_KEY).",
        ),
        click.option("--rate", help="Rate ceiling, e.g. 2/s, 90/min, or none [default: 2/s]."),
        click.option("--concurrency", type=int, help="Calls in flight at most [default: 32]."),
        click.option(
            "--adaptive/--no-adaptive",
            default=None,
            help="Slow the pool down on 429 and climb back [default: on].",
        ),
        click.option(
            "--timeout", type=float, help="Read timeout per call, seconds [default: 180]."
        ),
        click.option("--max-attempts", type=int, help="Attempts per contact per run [default: 5]."),
        click.option(
            "--output-format",
            type=click.Choice(["text", "html", "markdown"]),
            help="Format of the emails [default: text].",
        ),
        click.option("--lang", help="Language when the row has none (e.g. en, es)."),
        click.option("--context", help="runtimeContext.all for every contact."),
        click.option("--instructions", help="runtimeInstructions.all for every contact."),
        click.option(
            "--max-calls",
            type=int,
            help="Stop after this many paid calls, retries included (exit 5).",
        ),
        click.option("--limit", type=int, help="Only the first N contacts."),
        click.option(
            "--dry-run",
            is_flag=True,
            default=None,
            help="Validate and show what would be sent; no calls, no files.",
        ),
        click.option(
            "--retry-failed",
            is_flag=True,
            default=None,
            help="Also retry contacts that failed for good before.",
        ),
        click.option(
            "--progress/--no-progress",
            default=None,
            help="Progress bar on stderr [default: when stderr is a terminal].",
        ),
        click.option(
            "--log-format",
            type=click.Choice(["text", "json"]),
            help="Log events as text or JSON lines [default: text].",
        ),
        click.option(
            "--metrics-textfile",
            type=click.Path(dir_okay=False),
            help="Write Prometheus textfile metrics here at the end of the run.",
        ),
        click.option(
            "--log-file",
            type=click.Path(dir_okay=False),
            help="Also write log events to this file.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _input_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options that say how to read and map the input (shared by run and validate)."""
    options = [
        click.option(
            "--profile",
            type=click.Choice(["auto", "hubspot", "salesforce", "apollo", "linkedin", "generic"]),
            help="Input column profile [default: auto].",
        ),
        click.option(
            "--map",
            "map_",
            multiple=True,
            help='Column override "Source Column=field" (repeatable).',
        ),
        click.option(
            "--format",
            "input_format",
            type=click.Choice(["auto", "csv", "ndjson"]),
            help="Input format [default: by extension].",
        ),
        click.option("--encoding", help="Input encoding [default: detected]."),
        click.option("--delimiter", help="CSV delimiter [default: sniffed among , ; tab |]."),
        click.option("--skip-lines", type=int, help="Lines to skip before the CSV header."),
        click.option(
            "--max-field-bytes",
            type=int,
            help="Largest cell; a bigger one rejects its row [default: 65536].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_async(function: Callable[[], Any]) -> Any:
    """Run a coroutine function on uvloop when it is installed (measured faster), else asyncio."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return anyio.run(function)
    return anyio.run(function, backend_options={"use_uvloop": True})


def _settings(config_file: str | None, api_key_file: str | None, **flags: Any) -> Any:
    from octave_bulk.settings import Settings

    if "map_" in flags:
        value = flags.pop("map_")
        flags["map"] = tuple(value) or None
    return Settings.load(config_file, api_key_file=api_key_file, **flags)


def _fail(exc: OctaveBulkError) -> None:
    hints = {
        ConfigError: "fix the setting and run again; nothing was sent.",
        InputError: "fix the input file and try again; nothing was sent or changed.",
        StateError: "nothing already written is lost; run the same command again once fixed.",
    }
    hint = next((h for cls, h in hints.items() if isinstance(exc, cls)), "")
    click.echo(f"error: {exc}", err=True)
    if hint:
        click.echo(f"  {hint}", err=True)
    sys.exit(2)


def _print_summary(summary: dict[str, Any]) -> None:
    counts = summary.get("counts", {})
    out = summary.get("outputs", {})
    lines = [
        f"exit {summary.get('exit_code')} ({summary.get('stop_reason') or 'finished'}) "
        f"in {summary.get('wall_seconds')} s",
        "  " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items() if v),
        f"  paid calls {summary.get('paid_calls')}, credits {summary.get('credits')}, "
        f"latency p50 {summary.get('latency_ms', {}).get('p50')} ms",
    ]
    if summary.get("fatal_error"):
        lines.append(f"  stopped: {summary['fatal_error']}")
    if summary.get("input_error"):
        lines.append(
            f"  stopped: {summary['input_error']}; fix the input, then run again to resume."
        )
    if out:
        lines.append(f"  results: {out.get('results')}")
        lines.append(f"  errors:  {out.get('errors')}   rejects: {out.get('rejects')}")
        lines.append(f"  summary: {out.get('summary')}")
    if summary.get("exit_code") in (3,):
        lines.append("  fix the key or credits, then run the same command again to resume.")
    elif summary.get("exit_code") in (4, 5, 130):
        lines.append("  run the same command again to resume where it stopped.")
    click.echo("\n".join(lines), err=True)


@cli.command()
@click.argument("input_path", metavar="INPUT")
@click.option(
    "-o", "--output", required=True, help="Results file OUT.ndjson (side files go next to it)."
)
@_run_options
@_input_options
def run(
    input_path: str, output: str, config_file: str | None, api_key_file: str | None, **flags: Any
) -> None:
    """Run the Sequence Agent for every contact of INPUT (CSV or NDJSON, - for stdin).

    Re-running the same command resumes: contacts already in OUT are skipped.
    """
    from octave_bulk.observe.progress import configure_logging
    from octave_bulk.run.engine import run_batch

    try:
        settings = _settings(config_file, api_key_file, **flags)
        configure_logging(
            settings.log_format, str(settings.log_file) if settings.log_file else None
        )
        summary = _run_async(lambda: run_batch(input_path, output, settings, handle_signals=True))
    except OctaveBulkError as exc:
        _fail(exc)
        return
    if summary.get("dry_run"):
        import json

        click.echo(json.dumps(summary, indent=2, default=str))
    elif settings.log_format != "json":  # with JSON logs, the stop event is the summary
        _print_summary(summary)
    sys.exit(summary["exit_code"])


@cli.command()
@click.argument("input_path", metavar="INPUT")
@click.option(
    "-o",
    "--output",
    help="OUT.ndjson whose rejects file to write [default: INPUT without its extension].",
)
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with settings."
)
@click.option(
    "--agent", "agent_oid", help="Agent the requests would target (checked like run does)."
)
@click.option("--experiment", "experiment_oid", help="Experiment instead of an agent.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_input_options
def validate(
    input_path: str, output: str | None, config_file: str | None, as_json: bool, **flags: Any
) -> None:
    """Read, map and validate INPUT exactly as run would; zero API calls.

    Writes OUT.rejects.ndjson. Exit 0: all valid; 1: some rejected; 2: unreadable file or bad header.
    """
    import json

    from octave_bulk.intake import reader_options, request_spec
    from octave_bulk.state.checkpoint import OutputPaths
    from octave_bulk.validate import validate_input

    try:
        settings = _settings(config_file, None, **flags)
        if not (settings.agent_oid or settings.experiment_oid):
            settings = settings.model_copy(
                update={"agent_oid": "ca_validate"}
            )  # only for the model check
        if output is None:
            stem = Path(input_path).with_suffix("") if input_path != "-" else Path("stdin")
            output = str(stem) + ".ndjson"
        rejects = OutputPaths.for_output(output).rejects
        report = validate_input(
            input_path, reader_options(settings), request_spec(settings), rejects
        )
    except OctaveBulkError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(
            f"{report.path}: {report.format}, {report.encoding}"
            + (f" ({report.encoding_note})" if report.encoding_note else "")
        )
        click.echo(report.mapping.render())
        click.echo(f"read {report.read}, valid {report.valid}, rejected {report.rejected_total}")
        for reason, count in sorted(report.rejected.items(), key=lambda kv: -kv[1]):
            click.echo(f"  {reason}: {count}")
        if report.rejected_total:
            click.echo(f"rejects: {report.rejects_path}")
    sys.exit(1 if report.rejected_total else 0)


@cli.command()
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
        _fail(exc)
        return
    for warning in report.warnings():
        click.echo(f"warning: {warning}", err=True)
    where = "stdout" if target == "-" else target
    click.echo(
        f"exported {report.rows} contacts with up to {report.steps} steps to {where}", err=True
    )


@cli.command()
@click.argument("output", metavar="OUT.ndjson")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(output: str, as_json: bool) -> None:
    """What a run has done so far (works while a run is in progress)."""
    import json

    from octave_bulk.status import read_status

    try:
        info = read_status(output)
    except OctaveBulkError as exc:
        _fail(exc)
        return
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


@cli.command()
@click.option("--contacts", default=200, show_default=True, help="How many sample contacts.")
@click.option(
    "--out",
    "out_dir",
    default="octave-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for the sample input and the results.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar [default: when stderr is a terminal].",
)
def demo(contacts: int, out_dir: str, progress: bool | None) -> None:
    """A real batch against the built-in simulator: no API key, no network."""
    from octave_bulk.demo import run_demo
    from octave_bulk.observe.progress import configure_logging

    configure_logging("text")
    click.echo(
        f"demo: {contacts} sample contacts -> the built-in Octave simulator (faults and a rate limit on)",
        err=True,
    )
    try:
        summary = _run_async(lambda: run_demo(Path(out_dir), contacts, progress=progress))
    except OctaveBulkError as exc:
        _fail(exc)
        return
    _print_summary(summary)
    click.echo(f"  next: octave-bulk status {Path(out_dir) / 'demo-results.ndjson'}", err=True)
    sys.exit(summary["exit_code"])


@cli.command()
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with settings."
)
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    help="File holding the API key (else env OCTAVE_API_KEY).",
)
@click.option("--base-url", help="API base URL; env OCTAVE_BASE_URL.")
def doctor(config_file: str | None, api_key_file: str | None, base_url: str | None) -> None:
    """Check the settings and the API key: fingerprint, workspace and credits left.

    Exit 0: all good; 2: a settings problem; 3: the key was refused; 1: the API could not be reached.
    """
    from octave_bulk.errors import ApiError, FatalApiError
    from octave_bulk.http.client import OctaveClient, make_transport

    try:
        settings = _settings(config_file, api_key_file, base_url=base_url)
    except OctaveBulkError as exc:
        _fail(exc)
        return
    click.echo(f"config: ok{f' ({config_file})' if config_file else ''}")
    click.echo(f"base url: {settings.base_url}")
    target = settings.agent_oid or settings.experiment_oid
    click.echo(f"target: {target or 'none set (give --agent to run)'}")
    if settings.api_key is None:
        click.echo("key: none - set OCTAVE_API_KEY or use --api-key-file", err=True)
        sys.exit(2)
    click.echo(f"key: {settings.key_fingerprint()}")

    async def check() -> dict[str, Any]:
        async with make_transport(concurrency=1, transport=settings.transport) as transport:
            client = OctaveClient(
                transport,
                base_url=settings.base_url,
                api_key=settings.api_key or SecretStr(""),
                timeout=settings.connect_timeout + 20,
                connect_timeout=settings.connect_timeout,
            )
            return await client.validate_key()

    try:
        payload = _run_async(check)
    except FatalApiError as exc:
        click.echo(f"key: refused ({exc.message})", err=True)
        sys.exit(3)
    except ApiError as exc:
        click.echo(f"API: cannot validate the key ({exc.message})", err=True)
        sys.exit(1)
    data = payload.get("data")
    if not isinstance(data, dict):
        data = {}
    click.echo(f"workspace: {data.get('workspaceName')} ({data.get('workspaceOId')})")
    credits = data.get("credits")
    if isinstance(credits, dict):
        click.echo(
            f"credits: {credits.get('totalRemaining')} left of {credits.get('totalMax')} "
            f"(used {credits.get('totalUsed')}, period {credits.get('period')})"
        )
    click.echo("key: valid")


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``octave-bulk`` console script."""
    try:
        return cli.main(args=argv, prog_name="octave-bulk")
    except Exception as exc:  # a bug: show where, but never the key
        text = "".join(traceback.format_exception(exc))
        click.echo(_redact(text), err=True)
        click.echo("internal error: please report it with the lines above.", err=True)
        sys.exit(1)


def _redact(text: str) -> str:
    import os

    key = os.environ.get("OCTAVE_API_KEY")
    return text.replace(key, "***") if key else text
