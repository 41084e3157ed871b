"""The file store's view: what an output's files (and the ledger's snapshot of them) hold at
the start of a run.

Contract: :func:`load_output` returns a :class:`LedgerState`, the :class:`~octave_bulk.state.
store.StoreView` of the file store: the done-set (keys of the requestIds with a durable
success), the contacts whose last outcome was a failure (permanent or retryable, and not done
since), the calls that were on the wire when the last run died (``OUT.inflight``) and, once
the store has read the jobs file, the async jobs awaited. The NDJSON results file is the
source of truth for "done"; the ledger database only indexes it (docs/design.md, section
"The store and what is true for done").

:class:`NdjsonLedger` reads the files with the scanners of ``state/scan.py``. Given the ledger
database's index (``state/index.py``), it starts from the snapshot the last run saved and reads
only the lines written since, and it indexes the lines the database lacks (:class:`~octave_bulk.
state.index.CatchUp`). The state's paths and byte sizes stay in this module and the file
store: the run sees only the view.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.errors import StateError
from octave_bulk.state.files import repair_tail
from octave_bulk.state.history import RunHistory
from octave_bulk.state.idset import IdSet, id_key
from octave_bulk.state.index import CatchUp, OutputIndex, Snapshot
from octave_bulk.state.inflight import InflightSlots
from octave_bulk.state.jobs import PendingJob
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.scan import (
    ErrorsScan,
    ResultsScan,
    complete_lines,
    scan_errors,
    scan_results,
)
from octave_bulk.state.store import StoreCounts

__all__ = ["LedgerState", "NdjsonLedger", "load_output", "read_state"]


@dataclass
class LedgerState:
    """What an output's files hold at the start of a run: the file store's
    :class:`~octave_bulk.state.store.StoreView`."""

    results: ResultsScan
    errors: ErrorsScan
    outcome_unknown: list[str]
    """requestIds that were on the wire when the last run died and are not done since."""
    from_snapshot: bool = False
    """Whether the ledger's snapshot spared the scan of the files' indexed part."""
    awaiting: frozenset[str] = frozenset()
    """requestIds of async jobs submitted by an earlier run whose result is not in yet: they
    are polled, never submitted again (``state/jobs.py``)."""
    lost_jobs: frozenset[str] = frozenset()
    """requestIds of async submits the ledger recorded with no outcome and no line in the
    jobs file (it was damaged): paid, not pollable, submitted again only with
    ``resubmit_expired`` (``state/jobs.py``)."""
    jobs: Sequence[PendingJob] = field(default_factory=list)
    """The jobs of :attr:`awaiting`, as the jobs file has them (set by the file store)."""

    @property
    def done(self) -> IdSet:
        """Keys of the requestIds with a durable success."""
        return self.results.done

    def is_done(self, key: int) -> bool:
        """Whether the requestId (its key) has a durable success."""
        return key in self.results.done

    def failed_for_good(self, key: int) -> bool:
        """Whether the requestId's last outcome was a permanent failure."""
        return key in self.errors.permanent

    def failed_before(self, key: int) -> bool:
        """Whether the requestId's last outcome was a failure (retryable or permanent)."""
        return key in self.errors.retryable or key in self.errors.permanent

    def latest_result(self, person: int) -> int | None:
        """The results line (1-based) of the person's latest success, None when none."""
        return self.results.persons.get(person) or None

    def result_contacts(self, positions: Collection[int]) -> dict[int, dict[str, Any]]:
        """The contacts of these results lines (1-based numbers), read in one pass."""
        wanted, found = set(positions), dict[int, dict[str, Any]]()
        if not wanted:
            return found
        for number, line in enumerate(complete_lines(self.results.path), 1):
            if number in wanted:
                with contextlib.suppress(orjson.JSONDecodeError):
                    record = orjson.loads(line)
                    contact = record.get("contact") if isinstance(record, dict) else None
                    if isinstance(contact, dict):
                        found[number] = contact
                if len(found) == len(wanted):
                    break
        return found

    def counts(self) -> StoreCounts:
        """The counts of the view."""
        results, errors = self.results, self.errors
        return StoreCounts(
            results.lines,
            len(errors.permanent),
            len(errors.retryable),
            len(results.persons),
            results.repaired_bytes,
            results.bad_lines,
        )

    def awaited_jobs(self) -> Sequence[PendingJob]:
        """The jobs awaited (see :attr:`jobs`)."""
        return self.jobs

    def settle(self, request_id: str, person: int, *, ok: bool, retryable: bool) -> None:
        """A run's outcome, durable in the files: the state follows (for the snapshot)."""
        key, errors = id_key(request_id), self.errors
        errors.permanent.discard(key)
        errors.retryable.discard(key)
        if ok:
            self.results.lines += 1
            self.results.done.add(key)
            self.results.persons.put(person, self.results.lines)
        else:
            (errors.retryable if retryable else errors.permanent).add(key)

    def snapshot(self) -> Snapshot:
        """The state as the ledger saves it for the next start."""
        results, errors = self.results, self.errors
        return Snapshot(
            results.size,
            results.lines,
            results.bad_lines,
            errors.size,
            _tail(results.path, results.size),
            results.done,
            results.persons,
            errors.permanent,
            errors.retryable,
        )


