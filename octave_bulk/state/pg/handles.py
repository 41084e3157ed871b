"""Async jobs on the shared ledger: a submit's handle is committed with the claim's move to
``submitted``, and the handles of workers that left or died are taken over and polled.

Contract (docs/scale-out.md, "Async mode on several hosts"):

- :func:`submit_statement` is the statement (one transaction) that commits a group's accepted
  submits, run by the store before the group's outcomes are acknowledged (so before the run
  polls the handle or goes on): each contact still claimed by this worker (same holder and
  claim sequence) moves to ``submitted`` with its handle, its contact and its submit time, its
  paid submit counted in ``paid_calls`` and a ``submit`` row in ``ob_call``. A contact whose
  claim was lost (reaped) and that nobody claimed since (``todo``) is taken back as submitted
  (``late``: the handle saves a re-send). Otherwise (another worker holds it, or it is settled)
  the submit is counted as paid twice and nothing is overwritten. A contact in ``submitted`` is
  never claimed, so never submitted again, by anyone (``PgClaims.claim`` takes only ``todo``).
- :func:`adopt` takes over the job's submitted contacts whose holder is not a live worker
  (it left, or died and was reaped): this worker polls them from now on, holding them, so two
  live workers never poll one handle. One statement; concurrent adopters skip each other's
  rows. Polling is free, so a dead worker's submits cost nothing again.
- :func:`adopt` with a ``handle``: the same for that one handle only (a callback named it);
  a handle that is not a submitted contact's, or that a live worker holds, gives nothing.
  :func:`take_over` is :func:`adopt` noting each job's claim sequence for the store.
- :func:`watch_orphans`: until cancelled, every ``every`` seconds, reap the workers silent
  for longer than their lease and take over what they left (a run polls the jobs of runs
  that die beside it); a statement the server refuses ends the watch and is reported, so
  that the run stops instead of waiting for jobs nobody polls.

A job's outcome is settled by the store's group statement, as a sync call's (the holder and
claim sequence the adoption returned make it this worker's).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import psycopg
from psycopg.types.json import Jsonb

from octave_bulk.errors import StateError
from octave_bulk.state.jobs import PendingJob
from octave_bulk.state.pg.dsn import out_of_reach
from octave_bulk.state.pg.leases import reap

if TYPE_CHECKING:
    from octave_bulk.state.pg.dsn import PgConnection
    from octave_bulk.state.rows import CallRow
    from octave_bulk.state.store import Group

__all__ = ["SUBMIT_GROUP", "adopt", "submit_statement", "take_over", "watch_orphans"]

SUBMIT_GROUP = """
WITH g AS (
    SELECT * FROM unnest(%(rids)s::text[], %(seqs)s::int[], %(handles)s::text[],
                         %(contacts)s::jsonb[], %(at)s::float8[], %(paid)s::int[])
             AS g(request_id, claim_seq, handle, contact, submitted_at, paid)
), prev AS (
    SELECT g.*, CASE
        WHEN c.holder = %(worker)s AND c.claim_seq = g.claim_seq AND c.state = 'claimed'
            THEN 'first'
        WHEN c.state = 'todo' THEN 'late'
        ELSE 'duplicate' END AS settled
    FROM ob_contact c JOIN g ON c.job = %(job)s AND c.request_id = g.request_id
    FOR UPDATE OF c
), upd AS (
    UPDATE ob_contact c SET
        state = CASE WHEN p.settled = 'duplicate' THEN c.state ELSE 'submitted' END,
        holder = CASE WHEN p.settled = 'duplicate' THEN c.holder ELSE %(worker)s END,
        handle = CASE WHEN p.settled = 'duplicate' THEN c.handle ELSE p.handle END,
        job_contact = CASE WHEN p.settled = 'duplicate' THEN c.job_contact ELSE p.contact END,
        submitted_at = CASE WHEN p.settled = 'duplicate' THEN c.submitted_at
                            ELSE p.submitted_at END,
        paid_calls = c.paid_calls + p.paid,
        late_answers = c.late_answers + (p.settled <> 'first')::int
    FROM prev p WHERE c.job = %(job)s AND c.request_id = p.request_id
    RETURNING p.request_id
), calls AS (
    INSERT INTO ob_call (job, request_id, worker, kind, outcome, status, paid)
    SELECT %(job)s, request_id, %(worker)s, 'submit', outcome, status, status = 200
    FROM unnest(%(call_rids)s::text[], %(call_outcomes)s::text[], %(call_statuses)s::int[])
         AS k(request_id, outcome, status)
)
SELECT count(*) FROM upd
"""

_ADOPT = """
WITH me AS (SELECT worker FROM ob_worker WHERE worker = %(worker)s AND state = 'live' FOR SHARE),
orphans AS (
    SELECT c.job, c.request_id FROM ob_contact c
    WHERE c.job = %(job)s AND c.state = 'submitted' AND EXISTS (SELECT 1 FROM me)
      AND (%(handle)s::text IS NULL OR c.handle = %(handle)s)
      AND (c.holder IS NULL OR NOT EXISTS (
          SELECT 1 FROM ob_worker w WHERE w.worker = c.holder AND w.state = 'live'))
    FOR UPDATE OF c SKIP LOCKED
)
UPDATE ob_contact c SET holder = %(worker)s
FROM orphans WHERE c.job = orphans.job AND c.request_id = orphans.request_id
RETURNING c.request_id, c.handle, coalesce(c.job_contact, c.body), c.submitted_at, c.claim_seq
"""


def submit_statement(
    job: str, worker: str, group: Group, claim_seqs: Mapping[str, int]
) -> tuple[list[tuple[str, dict[str, Any]]], list[CallRow]]:
    """The statement (with its parameters) committing the group's accepted submits, and their
    calls, as this worker's (see the module docstring): none when the group has no submit;
    and the group's other calls."""
    submitted = group.submitted
    rids = {each.request_id for each in submitted}
    calls = [call for call in group.calls if call[0] in rids]
    others = [call for call in group.calls if call[0] not in rids]
    if not submitted:
        return [], others
    paid: dict[str, int] = {}
    for call in calls:
        if call[5] == 200:
            paid[call[0]] = paid.get(call[0], 0) + 1
    params = {
        "job": job,
        "worker": worker,
        "rids": [each.request_id for each in submitted],
        "seqs": [claim_seqs.get(each.request_id, 0) for each in submitted],
        "handles": [each.handle for each in submitted],
        "contacts": [Jsonb(each.contact) for each in submitted],
        "at": [each.submitted_at for each in submitted],
        "paid": [paid.get(each.request_id, 0) for each in submitted],
        "call_rids": [call[0] for call in calls],
        "call_outcomes": [call[6] for call in calls],
        "call_statuses": [call[5] for call in calls],
    }
    return [(SUBMIT_GROUP, params)], others


