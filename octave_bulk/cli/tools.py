"""``simulate``, ``demo`` and ``doctor``: the simulator, a demo batch, and a settings check."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from octave_bulk import simulator as sim
from octave_bulk.cli.common import fail, load_settings, parsed, print_summary, run_async
from octave_bulk.cli.options import (
    SectionedCommand,
    config_option,
    key_file_option,
    settings_options,
)
from octave_bulk.errors import ApiError, ExitCode, OctaveBulkError

__all__ = ["demo", "doctor", "simulate"]


def _emails_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        msg = f"bad range {text!r}: use e.g. 2-3 or 4"
        raise ValueError(msg) from None
    return lo, hi


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8099, show_default=True, help="Port to listen on (0: any free).")
@click.option(
    "--latency",
    default="instant",
    show_default=True,
    callback=parsed(sim.parse_latency),
    help="instant, fast (~50 ms), realistic (~40 s), or MEDIAN[:SIGMA] such as 1s:0.5.",
)
@click.option(
    "--rate-limit",
    default="none",
    show_default=True,
    callback=parsed(sim.parse_rate_limit),
    help="Server-side token bucket, RATE[:BURST] such as 50/s:5 or 600/min: BURST calls (>= 1; "
    "default a tenth of a second's worth, at least 1) pass at once, then RATE; or a window, "
    "fixed:COUNT/UNIT or moving:COUNT/UNIT such as fixed:120/min (Retry-After: the reset; "
    "fixed:120/min@40: on the clock's minutes, the first call 40 s into one); none to disable.",
)
@click.option(
    "--max-inflight",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="Concurrency cap: a call arriving while K are being processed gets a 429 at once.",
)
@click.option(
    "--inflight-retry-after/--no-inflight-retry-after",
    default=False,
    show_default=True,
    help="Whether a 429 from --max-inflight carries Retry-After: 1 (a typical gateway: no).",
)
@click.option(
    "--rate-limit-headers/--no-rate-limit-headers",
    default=False,
    show_default=True,
    help="Whether --rate-limit's 429s carry X-RateLimit-Limit/Remaining/Reset, as limiter "
    "libraries send them (--max-inflight's never do).",
)
@click.option(
    "--limit-change",
    default="none",
    show_default=True,
    metavar="AT:FACTOR",
    callback=parsed(sim.parse_limit_change),
    help="AT after the first call, multiply the rate limit (rate and burst) and --max-inflight "
    "by FACTOR, e.g. 30s:0.5 halves them; none: never.",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    metavar="F",
    help="Run F times faster: latency, hang, --limit-change time and Retry-After divided by F, "
    "rates multiplied by F (10: realistic latency's 40 s median becomes 4 s).",
)
@click.option(
    "--faults",
    default="",
    callback=parsed(sim.parse_faults),
    help=f"kind=rate pairs, e.g. 500=0.02,reset=0.01; all=R spreads R. Kinds: {', '.join(sim.FAULT_KINDS)}.",
)
@click.option(
    "--retry-after-mix",
    default="seconds=1,date=1,absent=1",
    show_default=True,
    callback=parsed(sim.parse_retry_after_mix),
    help="Weights of the Retry-After forms a 429 carries.",
)
@click.option(
    "--force",
    default="",
    callback=parsed(sim.parse_forced),
    help="requestId=kind pairs: that id always gets that outcome (kinds above, 400-403, ok).",
)
@click.option(
    "--agents",
    default="",
    callback=parsed(sim.parse_agents),
    help="The workspace's agents for agents/list and agents/get: ca_ID=TYPE pairs.",
)
@click.option(
    "--seed", default=0, show_default=True, help="Seed: the same seed gives the same faults."
)
@click.option(
    "--emails",
    default="2-3",
    show_default=True,
    callback=parsed(_emails_range),
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
@click.option(
    "--async-parallelism",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Async jobs running at once server-side (more wait in a queue).",
)
@click.option(
    "--async-submit-limit",
    default="none",
    show_default=True,
    callback=parsed(sim.parse_rate_limit),
    help="Token bucket of the async submit endpoint, RATE[:BURST] as --rate-limit.",
)
@click.option(
    "--async-status-limit",
    default="none",
    show_default=True,
    callback=parsed(sim.parse_rate_limit),
    help="Token bucket of the async status endpoint, RATE[:BURST] as --rate-limit.",
)
@click.option(
    "--async-retention",
    type=click.FloatRange(min=0),
    default=86400.0,
    show_default=True,
    help="Seconds a finished async job stays readable (then its handle gets a 404).",
)
@click.option(
    "--async-body",
    type=click.Choice(["any", "flat", "nested"]),
    default="any",
    show_default=True,
    help="Async body shapes accepted (the other gets a 400).",
)
@click.option(
    "--async-status-field/--no-async-status-field",
    default=False,
    show_default=True,
    help="Whether async status answers carry data.status (undocumented by Octave).",
)
@click.option(
    "--async-handle-field",
    default="requestId",
    show_default=True,
    help="The submit answer's field for the job handle ('' for none: a 200 without a handle).",
)
@click.option(
    "--async-repeat-handle-every",
    type=click.IntRange(min=0),
    default=0,
    help="Every Nth submit gets the handle of the one before it (0: never).",
)
@click.option(
    "--async-status-lag",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Seconds after a submit during which its status answers 404 (read-after-write lag).",
)
def simulate(
    host: str,
    port: int,
    latency: sim.Latency,
    rate_limit: sim.RateLimit | None,
    max_inflight: int | None,
    inflight_retry_after: bool,
    rate_limit_headers: bool,
    limit_change: tuple[float, float] | None,
    time_scale: float,
    faults: dict[str, float],
    retry_after_mix: sim.RetryAfterMix,
    force: dict[str, str],
    agents: dict[str, str],
    seed: int,
    emails: tuple[int, int],
    require_key_file: str | None,
    hang_seconds: float,
    async_parallelism: int,
    async_submit_limit: sim.RateLimit | None,
    async_status_limit: sim.RateLimit | None,
    async_retention: float,
    async_body: str,
    async_status_field: bool,
    async_handle_field: str,
    async_repeat_handle_every: int,
    async_status_lag: float,
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
            agents=agents,
            emails_min=emails[0],
            emails_max=emails[1],
            api_key=key,
            hang_seconds=hang_seconds,
            max_inflight=max_inflight,
            inflight_retry_after=inflight_retry_after,
            rate_limit_headers=rate_limit_headers,
            rate_limit_change=limit_change,
            time_scale=time_scale,
            async_parallelism=async_parallelism,
            async_submit_limit=async_submit_limit,
            async_status_limit=async_status_limit,
            async_retention=async_retention,
            async_body=async_body,
            async_status_field=async_status_field,
            async_handle_field=async_handle_field,
            async_repeat_handle_every=async_repeat_handle_every,
            async_status_lag=async_status_lag,
        )
        sock = bind_socket(host, port)
    except (ValueError, OSError) as exc:
        raise click.UsageError(str(exc)) from None
    url = f"http://{host}:{sock.getsockname()[1]}"
    click.echo(f"octave simulator listening on {url}", err=False)
    click.echo(f"  try: curl -s {url}/__simulator/stats", err=True)
    sys.stdout.flush()
    run_forever(sim.Simulator(config), sock)


@click.command()
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
    from octave_bulk.observe.log import configure_logging
    from octave_bulk.simulator.demo import run_demo

    configure_logging("text")
    click.echo(
        f"demo: {contacts} sample contacts -> the built-in Octave simulator (faults and a rate limit on)",
        err=True,
    )
    try:
        summary = run_async(lambda: run_demo(Path(out_dir), contacts, progress=progress))
    except OctaveBulkError as exc:
        fail(exc)
    print_summary(summary)
    click.echo(f"  next: octave-bulk status {Path(out_dir) / 'demo-results.ndjson'}", err=True)
    sys.exit(summary["exit_code"])


@click.command(cls=SectionedCommand)
@config_option
@key_file_option
@settings_options("base_url", "agent_type", "agent_oid")
@click.option(
    "--async",
    "check_async",
    is_flag=True,
    help="Also ask the async status endpoint about a made-up job (nothing submitted or paid).",
)
def doctor(
    config_file: str | None, api_key_file: str | None, check_async: bool, **flags: Any
) -> None:
    """Check the settings, the API key and the agent: workspace, credits, agent type.

    Lists the workspace's agents of --agent-type; with --agent, checks that it exists and is
    of that type; with --async, that the async status endpoint answers a made-up job handle
    as an unknown one; first, that every file the settings name (log, metrics, ledger) can
    be written. Exit 0: all good; 2: a settings problem, or an agent that does not
    exist or is of another type; 3: the key was refused; 1: the API could not be reached.
    """
    from octave_bulk.agents import get_agent
    from octave_bulk.errors import FatalApiError
    from octave_bulk.http.client import open_client
    from octave_bulk.run.guard import agent_problem
    from octave_bulk.state.preflight import settings_path_problems

    try:
        settings = load_settings(config_file, api_key_file, **flags)
    except OctaveBulkError as exc:
        fail(exc)
    bad_paths = settings_path_problems(settings)
    for bad_path in bad_paths:
        click.echo(f"config: {bad_path}", err=True)
    if bad_paths:
        click.echo(
            "  fix these paths (or remove them from the config); nothing was sent.", err=True
        )
        sys.exit(ExitCode.USAGE)
    click.echo(f"config: ok{f' ({config_file})' if config_file else ''}")
    click.echo(f"base url: {settings.base_url}")
    target = settings.agent_oid or settings.experiment_oid
    click.echo(f"target: {target or 'none set (give --agent to run)'}")
    if settings.api_key is None:
        click.echo("key: none - set OCTAVE_API_KEY or use --api-key-file", err=True)
        sys.exit(ExitCode.USAGE)
    click.echo(f"key: {settings.key_fingerprint()}")
    api_type = get_agent(settings.agent_type).api_type

    async def check() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | ApiError]:
        async with open_client(settings, read_timeout=settings.connect_timeout + 20) as client:
            key = await client.validate_key()
            listed = await client.list_agents(api_type)
            agent: dict[str, Any] | ApiError = {}
            if settings.agent_oid:
                try:
                    agent = await client.get_agent_info(settings.agent_oid)
                except ApiError as exc:  # a 404 here is an unknown agent, not a bad endpoint
                    if isinstance(exc, FatalApiError) and exc.status != 404:
                        raise
                    agent = exc
            if check_async:
                status = await client.poll(_DOCTOR_HANDLE)
                click.echo(_async_verdict(status.state, settings.async_status_param))
            return key, listed, agent

    try:
        payload, listed, agent = run_async(check)
    except FatalApiError as exc:
        click.echo(f"key: refused ({exc.message})", err=True)
        sys.exit(ExitCode.FATAL)
    except ApiError as exc:
        click.echo(f"API: cannot check the key and agents ({exc.message})", err=True)
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
    records = [r for r in listed.get("data") or [] if isinstance(r, dict)]
    click.echo(f"{settings.agent_type} agents ({api_type}) in this workspace: {len(records)}")
    for record in records[:20]:
        click.echo(f"  {record.get('oId')}  {record.get('name')}  {_cost(record.get('costToRun'))}")
    if not settings.agent_oid:
        return
    problem = agent_problem(settings.agent_oid, settings.agent_type, agent)
    if problem is None and isinstance(agent, ApiError):
        problem = f"cannot look {settings.agent_oid} up ({agent.message})"
    if problem:
        click.echo(f"agent: {problem}", err=True)
        sys.exit(ExitCode.USAGE)
    info = agent.get("data") if isinstance(agent, dict) else None
    info = info if isinstance(info, dict) else {}
    click.echo(f"agent: {settings.agent_oid} '{info.get('name')}' ({api_type}), "
               f"{_cost(info.get('costToRun'))}: ok")  # fmt: skip


def _cost(value: Any) -> str:
    """An agent's ``costToRun`` in words: a number of credits, or that the API gave none."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g} credit{'' if value == 1 else 's'} per run"
    return "cost per run not given by the API"


_DOCTOR_HANDLE = "asyncReqID_octave_bulk_doctor_probe"
"""The made-up job handle ``doctor --async`` asks the status endpoint about."""


def _async_verdict(state: str, param: str) -> str:
    """What the status endpoint's answer for a made-up handle says of the async settings."""
    if state == "expired":
        return f"async status endpoint: ok (a made-up job handle got 404 unknown; ?{param}=)"
    return (
        f"async status endpoint: answered a made-up job handle as {state!r} instead of 404: "
        f"check async_status_param ({param}) and async_status_path"
    )