def _tail(path: Path, size: int) -> bytes:
    """The (up to) 64 bytes before ``size``: what a snapshot checks is still there."""
    if size == 0 or not path.exists():
        return b""
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 64))
        return handle.read(min(64, size))


def read_state(paths: OutputPaths, ledger: Path | None = None) -> LedgerState:
    """The state for readers that must not write (status, dry run, validate): from the
    ledger's snapshot when there is a usable one, else from the files alone."""
    path = ledger or paths.ledger
    if path.exists():
        with contextlib.suppress(StateError), RunHistory.open(path, readonly=True) as history:
            return load_output(paths, OutputIndex(history, paths.results, readonly=True), False)
    return load_output(paths, None, False)


def load_output(paths: OutputPaths, index: OutputIndex | None, repair: bool = True) -> LedgerState:
    """The output's state (see the module docstring); ``repair=False`` for readers that must
    not write (dry run, status)."""
    return NdjsonLedger(paths, index).load(repair=repair)


class NdjsonLedger:
    """The state read from the output's own files (results, errors, in-flight slots), with
    the ledger database's snapshot and index when given (``index``)."""

    def __init__(self, paths: OutputPaths, index: OutputIndex | None = None) -> None:
        self.paths, self.index = paths, index

    def load(self, *, repair: bool = True) -> LedgerState:
        """Scan the files (see the module docstring): only what lies past a valid snapshot,
        and index what lies past the index's coverage (unless ``repair`` is false)."""
        paths, index = self.paths, self.index
        covered = index.coverage() if index is not None else (0, 0)
        catch_up, repaired = None, 0
        if index is not None and repair:
            repaired = repair_tail(paths.results)
            repair_tail(paths.errors)
            catch_up = CatchUp(index, covered, (_size(paths.results), _size(paths.errors)))
            covered = catch_up.covered  # (0, 0) after a reset
        base = _usable(index.snapshot() if index else None, paths, covered)
        results_base = errors_base = None
        if base is not None:
            results_base = ResultsScan(
                base.done,
                base.results_lines,
                0,
                base.bad_lines,
                base.persons,
                paths.results,
                base.results_bytes,
            )
            errors_base = ErrorsScan(base.permanent, base.retryable, base.errors_bytes)
        results = scan_results(
            paths.results,
            repair=repair and catch_up is None,
            base=results_base,
            on_row=catch_up.add_result if catch_up else None,
            quarantine=paths.corrupt if repair else None,
        )
        if catch_up is not None:
            catch_up.results_read(results.size)
            results.repaired_bytes = repaired
        errors = scan_errors(
            paths.errors,
            results.done,
            repair=repair and catch_up is None,
            base=errors_base,
            on_row=catch_up.add_error if catch_up else None,
        )
        if catch_up is not None:
            catch_up.finish(errors.size)
        unknown = [
            rid
            for rid in InflightSlots.leftovers(paths.inflight)
            if id_key(rid) not in results.done
        ]
        return LedgerState(results, errors, unknown, from_snapshot=base is not None)


def _usable(
    snapshot: Snapshot | None, paths: OutputPaths, covered: tuple[int, int]
) -> Snapshot | None:
    """The snapshot if the files still hold what it covers (same bytes at its end) and the
    index covers it too (else the scan must read the lines the index lacks)."""
    if snapshot is None:
        return None
    for path, size, rows in (
        (paths.results, snapshot.results_bytes, covered[0]),
        (paths.errors, snapshot.errors_bytes, covered[1]),
    ):
        if size > rows or (size and (not path.exists() or path.stat().st_size < size)):
            return None
    if _tail(paths.results, snapshot.results_bytes) != snapshot.tail:
        return None
    return snapshot


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
