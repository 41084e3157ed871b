"""The store: the one contract the run, the sink, finish and the CLI name for what an output
holds and what its runs did (docs/design.md, section "The store and what is true for done").

A run opens its store with a :data:`StoreFactory` (an async context manager: opening it is the
claim on the output - today's run lock - and closing it releases the claim), then:

1. **reads at start** (:meth:`Store.load`): a :class:`StoreView` - which requestIds are done,
   which contacts failed for good, the async jobs still awaited, the calls whose outcome is
   unknown (on the wire when a run died) and the counts. The view carries no file path or
   byte size: the engine, admission and the re-send guard ask it questions, nothing more.
2. **claims in-flight work** (:meth:`Store.claims`): every call is claimed before it is sent
   and released once its outcome is durable; a claim left by a dead run is an outcome unknown
   (possibly paid) for the next one. Today: the slots of ``OUT.inflight``.
3. **records** each group the sink made durable (:meth:`Store.record`, in the group commit,
   after the fsync and before the outcomes are acknowledged): the view follows (a success is
   done from then on), and the store indexes the group's outcomes and calls.
4. **finishes** (:meth:`Store.finish`): what the next start needs to be quick (today: the
   index folded, the snapshot saved). Never worth the run: a store that cannot finish logs it.

Beside these, :attr:`Store.runs` is the run history (:class:`RunRecords`: a row per run, its
progress, the budget's holds) and :class:`ExportMarks` what ``export --new`` wrote out.

Methods that do I/O on the hot path (:meth:`Store.load`, :meth:`Store.record`,
:meth:`Claims.claim`, :meth:`Store.finish`) are async, so that a database can implement them.
:class:`RunRecords` methods are synchronous: the run calls them before the first call, at the
end, or from a worker thread (progress every few seconds, budget holds), never on the event
loop while calls are in flight - a database implements them with a blocking connection.

Today's implementation is the output's own files plus the SQLite ledger beside them
(``state/file_store.py``); ``tests/test_seam_ledger.py`` runs a whole run on an in-memory one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from octave_bulk.state.rows import CallRow, OutcomeRow

if TYPE_CHECKING:
    from pathlib import Path

    from octave_bulk.settings.model import Settings
    from octave_bulk.state.jobs import PendingJob
    from octave_bulk.state.paths import OutputPaths

__all__ = [
    "CallRow",
    "ClaimRider",
    "Claims",
    "ExportMarks",
    "FinishedRun",
    "Group",
    "OutcomeRow",
    "RidingClaims",
    "RunRecords",
    "Store",
    "StoreCounts",
    "StoreFactory",
    "StoreView",
    "TakesOverJobs",
]


@dataclass(frozen=True, slots=True)
class Group:
    """One group commit: outcomes durable in the output, and their calls.

    ``settled_jobs``: requestIds of async jobs whose outcome is in the group (their submit is
    settled); ``covered``: how far the output's results and errors are durable now (bytes:
    where the next start may resume indexing; a store without files may ignore it);
    ``lines``: when the sink was asked to keep them (a store that holds the bodies: the shared
    ledger), each outcome's line as written to the output (its JSON record; the secrets are
    scrubbed by whoever stores it), in the order of ``outcomes``; else empty.
    ``submitted``: the async jobs whose submit is in the group, their handles durable in the
    output's jobs file (a shared ledger commits them with the claims' move to submitted)."""

    outcomes: Sequence[OutcomeRow]
    calls: Sequence[CallRow]
    settled_jobs: Sequence[str] = ()
    covered: tuple[int, int] = (0, 0)
    lines: Sequence[bytes] = ()
    submitted: Sequence[PendingJob] = ()


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """What the output held at the start: results (one per done requestId that had a line),
    failed for good, failed and retryable, people done; and what the read repaired: bytes cut
    from a torn tail, lines that were not whole records (sent again)."""

    results: int = 0
    failed_permanent: int = 0
    failed_retryable: int = 0
    people: int = 0
    repaired_bytes: int = 0
    bad_lines: int = 0


class StoreView(Protocol):
    """What an output holds, read at the start of a run; it follows the run's outcomes as the
    store records them. Keys are ``idset.id_key`` of requestIds, persons ``id_key`` of person
    keys."""

    outcome_unknown: list[str]
    """requestIds on the wire when the last run died, not done since (possibly paid)."""
    awaiting: frozenset[str]
    """requestIds of async jobs submitted before and not settled: polled, never re-submitted."""
    lost_jobs: frozenset[str]
    """requestIds of async submits recorded with no outcome and no job handle (paid; not
    pollable): submitted again only with ``resubmit_expired``."""

    def is_done(self, key: int) -> bool:
        """Whether the requestId has a durable success."""
        ...

    def failed_for_good(self, key: int) -> bool:
        """Whether the requestId's last outcome was a permanent failure (and not done since)."""
        ...

    def failed_before(self, key: int) -> bool:
        """Whether the requestId's last outcome was a failure, retryable or permanent (and
        not done since): ``plan --list``'s "failed before"."""
        ...

    def latest_result(self, person: int) -> int | None:
        """Where the person's latest success is (a position :meth:`result_contacts` reads),
        None when the person has none."""
        ...

    def result_contacts(self, positions: Collection[int]) -> dict[int, dict[str, Any]]:
        """The contacts of the results at these positions (for the re-send guard's samples)."""
        ...

    def counts(self) -> StoreCounts:
        """The counts of the view (see :class:`StoreCounts`)."""
        ...

    def awaited_jobs(self) -> Sequence[PendingJob]:
        """The async jobs in :attr:`awaiting`, with what polling them needs."""
        ...


