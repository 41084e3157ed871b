"""What every command shares: loading settings, running async code, and turning library
errors and summaries into messages and exit codes (the only place that does)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
import click

from octave_bulk.errors import (
    ConfigError,
    ErrorKind,
    ExitCode,
    FatalApiError,
    InputError,
    OctaveBulkError,
    StateError,
)
from octave_bulk.observe.words import counted

if TYPE_CHECKING:
    from octave_bulk.settings.model import Settings

__all__ = [
    "fail",
    "load_settings",
    "notify_end",
    "notify_refusal",
    "parsed",
    "print_probe",
    "print_summary",
    "run_async",
    "summary_lines",
]

T = TypeVar("T")

_HINTS = {
    ConfigError: "fix the setting and run again; nothing was sent.",
    InputError: "fix the input file and try again; nothing was sent or changed.",
    StateError: "nothing already written is lost; run the same command again once fixed.",
}
_SENDING = frozenset({"run", "pipeline", "collect", "probe", "demo"})
"""The commands that send paid calls: only their errors say that nothing was sent."""
_QUIET_HINTS = {
    ConfigError: "fix it and run the command again.",
    InputError: "fix the file named above and run the command again.",
}
"""The hints of the other commands (export, status, history, report, plan ...): no run's
trailer where no run could have sent anything."""


def parsed(parser: Callable[[str], T]) -> Callable[[click.Context, click.Parameter, str], T]:
    """A click callback that turns a parser's ValueError into a usage error (exit 2)."""

    def callback(_ctx: click.Context, param: click.Parameter, value: str) -> T:
        try:
            return parser(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param=param) from None

    return callback


def run_async(function: Callable[[], Any]) -> Any:
    """Run a coroutine function on uvloop when it is installed (measured faster), else asyncio."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return anyio.run(function)
    return anyio.run(function, backend_options={"use_uvloop": True})


def load_settings(config_file: str | None, api_key_file: str | None, **flags: Any) -> Settings:
    """Settings from the command's flags (None: not given), the environment and the file."""
    from octave_bulk.settings.model import Settings

    for name in ("map", "fail_on"):
        if flags.get(name) == ():
            flags[name] = None  # a repeatable option given no times: not given
    return Settings.load(config_file, api_key_file=api_key_file, **flags)


def fail(exc: OctaveBulkError) -> NoReturn:
    """Print a library error with the next step to take, and exit 2 (nothing was sent; 3 when
    the API refused the run before its first call: the key, the credits) - or 6 when a file
    failed after calls were sent (they may have been paid)."""
    click.echo(f"error: {exc}", err=True)
    sent = getattr(exc, "calls_sent", 0)
    if sent:
        click.echo(
            f"  {sent} calls were sent before this (they may have been paid, and every "
            "answer written is kept): fix the cause, then run the same command to resume.",
            err=True,
        )
        sys.exit(ExitCode.FILE_ERROR)
    context = click.get_current_context(silent=True)
    hints = _HINTS if context is None or context.info_name in _SENDING else _QUIET_HINTS
    hint = next((h for cls, h in hints.items() if isinstance(exc, cls)), "")
    if hint:
        click.echo(f"  {hint}", err=True)
    sys.exit(ExitCode.FATAL if isinstance(exc, FatalApiError) else ExitCode.USAGE)


def _next_step(summary: Mapping[str, Any]) -> str | None:
    """What to do after a run that did not finish cleanly."""
    code = summary.get("exit_code")
    if code == ExitCode.FATAL:
        kind = summary.get("fatal_kind")
        if kind == ErrorKind.BAD_ENDPOINT:
            return "check --base-url and --agent, then run the same command again to resume."
        return "fix the key or credits, then run the same command again to resume."
    if code == ExitCode.FILE_ERROR:
        return "fix the file named above, then run the same command again to resume."
    if code in (ExitCode.BREAKER, ExitCode.MAX_CALLS, ExitCode.INTERRUPTED):
        return "run the same command again to resume where it stopped."
    return None


def notify_end(settings: Settings, summary: Mapping[str, Any]) -> None:
    """The end-of-run lines posted to the ``notify`` URLs (``run``, ``worker``)."""
    if settings.notify:
        from octave_bulk.observe.notify import notify

        body = "\n".join(summary_lines(summary))
        notify(settings.notify, settings.notify_on, summary, body)


def notify_refusal(settings: Settings, exc: OctaveBulkError) -> None:
    """A run refused before its first call (exit 2 or 3), as a notification."""
    if not settings.notify:
        return
    from octave_bulk.observe.notify import notify

    code = ExitCode.FATAL if isinstance(exc, FatalApiError) else ExitCode.USAGE
    summary = {"exit_code": int(code), "stop_reason": "refused before the first call"}
    notify(settings.notify, settings.notify_on, summary, f"error: {exc}")


