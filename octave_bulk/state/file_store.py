"""The file store: the :class:`~octave_bulk.state.store.Store` of an output's own files and the
SQLite ledger beside them - the first implementation of the store contract, and the default.

- Opening it (:func:`open_file_store`, the default :data:`~octave_bulk.state.store.
  StoreFactory`) takes the output's run lock (``OUT.lock``, ``state/lock.py``), gives a
  ``.jsonl`` output's side files their own names, and opens the ledger database
  (``OUT.ledger.sqlite`` or the ``ledger`` setting, ``state/history.py``).
- :meth:`FileStore.load` reads the files (``state/file_view.py``: repaired, caught up with the
  index), the awaited async jobs (``state/jobs.py``) and corrects the history rows of runs
  killed before their end (``state/reconcile.py``).
- Claims are the slots of ``OUT.inflight`` (``state/inflight.py``).
- :meth:`FileStore.record` follows each group in the view and indexes it in the ledger
  (``state/index.py``) on a worker thread; a group the ledger cannot take (locked past the
  busy timeout) goes with the next one.
- :meth:`FileStore.finish` folds the index and saves the start-up snapshot.

The NDJSON files are the source of truth for "done": the sink writes and fsyncs them before
anything is recorded here, and ``octave-bulk ledger rebuild`` rebuilds the index from them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from octave_bulk.errors import StateError
from octave_bulk.observe.log import log_event
from octave_bulk.state.file_view import LedgerState, load_output
from octave_bulk.state.files import NdjsonAppender
from octave_bulk.state.history import RunHistory
from octave_bulk.state.idset import id_key
from octave_bulk.state.index import OutputIndex
from octave_bulk.state.inflight import InflightSlots
from octave_bulk.state.jobs import PendingJob, load_jobs, settled_line
from octave_bulk.state.lock import RunLock
from octave_bulk.state.paths import OutputPaths, migrate_jsonl_side_files
from octave_bulk.state.reconcile import reconcile_killed_runs
from octave_bulk.state.rows import CallRow, OutcomeRow
from octave_bulk.state.store import FinishedRun, Group

if TYPE_CHECKING:
    from octave_bulk.settings.model import Settings

__all__ = ["FileClaims", "FileStore", "open_file_store", "open_ledger"]


class FileClaims:
    """Claims as the fixed-size slots of ``OUT.inflight`` (written before the call is sent:
    a kill -9 leaves the slot, the next run reads it as an outcome unknown)."""

    def __init__(self, slots: InflightSlots) -> None:
        self._slots = slots

    async def claim(self, request_id: str) -> int:
        return self._slots.claim(request_id)

    def release(self, claim: int) -> None:
        self._slots.release(claim)

    def settle(self, request_id: str) -> None:
        self._slots.settle(request_id)

    def close(self) -> None:
        """fsync the slots; the file goes when none is held."""
        self._slots.sync()
        self._slots.close()


class FileStore:
    """The store of one output's files and ledger, open for one run (see the module
    docstring); build it with :func:`open_file_store`."""

    def __init__(self, paths: OutputPaths, history: RunHistory, *, indexed: bool) -> None:
        self.paths, self.history, self.indexed = paths, history, indexed
        self.index: OutputIndex | None = None
        self.state: LedgerState | None = None
        self._unindexed: tuple[list[OutcomeRow], list[CallRow], list[str]] = ([], [], [])

    @property
    def runs(self) -> RunHistory:
        """The run history: the ledger database's ``runs`` and ``budget_holds``."""
        return self.history

    async def load(self) -> LedgerState:
        """Read the output (repaired, its index caught up), its awaited jobs; correct the rows
        of runs killed before their end."""
        paths, history = self.paths, self.history
        index = self.index = OutputIndex(history, paths.results) if self.indexed else None
        state = self.state = load_output(paths, index)
        state.jobs = _carried_jobs(paths, state, index)
        if index is not None and index.output_id is not None:  # a killed run's row, made true
            reconcile_killed_runs(
                history, index.output_id, paths.results, len(state.outcome_unknown)
            )
        if state.results.bad_lines:
            log_event(
                "corrupt_results",
                level=logging.WARNING,
                lines=state.results.bad_lines,
                action="not counted as done (sent again); copied to the quarantine file",
                quarantine=str(paths.corrupt),
            )
        return state

    def claims(self, carry: Collection[str]) -> FileClaims:
        """The run's slots in ``OUT.inflight`` (emptied, then holding ``carry``)."""
        return FileClaims(InflightSlots(self.paths.inflight, carry=carry))

    async def record(self, group: Group) -> None:
        """The group's outcomes in the view (for the snapshot), then its rows in the index."""
        state = self._loaded()
        for person, request_id, outcome, _, _ in group.outcomes:
            ok, retryable = outcome == "ok", outcome == "retryable"
            state.settle(request_id, person, ok=ok, retryable=retryable)
        state.results.size, state.errors.size = group.covered
        if self.index is None:
            return
        contacts, calls, settled = self._unindexed
        contacts.extend(group.outcomes)
        calls.extend(group.calls)
        settled.extend(group.settled_jobs)
        await anyio.to_thread.run_sync(self._index_rows, group.covered)

    def _index_rows(self, covered: tuple[int, int]) -> None:
        if self.index is None:
            return
        contacts, calls, settled = self._unindexed
        try:
            self.index.record(contacts, calls, covered, settled)
        except StateError as exc:  # the files are durable; the rows go with the next group
            log_event("ledger_not_updated", level=logging.WARNING, error=str(exc))
            return
        self._unindexed = ([], [], [])

    async def finish(self, run: FinishedRun) -> None:
        """Fold the index, keep the other records' CRM ids, save the snapshot the next start
        reads instead of the files; a ledger that cannot take them is logged."""
        index, state = self.index, self._loaded()
        if index is None:
            return
        try:
            index.fold()
            index.add_other_records(run.other_records)
            index.save_snapshot(state.snapshot())
        except StateError as exc:
            log_event("ledger_not_updated", level=logging.WARNING, error=str(exc))

    def _loaded(self) -> LedgerState:
        if self.state is None:
            raise StateError("the store was not loaded")
        return self.state