class Claims(Protocol):
    """Claims on in-flight work: a call is claimed before it is sent, released once its outcome
    is durable (or once it is known never to have reached a server). Claims carried from a dead
    run (its outcome unknown) are held until :meth:`settle`."""

    async def claim(self, request_id: str) -> int:
        """Claim a call about to be sent (durably enough that a kill leaves it claimed)."""
        ...

    def release(self, claim: int) -> None:
        """The call's outcome is durable: its claim goes (must not block the loop)."""
        ...

    def settle(self, request_id: str) -> None:
        """A carried id is settled for good (done, or failed for good): its claim goes."""
        ...

    def close(self) -> None:
        """The run's dispatch is over: claims still held stay for the next run."""
        ...


class ClaimRider(Protocol):
    """One call's claim that a limiter booking its turn in the same database may take in its
    own statement (one round trip for both; ``limits/base.py``, :class:`ClaimCarrier`)."""

    async def claim(self) -> int:
        """The claim's slot, right before the paid call: the carried claim's, or one claimed
        now (as :meth:`Claims.claim`; raises ``ClaimRefused`` alike)."""
        ...


@runtime_checkable
class RidingClaims(Protocol):
    """Claims whose claim may ride on a limiter's statement (the shared ledger's)."""

    def rider(self, request_id: str) -> ClaimRider:
        """The claim of a call about to be sent, not taken yet."""
        ...


class RunRecords(Protocol):
    """The run history: one row per run, and the ``--budget``'s holds (see the module
    docstring on why these methods are synchronous)."""

    def start(self, run_id: str, output: str, **fields: Any) -> None:
        """The run's row, before its first call (``fields``: its input, settings...)."""
        ...

    def update(self, run_id: str, **fields: Any) -> None:
        """Columns of the run's row (its counts while it goes, its end)."""
        ...

    def hold_calls(
        self, run_id: str, limit: int, since: float, batch: Callable[[int], int]
    ) -> tuple[int, int]:
        """Atomically: the paid calls since ``since`` of every run sharing the history (holds,
        and paid calls of runs without holds), and a hold of ``batch(limit - spent)`` calls
        when that is above 0. Returns (held now, spent before)."""
        ...

    def release_calls(self, run_id: str, calls: int) -> None:
        """Give back ``calls`` of the run's holds (held, never sent)."""
        ...

    def add_series(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Samples of the run's counters (``observe/series.py``), in one write."""
        ...


class ExportMarks(Protocol):
    """How far ``export --new`` has written an output out, per preset: (results lines, their
    bytes). The output is named by its results file, as every run of it names it."""

    def export_mark(self, output: Path, preset: str) -> tuple[int, int]:
        """The mark of the preset (0, 0 when none)."""
        ...

    def set_export_mark(self, output: Path, preset: str, lines: int, size: int) -> None:
        """Move the mark once the export is written (the mark before is kept for undo)."""
        ...

    def undo_export_mark(self, output: Path, preset: str) -> tuple[int, int] | None:
        """The mark one export back: (lines before, lines now), None when nothing to undo."""
        ...


@dataclass
class FinishedRun:
    """What :meth:`Store.finish` is given: the CRM ids of records rejected as a person seen
    before (person, ids), so that a write-back reaches every record of a person."""

    other_records: Sequence[tuple[int, list[str]]] = field(default_factory=list)


class Store(Protocol):
    """An output's store, open for one run (see the module docstring)."""

    @property
    def runs(self) -> RunRecords:
        """The run history."""
        ...

    async def load(self) -> StoreView:
        """Read what the output holds (repairing what a kill tore, when the store can)."""
        ...

    def claims(self, carry: Collection[str]) -> Claims:
        """The run's claims, holding ``carry`` (the view's ``outcome_unknown``) from the start."""
        ...

    async def record(self, group: Group) -> None:
        """A durable group (see :class:`Group`): the view follows; a store that cannot index
        it now keeps it for the next group (never worth the run)."""
        ...

    async def finish(self, run: FinishedRun) -> None:
        """The run ended: what the next start needs (never worth the run)."""
        ...


@runtime_checkable
class TakesOverJobs(Protocol):
    """A store shared by several runs at once (the shared ledger): async jobs another run
    submitted may be left to nobody while this run goes on (that run left, or died)."""

    async def adopt_job(self, handle: str) -> PendingJob | None:
        """The job of ``handle`` (a callback named it), now this run's to poll; None when it is
        not a job that nobody polls."""
        ...

    async def watch_jobs(self, add: Callable[[PendingJob], None]) -> None:
        """Until cancelled: hand ``add`` each job left to nobody (its run died or left), now
        this run's to poll."""
        ...


StoreFactory = Callable[["OutputPaths", "Settings"], AbstractAsyncContextManager[Store]]
"""Opens an output's store for one run: entering claims the output (raises ``StateError``
naming who holds it), leaving releases it. ``run_batch(..., ledger=...)`` takes one."""
