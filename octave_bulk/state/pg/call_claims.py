"""The claim before each paid call, on the shared ledger: alone, or carried by the shared
limiter's booking (one round trip for the turn and the claim).

Contract (docs/scale-out.md, "A run on the shared ledger" and "Round trips"):

- :meth:`PgClaims.claim` claims a contact in **one statement committed before the paid call**
  (inserting its row when the job did not have it): only when it is to do, or already this
  worker's (a retry). A contact another worker holds or settled, or any contact once this
  worker's lease is not renewed (self-fencing), raises :class:`~octave_bulk.errors.ClaimRefused`:
  the run does not send it.
- :meth:`PgClaims.rider` is the same claim as a :class:`ClaimRider`: a limiter that books its
  turn in the same database (``limits/shared_pg.py``) runs :data:`CARRIED` in its booking
  statement with :meth:`ClaimRider.params`, and hands the claim's sequence back with
  :meth:`ClaimRider.took`. :meth:`ClaimRider.claim`, right before the paid call, returns the
  claim's slot: the carried claim's, or (no booking carried it: a turn booked ahead, another
  database, a fenced worker) one claimed alone then. A carried claim is committed before the
  wait for the turn: a worker killed in that wait leaves it to be reaped as an outcome
  unknown though its call never left (the bound on calls paid twice grows by at most one
  call per worker killed: one task at a time books and waits, under the limiter's turn
  lock); one that stops normally gives it back uncounted (it never was on the wire). The
  claim's row locks are taken while the booking holds the shared rate row, so a claim that
  waits (on a heartbeat, a reap of its worker) holds every host's next booking that long.
"""

from __future__ import annotations

from typing import Any, Protocol

import psycopg

from octave_bulk.errors import ClaimRefused, StateError
from octave_bulk.state.pg.dsn import LedgerUrl, PgConnection, describe_failure
from octave_bulk.state.pg.leases import WorkerLease

__all__ = ["CARRIED", "CLAIM_ONE", "ClaimRider", "ClaimsHome", "PgClaims"]

_ME = """
SELECT worker FROM ob_worker WHERE worker = %(claim_worker)s AND state = 'live' FOR SHARE
"""

_CLAIM = """
INSERT INTO ob_contact (job, request_id, body, state, claim_seq, holder, claimed_at, sending)
SELECT %(claim_job)s, %(claim_request_id)s, '{}', 'claimed', 1, me.worker, clock_timestamp(),
       true
FROM me
ON CONFLICT (job, request_id) DO UPDATE
SET state = 'claimed', holder = excluded.holder, claimed_at = clock_timestamp(), sending = true,
    claim_seq = ob_contact.claim_seq + (ob_contact.state = 'todo')::int
WHERE ob_contact.state = 'todo'
   OR (ob_contact.state = 'claimed' AND ob_contact.holder = excluded.holder)
RETURNING claim_seq
"""

CLAIM_ONE = f"WITH me AS ({_ME}) {_CLAIM}"
"""One call's claim alone: returns its claim sequence, or no row when it is not this worker's
to send."""

CARRIED = f", me AS ({_ME}), claimed AS ({_CLAIM})"
"""The same claim as two more CTEs of another statement's ``WITH`` (after its first); the
statement returns ``(SELECT claim_seq FROM claimed)``."""


class ClaimsHome(Protocol):
    """What a claim needs of the store it belongs to (``state/pg/store.py``, ``PgStore``)."""

    url: LedgerUrl
    job: str
    worker: str
    lease: WorkerLease
    claim_seq: dict[str, int]
    """requestId -> the claim sequence this worker holds."""
    on_wire: dict[int, str]
    """Claims whose outcome is not durable yet."""

    async def connection(self, purpose: str) -> PgConnection: ...


class PgClaims:
    """Claims as rows of ``ob_contact`` held by this worker (see the module docstring)."""

    def __init__(self, store: ClaimsHome) -> None:
        self.store = store
        self.numbers = iter(range(1, 2**62))

    def rider(self, request_id: str) -> ClaimRider:
        return ClaimRider(self, request_id)

    async def claim(self, request_id: str) -> int:
        return await self.rider(request_id).claim()

    def release(self, claim: int) -> None:
        self.store.on_wire.pop(claim, None)

    def settle(self, request_id: str) -> None:
        """Nothing is carried (the view's ``outcome_unknown`` is empty)."""

    def close(self) -> None:
        """Claims still held are given back when the store closes."""


class ClaimRider:
    """One call's claim, carried by a booking in the same database or taken alone (see the
    module docstring)."""

    __slots__ = ("_claims", "_seq", "carried", "request_id")

    def __init__(self, claims: PgClaims, request_id: str) -> None:
        self._claims, self.request_id = claims, request_id
        self.carried = False
        self._seq: int | None = None

    def rides_in(self, ledger: LedgerUrl | None) -> bool:
        """Whether a booking in ``ledger`` may carry the claim now: the claim's database, and
        this worker not fenced (asked right before each booking: a booking may wait long)."""
        store = self._claims.store
        return ledger == store.url and store.lease.may_send()

    def params(self) -> dict[str, Any]:
        """:data:`CARRIED`'s (and :data:`CLAIM_ONE`'s) parameters."""
        store = self._claims.store
        return {
            "claim_job": store.job,
            "claim_worker": store.worker,
            "claim_request_id": self.request_id,
        }

    def took(self, claim_seq: int | None) -> None:
        """A booking carried the claim: its sequence, None when it was not this worker's."""
        self.carried, self._seq = True, claim_seq

    async def claim(self) -> int:
        """The claim's slot, right before the paid call.

        Raises:
            ClaimRefused: another worker holds or settled the contact, this worker's lease
                is not renewed, or the database is out of reach: the call is not sent.
        """
        store = self._claims.store
        if not store.lease.may_send():  # cut off or frozen past half the lease: fenced
            raise ClaimRefused("this worker's lease is not renewed: it sends nothing")
        seq = self._seq
        if not self.carried:
            try:
                conn = await store.connection("claims")
                row = await (await conn.execute(CLAIM_ONE, self.params())).fetchone()
            except psycopg.Error as exc:  # out of reach: nothing is sent
                raise ClaimRefused(describe_failure(store.url, exc)) from None
            except StateError as exc:
                raise ClaimRefused(str(exc)) from None
            seq = None if row is None else int(row[0])
        if seq is None:
            raise ClaimRefused(f"{self.request_id}: held or settled by another worker")
        number = next(self._claims.numbers)
        store.claim_seq[self.request_id] = seq
        store.on_wire[number] = self.request_id
        return number