@contextlib.contextmanager
def open_ledger(
    results: Path, ledger: Path | None = None, *, readonly: bool = False
) -> Iterator[RunHistory]:
    """The ledger database of the output ``results`` (``ledger``: a shared one, when given),
    for the commands that read its history or move its export marks.

    Raises:
        StateError: not a ledger, newer than this version, locked, or (``readonly``) none yet.
    """
    with RunHistory.open(ledger or OutputPaths.for_output(results).ledger, readonly=readonly) as db:
        yield db


@contextlib.asynccontextmanager
async def open_file_store(paths: OutputPaths, settings: Settings) -> AsyncIterator[FileStore]:
    """The default store factory: the output's run lock, then its ledger (see the module
    docstring).

    Raises:
        StateError: another run holds the lock, or the ledger cannot be opened.
    """
    lock = RunLock(paths.lock)
    try:
        lock.acquire()
    except OSError as exc:
        raise StateError(f"{paths.lock}: cannot take the run lock: {exc.strerror}") from None
    try:
        migrate_jsonl_side_files(paths)
        ledger = settings.ledger or paths.ledger
        with RunHistory.open(ledger, timeout=settings.ledger_timeout) as history:
            yield FileStore(paths, history, indexed=settings.ledger_index)
    finally:
        lock.release()


def _carried_jobs(
    paths: OutputPaths, state: LedgerState, index: OutputIndex | None = None
) -> list[PendingJob]:
    """The async jobs earlier runs left awaiting (their contacts are not submitted again); a
    job whose result is already durable gets its lost ``settled`` line now. With the ledger's
    ``index``, ``state.lost_jobs`` gets the submits it recorded that have neither an outcome
    nor a line in the jobs file (``state/jobs.py``'s docstring says why they are lost)."""
    awaited: list[PendingJob] = []
    done: list[PendingJob] = []
    loaded = load_jobs(paths.jobs, quarantine=paths.corrupt) if paths.jobs.exists() else []
    for job in loaded:
        (done if id_key(job.request_id) in state.done else awaited).append(job)
    if done:
        appender = NdjsonAppender(paths.jobs)
        for job in done:
            appender.write(settled_line(job.request_id, job.handle, "ok"))
        appender.close()
    state.awaiting = frozenset(job.request_id for job in awaited)
    # A submit whose handle line made it to the file before the kill is known, not unknown
    # (its in-flight slot is released only once the line is fsynced).
    state.outcome_unknown = [rid for rid in state.outcome_unknown if rid not in state.awaiting]
    if index is not None:
        state.lost_jobs = frozenset(
            rid
            for rid in index.unsettled_submits()
            if rid not in state.awaiting and id_key(rid) not in state.done
        )
        if state.lost_jobs:
            log_event(
                "jobs_lost",
                level=logging.WARNING,
                count=len(state.lost_jobs),
                request_ids=sorted(state.lost_jobs)[:20],
                action="paid submits with no result and no line in the jobs file: not "
                "submitted again; --resubmit-expired pays for them again",
            )
    return awaited
