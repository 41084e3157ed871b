"""After a kill: the killed run's history row, corrected from what is durable.

A run's row in ``runs`` is updated every 5 s while it goes and completed at its end; a run
killed with -9 (a crash, a power cut) keeps its last update, which under-reports it for good:
``history`` and ``report`` then disagree with ``status`` (which counts the files) and with what
the server billed.

Contract: :func:`reconcile_killed_runs` is called by the next run of the same output, holding
its lock (so no other run of the output is alive) and after the ledger's index caught up with
the files (``state/index.py``: every line of the dead run is an ``outcomes`` row). For each
run of the output with no end recorded it sets, from the durable rows and lines:

- ``succeeded`` / ``failed``: its results and errors lines;
- ``credits``: the ``_metadata.usage`` of its results lines (read from the first of them), as
  ``status`` counts them, so the two agree to the credit;
- ``paid_calls``: its ``calls`` rows that reached a server, plus - for the latest dead run -
  the calls that were on the wire when it died (``outcome_unknown``: possibly paid);
- ``paid_twice``: from its ``calls`` rows;
- ``stop_reason`` ``killed`` and ``finished_at`` its last sign of life (``exit_code`` stays
  empty: the process never chose one).

The rows read before the run's death (``read``, ``rejected``...) keep their last update.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import orjson

from octave_bulk.agents.fields import credits_of
from octave_bulk.observe.log import log_event
from octave_bulk.state.history import RunHistory

__all__ = ["KILLED", "line_credits", "reconcile_killed_runs"]

KILLED = "killed"
"""The ``stop_reason`` of a run that died before its end (set by the next run)."""

_NEVER_SENT = ("connect", "local")  # attempts that never reached a server: not charged


def reconcile_killed_runs(
    history: RunHistory, output_id: int, results: Path, in_flight: int
) -> list[str]:
    """Correct the rows of the runs of ``results`` (the output) that have no end (see the
    module docstring); ``in_flight``: calls on the wire when the last of them died. Returns
    their run ids."""
    dead = history.query(
        "SELECT run_id FROM runs WHERE output = ? AND finished_at IS NULL ORDER BY started_at",
        (str(results.resolve()),),
    )
    corrected = []
    for number, (run_id,) in enumerate(dead, 1):
        latest = number == len(dead)
        outcomes = history.query(
            "SELECT state = 'ok', count(*), min(line_offset) FROM outcomes "
            "WHERE output_id = ? AND run_id = ? GROUP BY state = 'ok'",
            (output_id, run_id),
        )
        lines = {bool(ok): (count, first) for ok, count, first in outcomes}
        succeeded, first_result = lines.get(True, (0, None))
        failed = lines.get(False, (0, None))[0]
        (calls, twice) = history.query(
            "SELECT count(*), coalesce(sum(paid_twice), 0) FROM calls WHERE output_id = ? AND "
            "run_id = ? AND outcome NOT IN (?, ?)",
            (output_id, run_id, *_NEVER_SENT),
        )[0]
        fields = {
            "succeeded": succeeded,
            "failed": failed,
            "credits": _credits(results, run_id, first_result),
            "paid_calls": calls + (in_flight if latest else 0),
            "paid_twice": twice,
            "stop_reason": KILLED,
        }
        with history.transaction() as db:
            db.execute(
                "UPDATE runs SET succeeded = :succeeded, failed = :failed, credits = :credits, "
                "paid_calls = :paid_calls, paid_twice = :paid_twice, stop_reason = :stop_reason, "
                "finished_at = updated_at WHERE run_id = :run_id",
                fields | {"run_id": run_id},
            )
        log_event("killed_run_reconciled", level=logging.WARNING, killed_run=run_id, **fields)
        corrected.append(run_id)
    return corrected


def _credits(results: Path, run_id: str, first: int | None) -> float:
    """The credits of ``run_id``'s results lines, read from the first of them."""
    if first is None:
        return 0.0
    needle = f'"runId":"{run_id}"'.encode()
    total = 0.0
    with contextlib.suppress(FileNotFoundError), open(results, "rb") as handle:
        handle.seek(first)
        for line in handle:
            if needle in line[:300] and line.endswith(b"\n"):
                total += line_credits(line)
    return total


def line_credits(line: bytes) -> float:
    """The credits of one results line (its response's ``_metadata.usage``; 0 when it has
    none or is not a results line)."""
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
        return credits_of(orjson.loads(line)["response"]["_metadata"].get("usage"))
    return 0.0
