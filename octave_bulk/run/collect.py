"""``octave-bulk collect OUT``: poll the async jobs an output awaits and write their results.

Contract: a collect is a run of the output with nothing to submit - :func:`collect_jobs`
runs :func:`~octave_bulk.run.engine.run_batch` on an empty input (a CSV header and no row,
in a temporary folder; no resume cursor is kept for it), so it has every guarantee a run has: the run lock,
the sink's group commit, the key scrubbed, the deadlines and ``job_timeout``, the history
row, the summary and the exit codes. It never submits anything: with no contact read, the
only calls are the status polls of the jobs in ``OUT.jobs.ndjson`` (a sync run after an
async one polls them the same way, ``run/jobs.py``). A kill -9 during a collect loses
nothing: each result is durable before its job's ``settled`` line, and the next collect (or
run) polls what is left.

Which API and agent the jobs belong to comes from the output's last summary
(:func:`remembered_settings`: ``OUT.summary.json``'s settings, which a collect writes again),
unless a flag, the environment or the config file says otherwise.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import httpx
import orjson

from octave_bulk.errors import ConfigError
from octave_bulk.run.summary import RunSummary
from octave_bulk.settings.model import Settings
from octave_bulk.state.paths import OutputPaths

__all__ = ["REMEMBERED", "collect_jobs", "remembered_settings"]

REMEMBERED = (
    "base_url", "agent_type", "agent_oid", "experiment_oid", "key", "ledger", "ledger_index",
    "mode", "async_body", "async_path", "async_status_path", "async_status_param",
    "async_handle_fields", "resubmit_expired", "poll_rate", "poll_concurrency",
    "poll_interval_min", "poll_interval_max", "expire_after", "job_timeout",
    "job_timeout_floor", "max_response_bytes", "timeout", "connect_timeout", "fail_on",
    "output_format",
)  # fmt: skip
"""The settings a collect takes from the output's last summary: whom the jobs belong to, how
they are polled, what fails the run."""


def remembered_settings(output: str | Path) -> dict[str, Any]:
    """The :data:`REMEMBERED` settings of the output's last run (empty without a summary).

    Raises:
        ConfigError: the output has no jobs file: no async run wrote to it.
    """
    paths = OutputPaths.for_output(output)
    if not paths.jobs.exists():
        raise ConfigError(
            f"{paths.results}: no async jobs recorded ({paths.jobs.name} is missing); collect "
            "polls the jobs of a `run --mode async` (--detach) on this output"
        )
    try:
        document = orjson.loads(paths.summary.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    saved = document.get("settings") if isinstance(document, dict) else None
    if not isinstance(saved, dict):
        return {}
    return {name: saved[name] for name in REMEMBERED if saved.get(name) is not None}


async def collect_jobs(
    output: str | Path,
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    handle_signals: bool = False,
) -> RunSummary:
    """Poll every job ``output`` awaits until each has its outcome or is given up on (see
    the module docstring); returns the run's summary.

    Raises:
        ConfigError, StateError: before anything was polled (as :func:`run_batch`).
    """
    from octave_bulk.run.engine import run_batch

    remembered_settings(output)  # no jobs file: nothing to collect (exit 2)
    plain = {
        "input_format": "csv", "detach": False, "where": None, "limit": None, "map": (),
        "profile": "generic", "context_from": (), "skip_lines": None, "delimiter": None,
        "encoding": None, "context_templates": {}, "instruction_templates": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="octave-bulk-collect-") as folder:
        empty = Path(folder, "collect.csv")
        empty.write_bytes(b"email\n")  # noqa: ASYNC240 - a header and no row: nothing to submit
        return await run_batch(
            empty,
            output,
            settings.model_copy(update=plain),
            transport=transport,
            handle_signals=handle_signals,
            collect=True,
        )
