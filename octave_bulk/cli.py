"""The ``octave-bulk`` command line: parse options, call the library, map errors to exit codes.

Exit codes and user-facing error text are decided here and nowhere else (SPEC.md §7).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from octave_bulk import simulator as sim

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


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``octave-bulk`` console script."""
    return cli.main(args=argv, prog_name="octave-bulk")
