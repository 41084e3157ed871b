"""What the shared ledger holds for a job when a run starts (the store contract's view).

Contract: :func:`read_view` reads the job's settled contacts in settling order into a
:class:`PgView` (a :class:`~octave_bulk.state.store.StoreView`): done, failed for good, failed
before and the latest result per person, kept up to date by the run's own records
(``state/pg/store.py``). The results' bodies are in ``ob_contact`` but are not read back at
start: the re-send guard samples no contacts on the shared ledger. ``jobs`` are the submitted
contacts this worker took over to poll (``state/pg/handles.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from octave_bulk.state.idset import id_key
from octave_bulk.state.pg.dsn import PgConnection
from octave_bulk.state.store import StoreCounts

if TYPE_CHECKING:
    from octave_bulk.state.jobs import PendingJob

__all__ = ["PgView", "read_view"]


class PgView:
    """What the shared ledger holds for the job when the run starts; it follows the run's
    records. Keys are ``id_key`` of requestIds and person keys."""

    def __init__(self, rows: Sequence[tuple[str, str, str | None, int | None]]) -> None:
        self.done: set[int] = set()
        self.permanent: set[int] = set()
        self.failed: set[int] = set()  # the last outcome a failure (retryable or permanent)
        self.persons: dict[int, int] = {}
        for request_id, state, person, settled in rows:
            self._follow(id_key(request_id), state, person, settled or 0)
        self.outcome_unknown: list[str] = []  # reaped claims are to do again, not carried
        self.awaiting: frozenset[str] = frozenset()
        self.lost_jobs: frozenset[str] = frozenset()
        self.jobs: list[PendingJob] = []  # submitted contacts this worker polls (handles.py)

    def _follow(self, key: int, state: str, person: str | None, position: int) -> None:
        if state == "done":
            self.done.add(key)
            self.permanent.discard(key)
            self.failed.discard(key)
            if person is not None:
                self.persons[int(person)] = position
        elif state == "failed":
            self.permanent.add(key)
            self.failed.add(key)
        else:
            self.failed.add(key)  # settled retryable: to do again

    def is_done(self, key: int) -> bool:
        return key in self.done

    def failed_for_good(self, key: int) -> bool:
        return key in self.permanent

    def failed_before(self, key: int) -> bool:
        return key in self.failed

    def latest_result(self, person: int) -> int | None:
        return self.persons.get(person)

    def result_contacts(self, positions: Collection[int]) -> dict[int, dict[str, Any]]:
        return {}  # results are in ob_contact, but not read back at start: no guard samples

    def counts(self) -> StoreCounts:
        return StoreCounts(
            results=len(self.done),
            failed_permanent=len(self.permanent),
            failed_retryable=len(self.failed - self.permanent),
            people=len(self.persons),
        )

    def awaited_jobs(self) -> Sequence[PendingJob]:
        return self.jobs


async def read_view(conn: PgConnection, job: str) -> PgView:
    """What the shared ledger holds for the job: its settled contacts, in settling order."""
    cur = await conn.execute(
        "SELECT request_id, state, person_key, settled_seq FROM ob_contact"
        " WHERE job = %s AND settled_seq IS NOT NULL ORDER BY settled_seq",
        (job,),
    )
    return PgView(await cur.fetchall())