async def adopt(
    conn: PgConnection, job: str, worker: str, handle: str | None = None
) -> list[tuple[PendingJob, int]]:
    """Take over the job's submitted contacts no live worker holds (only the one with
    ``handle``, when given); returns each job to poll with the claim sequence it was
    submitted under, in submit order."""
    cur = await conn.execute(_ADOPT, {"job": job, "worker": worker, "handle": handle})
    rows, now = await cur.fetchall(), time.time()
    jobs = [
        (PendingJob(rid, handle, contact or {}, float(at or now)), int(seq))
        for rid, handle, contact, at, seq in rows
        if handle
    ]
    return sorted(jobs, key=lambda pair: pair[0].submitted_at)


async def take_over(
    conn: PgConnection,
    job: str,
    worker: str,
    claim_seqs: dict[str, int],
    handle: str | None = None,
) -> list[PendingJob]:
    """:func:`adopt`, with each job's claim sequence noted in ``claim_seqs`` (requestId ->
    sequence: what makes the job's outcome settle as this worker's)."""
    adopted = await adopt(conn, job, worker, handle)
    claim_seqs.update((each.request_id, seq) for each, seq in adopted)
    return [each for each, _ in adopted]


async def watch_orphans(
    connection: Callable[[], Awaitable[PgConnection]],
    every: float,
    job: str,
    worker: str,
    claim_seqs: dict[str, int],
    *,
    add: Callable[[PendingJob], None],
    refused: Callable[[Exception], None],
) -> None:
    """Until cancelled, every ``every`` seconds: reap, take over, hand each job to ``add``;
    a database out of reach is tried again at the next beat. A statement the server refuses
    (``dsn.out_of_reach`` False: no wait mends it) goes to ``refused`` and the watch ends:
    the run stops on it rather than wait for ever for jobs nobody polls."""
    while True:
        await anyio.sleep(every)
        try:
            conn = await connection()
            await reap(conn)
            jobs = await take_over(conn, job, worker, claim_seqs)
        except (psycopg.Error, StateError) as exc:
            if out_of_reach(exc):
                continue
            refused(exc)
            return
        for each in jobs:
            add(each)