def print_summary(summary: Mapping[str, Any]) -> None:
    """The end-of-run lines on stderr."""
    click.echo("\n".join(summary_lines(summary)), err=True)


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The end-of-run lines (also the body of a notification)."""
    counts = summary.get("counts", {})
    out = summary.get("outputs", {})
    lines = [
        f"exit {summary.get('exit_code')} ({summary.get('stop_reason') or 'finished'}) "
        f"in {summary.get('wall_seconds')} s",
        "  " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in _shown_counts(counts) if v),
        f"  calls sent {summary.get('paid_calls')} (possibly charged; answered "
        f"{(summary.get('calls') or {}).get('answered', '-')}), credits {summary.get('credits')}, "
        f"latency p50 {_seconds(summary.get('latency_ms', {}).get('p50'))}",
    ]
    if summary.get("stop_detail"):  # right under the exit line: why it stopped
        lines.insert(1, f"  why: {summary['stop_detail']}")
    elif (summary.get("exit_rule") or {}).get("reason"):  # which rule gave a finished run its code
        lines.insert(1, f"  why: {summary['exit_rule']['reason']}")
    if summary.get("fatal_error"):
        lines.append(f"  stopped: {summary['fatal_error']}")
    if summary.get("where_warning"):
        lines.append(f"  warning: {summary['where_warning']}")
    if summary.get("credits_not_checked"):
        lines.append(
            f"  warning: credits not checked before the run: {summary['credits_not_checked']}"
        )
    if summary.get("file_error"):
        lines.append(f"  stopped: {summary['file_error']}")
    if summary.get("input_error"):
        lines.append(
            f"  stopped: {summary['input_error']}; fix the input, then run again to resume."
        )
    lines.append(_throughput_line(summary))
    jobs = summary.get("async_jobs")
    if jobs:
        awaiting = jobs.get("awaiting_result") or 0
        lines.append(
            f"  async: submitted {jobs.get('submitted')}, polls {jobs.get('polls')}, "
            f"awaiting {awaiting}"
            + (
                f" (octave-bulk collect {out.get('results') or 'OUT'} polls them, as does the "
                "next run)"
                if awaiting
                else ""
            )
        )
    if out:
        lines.append(f"  results: {out.get('results')}")
        lines.append(f"  errors:  {out.get('errors')}   rejects: {out.get('rejects')}")
        lines.append(f"  summary: {out.get('summary')}")
    limits = summary.get("limits") or {}
    if limits.get("suggested_flags"):
        lines.append(
            f"  limits found: {limits['suggested_flags']} (remembered for the next run on "
            "this output)"
        )
    step = _next_step(summary)
    if step:
        lines.append(f"  {step}")
    if out:
        lines.append(
            f"  report: octave-bulk report {out.get('results')} (charts, as one HTML file)"
        )
    return lines


def _shown_counts(counts: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The counts as printed: duplicates inside "rejected", as validate and status count;
    rows ``--where`` leaves out apart from them."""
    shown = {k: v for k, v in counts.items() if k not in ("duplicate", "filtered_out")}
    duplicates = counts.get("duplicate", 0)
    if duplicates:
        shown["rejected"] = (
            f"{counts.get('rejected', 0) + duplicates} ({counted(duplicates, 'duplicate')})"
        )
    if counts.get("filtered_out"):
        shown["left out by --where"] = counts["filtered_out"]
    return list(shown.items())


def _throughput_line(summary: Mapping[str, Any]) -> str:
    """Successes per second, and the contacts a next run would still send."""
    counts = summary.get("counts", {})
    remaining = counts.get("not_sent", 0) + counts.get("failed_retryable", 0)
    unread = ""  # and so when every row was read, whatever stopped the run
    if summary.get("input_read_whole"):
        pass
    elif summary.get("stop_reason"):
        unread = " and the input rows not read yet"
    elif (summary.get("settings") or {}).get("limit") is not None:
        unread = " and the input rows past --limit"
    throughput = summary.get("throughput_per_second")
    rate = "-" if throughput is None else f"{throughput:,.1f}/s"
    return f"  throughput {rate}, remaining {counted(remaining, 'contact')}{unread}"


def _seconds(milliseconds: float | None) -> str:
    if milliseconds is None:
        return "-"
    return f"{milliseconds / 1000:.2f} s" if milliseconds >= 1000 else f"{milliseconds:.0f} ms"


def print_probe(summary: Mapping[str, Any]) -> None:
    """What a probe found, on stdout."""
    limits = summary.get("limits") or {}
    latency = summary.get("latency_ms") or {}
    rate_at, cap_at = limits.get("rate_limited_at"), limits.get("concurrency_limited_at")
    lines = [
        f"calls: {summary.get('paid_calls')}, 429s: {limits.get('refusals_429', 0)}",
        f"latency: p50 {_seconds(latency.get('p50'))}, p95 {_seconds(latency.get('p95'))}",
        "rate limit: "
        + (
            f"429s began at {rate_at:g}/s; holds at {limits.get('rate')}/s"
            if rate_at
            else "none met"
        ),
        "in-flight cap: "
        + (
            f"429s began at {cap_at} in flight; holds at {limits.get('window')}"
            if cap_at
            else "none met"
        ),
        f"flags: {limits.get('suggested_flags') or '(none needed)'}",
    ]
    click.echo("\n".join(lines))
