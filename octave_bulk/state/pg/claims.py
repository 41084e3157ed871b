"""Jobs, contacts and claims in the shared ledger: who may pay for which contact, and what came of it.

Contract (docs/scale-out.md, "Claims before paying"):

- :meth:`WorkQueue.enqueue` adds a job's contacts once (``ON CONFLICT DO NOTHING``: enqueueing
  the same input again adds nothing).
- :meth:`WorkQueue.claim` hands a live worker up to ``n`` contacts still to do, in input order,
  in **one statement** (``SELECT … FOR UPDATE SKIP LOCKED`` inside ``UPDATE … RETURNING``),
  committed before it returns: a worker sends a paid call only for a contact it has claimed,
  and two workers never hold the same contact. A worker that was reaped (fenced) claims nothing.
- :meth:`WorkQueue.settle` writes the outcome, the contact's new state and the call's row in
  one statement (one transaction). The claim still held → :attr:`Settled.FIRST`. The claim
  lost (reaped) but the contact not done yet and the answer a success → :attr:`Settled.LATE`:
  stored, it saves a re-send. Otherwise → :attr:`Settled.DUPLICATE`: the call is counted as
  paid (a second time) and the stored result is never overwritten.
- :meth:`WorkQueue.submitted` commits an async job's handle with the claim's transition, so any
  worker can poll it; :meth:`WorkQueue.unclaim` gives back a claim whose call was never sent;
  :meth:`WorkQueue.attempt` records an attempt that did not settle the contact (a 429, a retried
  error).

Every method is one round trip; the connection is the caller's (autocommit).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from octave_bulk.errors import StateError
from octave_bulk.state.pg.dsn import PgConnection

__all__ = ["JOB_SETTINGS", "Claim", "Outcome", "Settled", "WorkItem", "WorkQueue"]

JOB_SETTINGS = (
    "agent_type", "agent_oid", "experiment_oid", "base_url", "key", "mode", "async_body",
    "output_format", "lang", "context", "instructions", "url", "prospect_limit",
    "prospect_minimal", "search_context", "include_full_annotation",
    "playbook_selection_context",
)  # fmt: skip
"""The settings a job keeps (``ob_job.settings``), which its workers take: whom its requests
go to and what shapes them (never the API key, never the ledger's URL)."""


class Settled(enum.StrEnum):
    """How a settle went."""

    FIRST = "first"
    """The claim was still held: the outcome is the contact's."""
    LATE = "late"
    """The claim was lost (reaped) but the contact was not done yet: this success is stored."""
    DUPLICATE = "duplicate"
    """The contact was done already (or the claim lost and the answer a failure): counted as
    paid, nothing overwritten."""


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One contact to enqueue: its requestId, the request body, its input position."""

    request_id: str
    body: dict[str, Any]
    seq: int
    person_key: str | None = None
    record: dict[str, Any] | None = None
    """The contact as the results record it, when it is not the body itself."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A contact a worker holds: it may pay for it until it settles or loses the claim."""

    job: str
    request_id: str
    worker: str
    claim_seq: int
    body: dict[str, Any] = field(repr=False)
    handle: str | None = None
    record: dict[str, Any] | None = field(default=None, repr=False)
    person_key: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one answered attempt came to.

    Args:
        done: a success (the contact is done) or a failure for good (it is failed).
        result: the stored result of a success.
        error: what went wrong, for a failure.
        paid: whether the call is counted as paid.
        credits: the credits it used, when known.
        status: the HTTP status, when an answer came.
        error_kind: an :class:`~octave_bulk.errors.ErrorKind` value, for a failure.
        kind: ``call`` (sync), ``poll`` (an async job's result).
    """

    done: bool
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    paid: bool = True
    credits: float | None = None
    status: int | None = None
    error_kind: str | None = None
    kind: str = "call"


# A claim is held while its worker and claim sequence are the contact's and it is unsettled.
_CLAIM = """
WITH me AS (
    SELECT worker FROM ob_worker WHERE worker = %(worker)s AND state = 'live' FOR SHARE
), next AS (
    SELECT job, request_id FROM ob_contact
    WHERE job = %(job)s AND state = 'todo' AND EXISTS (SELECT 1 FROM me)
      AND NOT request_id = ANY(%(skip)s)
    ORDER BY seq LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
)
UPDATE ob_contact c
SET state = 'claimed', claim_seq = c.claim_seq + 1, holder = %(worker)s,
    claimed_at = clock_timestamp(), sending = %(sending)s
FROM next WHERE c.job = next.job AND c.request_id = next.request_id
RETURNING c.seq, c.request_id, c.claim_seq, c.body, c.handle, c.record, c.person_key
"""

_SETTLE = """
WITH prev AS (
    SELECT c.job, c.request_id,
           CASE WHEN c.holder = %(worker)s AND c.claim_seq = %(claim_seq)s
                     AND c.state IN ('claimed', 'submitted') THEN 'first'
                WHEN %(done)s AND c.state <> 'done' THEN 'late'
                ELSE 'duplicate' END AS settled
    FROM ob_contact c WHERE c.job = %(job)s AND c.request_id = %(request_id)s
    FOR UPDATE
), upd AS (
    UPDATE ob_contact c SET
        state = CASE WHEN p.settled = 'duplicate' THEN c.state
                     WHEN %(done)s THEN 'done' ELSE 'failed' END,
        result = CASE WHEN p.settled = 'duplicate' THEN c.result ELSE %(result)s::jsonb END,
        error = CASE WHEN p.settled = 'duplicate' THEN c.error ELSE %(error)s::jsonb END,
        holder = CASE WHEN p.settled = 'duplicate' THEN c.holder ELSE NULL END,
        settled_seq = CASE WHEN p.settled = 'duplicate' THEN c.settled_seq
                           ELSE nextval('ob_settled_seq') END,
        settled_at = CASE WHEN p.settled = 'duplicate' THEN c.settled_at
                          ELSE clock_timestamp() END,
        paid_calls = c.paid_calls + %(paid)s::int,
        late_answers = c.late_answers + (p.settled <> 'first')::int
    FROM prev p WHERE c.job = p.job AND c.request_id = p.request_id
    RETURNING p.settled, c.paid_calls
), call AS (
    INSERT INTO ob_call (job, request_id, worker, claim_seq, kind, outcome, status, error_kind,
                         paid, credits)
    SELECT %(job)s, %(request_id)s, %(worker)s, %(claim_seq)s, %(kind)s,
           CASE WHEN upd.settled = 'first' THEN %(state)s ELSE upd.settled END,
           %(status)s, %(error_kind)s, %(paid)s, %(credits)s
    FROM upd
)
SELECT settled, paid_calls FROM upd
"""

_SUBMITTED = """
WITH upd AS (
    UPDATE ob_contact c SET state = 'submitted', handle = %(handle)s,
           paid_calls = c.paid_calls + %(paid)s::int
    WHERE c.job = %(job)s AND c.request_id = %(request_id)s
      AND c.holder = %(worker)s AND c.claim_seq = %(claim_seq)s AND c.state IN ('claimed', 'submitted')
    RETURNING c.request_id
), call AS (
    INSERT INTO ob_call (job, request_id, worker, claim_seq, kind, outcome, status, paid)
    SELECT %(job)s, %(request_id)s, %(worker)s, %(claim_seq)s, 'submit', 'submitted',
           %(status)s, %(paid)s FROM upd
)
SELECT count(*) FROM upd
"""

_ATTEMPT = """
WITH upd AS (
    UPDATE ob_contact c SET paid_calls = c.paid_calls + %(paid)s::int
    WHERE c.job = %(job)s AND c.request_id = %(request_id)s
    RETURNING c.request_id
)
INSERT INTO ob_call (job, request_id, worker, claim_seq, kind, outcome, status, error_kind, paid)
SELECT %(job)s, %(request_id)s, %(worker)s, %(claim_seq)s, %(kind)s, 'retry', %(status)s,
       %(error_kind)s, %(paid)s FROM upd
"""

_ENQUEUE = """
INSERT INTO ob_contact (job, request_id, seq, person_key, body, record)
SELECT %s, * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::jsonb[], %s::jsonb[])
ON CONFLICT DO NOTHING
"""

_BATCH = 1000


class WorkQueue:
    """A job's contacts in the shared ledger, claimed and settled by workers.

    Args:
        conn: an autocommit connection (:func:`~octave_bulk.state.pg.dsn.connect`).
        job: the job's name.
    """

    def __init__(self, conn: PgConnection, job: str) -> None:
        self.conn, self.job = conn, job

    async def open_job(
        self,
        *,
        agent: str,
        input_name: str | None = None,
        settings: dict[str, Any] | None = None,
        rate_ceiling: float | None = None,
        window_ceiling: int | None = None,
    ) -> None:
        """Create the job, or update its settings and ceilings when it exists.

        Raises:
            StateError: the job exists for another agent.
        """
        cur = await self.conn.execute(
            "INSERT INTO ob_job (job, agent, input, settings, rate_ceiling, window_ceiling)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (job) DO UPDATE SET input = coalesce(excluded.input, ob_job.input),"
            " settings = excluded.settings,"
            " rate_ceiling = excluded.rate_ceiling, window_ceiling = excluded.window_ceiling,"
            " updated_at = clock_timestamp() WHERE ob_job.agent = excluded.agent"
            " RETURNING job",
            (self.job, agent, input_name, Jsonb(settings or {}), rate_ceiling, window_ceiling),
        )
        if await cur.fetchone() is None:
            raise StateError(
                f"job {self.job!r} runs another agent than {agent}: choose another --job name"
            )

    async def read_job(self) -> tuple[str, str | None, dict[str, Any]] | None:
        """The job's agent, input and settings; None when there is no such job."""
        cur = await self.conn.execute(
            "SELECT agent, input, settings FROM ob_job WHERE job = %s", (self.job,)
        )
        row = await cur.fetchone()
        return None if row is None else (row[0], row[1], dict(row[2]))

    async def enqueue(self, items: Iterable[WorkItem]) -> int:
        """Add contacts not in the job yet; returns how many were added."""
        added = 0
        batch: list[WorkItem] = []
        for item in items:
            batch.append(item)
            if len(batch) >= _BATCH:
                added += await self._insert(batch)
                batch = []
        if batch:
            added += await self._insert(batch)
        return added

    async def _insert(self, batch: list[WorkItem]) -> int:
        cur = await self.conn.execute(
            _ENQUEUE,
            (
                self.job,
                [item.request_id for item in batch],
                [item.seq for item in batch],
                [item.person_key for item in batch],
                [Jsonb(item.body) for item in batch],
                [None if item.record is None else Jsonb(item.record) for item in batch],
            ),
        )
        return max(cur.rowcount, 0)

    async def claim(
        self, worker: str, n: int, skip: Collection[str] = (), *, sending: bool = False
    ) -> list[Claim]:
        """Up to ``n`` contacts still to do, now held by ``worker`` (none if it was reaped),
        in input order; never one of ``skip`` (requestIds this worker tried already).

        A claim only reserves the contact: its call is marked as on the wire by the claim
        statement the run takes right before the paid call (``PgClaims.claim``), so a reaper
        counts an outcome unknown only for a call that may have been sent. ``sending`` marks
        them on the wire at once (a worker that sends as soon as it claims)."""
        params = {"job": self.job, "worker": worker, "n": n, "skip": list(skip), "sending": sending}
        rows = sorted(await (await self.conn.execute(_CLAIM, params)).fetchall())
        return [
            Claim(self.job, rid, worker, claim_seq, body, handle, record, person)
            for _, rid, claim_seq, body, handle, record, person in rows
        ]

    async def give_back(self, worker: str, keep: Collection[str] = ()) -> list[str]:
        """Give back every contact ``worker`` holds claimed but ``keep`` (its calls never sent);
        returns their requestIds."""
        cur = await self.conn.execute(
            "UPDATE ob_contact SET state = 'todo', holder = NULL WHERE job = %s AND holder = %s"
            " AND state = 'claimed' AND NOT request_id = ANY(%s) RETURNING request_id",
            (self.job, worker, list(keep)),
        )
        return [row[0] for row in await cur.fetchall()]

    async def left(
        self, worker: str, skip: Collection[str] = (), *, submitted: bool = True
    ) -> tuple[int, int, int]:
        """(contacts to do but ``skip``, contacts other workers hold claimed or, with
        ``submitted``, submitted, live workers silent for longer than their lease) in the
        job: what may still come this worker's way, or end while it waits, and whether a reap
        would take anything back (``leases.reap``: only then is it worth its transaction). A
        submitted contact (async) is never sent again: its holder polls it, but a worker that
        died holds it until its lease runs out, then it is nobody's (a reap leaves no holder)
        until a worker still there takes it over and polls it (``handles.watch_orphans``). So
        a worker that polls waits for the others' submitted contacts too; one that does not
        (``--detach``) does not."""
        held = ["claimed", "submitted"] if submitted else ["claimed"]
        cur = await self.conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'todo' AND NOT request_id = ANY(%s)),"
            " count(*) FILTER (WHERE state = ANY(%s) AND holder IS DISTINCT FROM %s),"
            " (SELECT count(*) FROM ob_worker WHERE state = 'live'"
            "  AND heartbeat_at < clock_timestamp() - make_interval(secs => lease_seconds))"
            " FROM ob_contact WHERE job = %s",
            (list(skip), held, worker, self.job),
        )
        row = await cur.fetchone()
        return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)

    async def settle(self, claim: Claim, outcome: Outcome) -> Settled:
        """Record an answered attempt's outcome, state and call row in one transaction.

        Raises:
            StateError: the contact is not in the job.
        """
        params = self._params(claim) | {
            "done": outcome.done,
            "state": "done" if outcome.done else "failed",
            "result": Jsonb(outcome.result) if outcome.result is not None else None,
            "error": Jsonb(outcome.error) if outcome.error is not None else None,
            "paid": outcome.paid,
            "credits": outcome.credits,
            "status": outcome.status,
            "error_kind": outcome.error_kind,
            "kind": outcome.kind,
        }
        row = await (await self.conn.execute(_SETTLE, params)).fetchone()
        if row is None:
            raise StateError(f"job {self.job!r} has no contact {claim.request_id!r}")
        return Settled(row[0])

    async def submitted(
        self, claim: Claim, handle: str, *, paid: bool = True, status: int | None = None
    ) -> bool:
        """Commit an async job's handle with the claim's move to ``submitted``; False when
        the claim was lost meanwhile (nothing changed)."""
        params = self._params(claim) | {"handle": handle, "paid": paid, "status": status}
        row = await (await self.conn.execute(_SUBMITTED, params)).fetchone()
        return bool(row and row[0])

    async def unclaim(self, claim: Claim) -> bool:
        """Give back a claim whose call was never sent; False when it was no longer held."""
        cur = await self.conn.execute(
            "UPDATE ob_contact c SET state = 'todo', holder = NULL"
            " WHERE c.job = %(job)s AND c.request_id = %(request_id)s"
            " AND c.holder = %(worker)s AND c.claim_seq = %(claim_seq)s AND c.state = 'claimed'",
            self._params(claim),
        )
        return cur.rowcount == 1

    async def attempt(
        self,
        claim: Claim,
        *,
        status: int | None,
        error_kind: str | None,
        paid: bool = False,
        kind: str = "call",
    ) -> None:
        """Record an attempt that did not settle the contact (a 429, an error retried)."""
        params = self._params(claim) | {
            "status": status,
            "error_kind": error_kind,
            "paid": paid,
            "kind": kind,
        }
        await self.conn.execute(_ATTEMPT, params)

    async def counts(self) -> dict[str, int]:
        """Contacts per state, plus paid calls, outcomes unknown and late answers in all."""
        cur = await self.conn.execute(
            "SELECT state, count(*), sum(paid_calls), sum(outcome_unknown), sum(late_answers)"
            " FROM ob_contact WHERE job = %s GROUP BY state",
            (self.job,),
        )
        counts = dict.fromkeys(("todo", "claimed", "submitted", "done", "failed"), 0)
        counts |= {"paid_calls": 0, "outcome_unknown": 0, "late_answers": 0}
        for state, number, paid, unknown, late in await cur.fetchall():
            counts[state] = int(number)
            counts["paid_calls"] += int(paid)
            counts["outcome_unknown"] += int(unknown)
            counts["late_answers"] += int(late)
        return counts

    def _params(self, claim: Claim) -> dict[str, Any]:
        if claim.job != self.job:
            raise ValueError(f"claim of job {claim.job!r} settled in job {self.job!r}")
        return {
            "job": self.job,
            "request_id": claim.request_id,
            "worker": claim.worker,
            "claim_seq": claim.claim_seq,
        }
