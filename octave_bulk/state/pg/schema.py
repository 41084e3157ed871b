"""The shared ledger's tables, as numbered migrations applied once each.

Contract: :func:`migrate` brings a database to :data:`LATEST` and is idempotent: a second call
(or several hosts calling it at once: they queue on a transaction-level advisory lock) applies
nothing. Each migration runs in the same transaction as the row recording it in
``ob_schema_version``, so a migration is applied whole or not at all. A database written by a
newer octave-bulk (a version above :data:`LATEST`) is refused, never downgraded.

The tables (docs/scale-out.md, "Tables"), all prefixed ``ob_`` so they can share a database:

- ``ob_job``: a named job (input, agent, settings) and its global ceilings;
- ``ob_contact``: one row per contact of a job: its state (todo, claimed, submitted, done,
  failed), the claim sequence and holder, the async handle, the result or error, paid calls,
  outcomes unknown (claims reaped from silent workers) and late answers;
- ``ob_worker``: workers, their heartbeat (server clock), lease and calls in flight;
- ``ob_call``: every attempt (and every reap), as the single-host ``calls`` table;
- ``ob_run``, ``ob_export_mark``: runs and ``export --new`` marks;
- ``ob_limit``: remembered limits per workspace URL and agent;
- ``ob_rate``, ``ob_permit``: the shared limiter's GCRA row and leased window permits (and
  ``fair_share``: the most permits a host short of them asked every host to keep);
- ``ob_outcome``: every worker's sends and answers, until the judge (``limits/pg_judge.py``)
  has read them (kind 0 sent, 1 answered, 2 refused, 3 never sent; ``at`` on the server's clock, seconds;
  ``hints``: a refusal's rate limit headers, :class:`~octave_bulk.errors.RefusalHints`).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from octave_bulk.errors import StateError
from octave_bulk.state.pg.dsn import PgConnection

__all__ = ["LATEST", "MIGRATIONS", "Migrated", "migrate"]

_LOCK_KEY = 0x0C7A_5E1F  # pg_advisory_xact_lock: one schema change at a time per database

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "jobs, contacts, workers, calls, runs, export marks, limits, the shared rate",
        """
        CREATE TABLE ob_job (
            job             text PRIMARY KEY,
            agent           text NOT NULL,
            input           text,
            settings        jsonb NOT NULL DEFAULT '{}',
            rate_ceiling    double precision CHECK (rate_ceiling > 0),
            window_ceiling  integer CHECK (window_ceiling > 0),
            created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            updated_at      timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE SEQUENCE ob_settled_seq;
        CREATE TABLE ob_contact (
            job             text NOT NULL REFERENCES ob_job ON DELETE CASCADE,
            request_id      text NOT NULL,
            seq             bigint NOT NULL,
            person_key      text,
            body            jsonb NOT NULL,
            state           text NOT NULL DEFAULT 'todo'
                            CHECK (state IN ('todo', 'claimed', 'submitted', 'done', 'failed')),
            claim_seq       integer NOT NULL DEFAULT 0,
            holder          text,
            claimed_at      timestamptz,
            handle          text,
            result          jsonb,
            error           jsonb,
            paid_calls      integer NOT NULL DEFAULT 0,
            outcome_unknown integer NOT NULL DEFAULT 0,
            late_answers    integer NOT NULL DEFAULT 0,
            settled_seq     bigint,
            settled_at      timestamptz,
            PRIMARY KEY (job, request_id)
        );
        CREATE INDEX ob_contact_todo ON ob_contact (job, seq) WHERE state = 'todo';
        CREATE INDEX ob_contact_holder ON ob_contact (holder) WHERE holder IS NOT NULL;
        CREATE INDEX ob_contact_person ON ob_contact (person_key) WHERE state = 'done';
        CREATE INDEX ob_contact_settled ON ob_contact (job, settled_seq);
        CREATE TABLE ob_worker (
            worker          text PRIMARY KEY,
            job             text NOT NULL,
            host            text NOT NULL,
            pid             integer NOT NULL,
            lease_seconds   double precision NOT NULL CHECK (lease_seconds > 0),
            state           text NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'left', 'reaped')),
            started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            heartbeat_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
            in_flight       integer NOT NULL DEFAULT 0,
            ended_at        timestamptz
        );
        CREATE TABLE ob_call (
            id              bigserial PRIMARY KEY,
            job             text NOT NULL,
            request_id      text NOT NULL,
            worker          text,
            claim_seq       integer,
            kind            text NOT NULL CHECK (kind IN ('call', 'submit', 'poll', 'reap')),
            outcome         text NOT NULL,
            status          integer,
            error_kind      text,
            paid            boolean,
            credits         double precision CHECK (credits >= 0),
            at              timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX ob_call_contact ON ob_call (job, request_id);
        CREATE TABLE ob_run (
            id              bigserial PRIMARY KEY,
            job             text NOT NULL,
            worker          text,
            started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            ended_at        timestamptz,
            exit_code       integer,
            summary         jsonb NOT NULL DEFAULT '{}'
        );
        CREATE TABLE ob_export_mark (
            job             text NOT NULL,
            mark            text NOT NULL,
            upto            bigint NOT NULL,
            at              timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (job, mark)
        );
        CREATE TABLE ob_limit (
            workspace       text NOT NULL,
            agent           text NOT NULL,
            rate            double precision,
            window_size     integer,
            evidence        jsonb NOT NULL DEFAULT '{}',
            measured_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (workspace, agent)
        );
        CREATE TABLE ob_rate (
            key             text PRIMARY KEY,
            rate            double precision NOT NULL CHECK (rate > 0),
            tat             timestamptz NOT NULL DEFAULT clock_timestamp(),
            paused_until    timestamptz NOT NULL DEFAULT '-infinity',
            window_size     integer,
            epoch           integer NOT NULL DEFAULT 0,
            updated_at      timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE TABLE ob_permit (
            key             text NOT NULL,
            slot            integer NOT NULL,
            holder          text,
            expires_at      timestamptz,
            PRIMARY KEY (key, slot)
        );
        """,
    ),
    (
        "contacts claimed by a run before any enqueue: their input order",
        """
        CREATE SEQUENCE ob_contact_seq;
        ALTER TABLE ob_contact ALTER COLUMN seq SET DEFAULT nextval('ob_contact_seq');
        """,
    ),
    (
        "enqueued contacts: the contact as the results record it, beside the request body",
        """
        ALTER TABLE ob_contact ADD COLUMN IF NOT EXISTS record jsonb;
        """,
    ),
    (
        "async jobs across workers: a submitted contact's contact and submit time",
        """
        ALTER TABLE ob_contact ADD COLUMN IF NOT EXISTS job_contact jsonb;
        ALTER TABLE ob_contact ADD COLUMN IF NOT EXISTS submitted_at double precision;
        CREATE INDEX IF NOT EXISTS ob_contact_submitted ON ob_contact (job)
            WHERE state = 'submitted';
        """,
    ),
    (
        "a claim's call marked on the wire: only those are outcomes unknown when reaped",
        """
        ALTER TABLE ob_contact ADD COLUMN IF NOT EXISTS sending boolean NOT NULL DEFAULT false;
        """,
    ),
    (
        "the shared limit's judge: every worker's outcomes, and who judges",
        """
        CREATE TABLE IF NOT EXISTS ob_outcome (
            id              bigserial PRIMARY KEY,
            key             text NOT NULL,
            epoch           integer NOT NULL,
            worker          text NOT NULL,
            ticket          bigint NOT NULL,
            kind            smallint NOT NULL CHECK (kind IN (0, 1, 2, 3)),
            at              double precision NOT NULL,
            waited          boolean NOT NULL DEFAULT false,
            retry_after     double precision
        );
        CREATE INDEX IF NOT EXISTS ob_outcome_key ON ob_outcome (key, id);
        ALTER TABLE ob_rate ADD COLUMN IF NOT EXISTS judge text;
        """,
    ),
    (
        "a fair shared window: the most permits a host short of them asks every host to keep",
        """
        ALTER TABLE ob_rate ADD COLUMN IF NOT EXISTS fair_share integer;
        ALTER TABLE ob_rate ADD COLUMN IF NOT EXISTS fair_share_until timestamptz;
        """,
    ),
    (
        "a refusal's rate limit headers, told to the judge",
        """
        ALTER TABLE ob_outcome ADD COLUMN IF NOT EXISTS hints jsonb;
        """,
    ),
)
"""(description, SQL) per version, version = position + 1. Append only: never edit one."""

LATEST = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class Migrated:
    """What :func:`migrate` found and left: schema versions before and after."""

    before: int
    after: int

    @property
    def changed(self) -> bool:
        return self.after != self.before


async def migrate(conn: PgConnection) -> Migrated:
    """Bring the database to :data:`LATEST`; a no-op when it is there already.

    Raises:
        StateError: the database is newer than this octave-bulk, or a migration failed.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS ob_schema_version ("
            " version integer PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        row = await (await conn.execute("SELECT max(version) FROM ob_schema_version")).fetchone()
        before = int(row[0]) if row and row[0] is not None else 0
        if before > LATEST:
            raise StateError(
                f"the shared ledger's schema is version {before}, newer than this octave-bulk "
                f"knows ({LATEST}): upgrade octave-bulk on this host"
            )
        for version in range(before + 1, LATEST + 1):
            description, sql = MIGRATIONS[version - 1]
            try:
                await conn.execute(sql.encode())
            except psycopg.Error as exc:
                raise StateError(f"schema migration {version} failed: {exc}") from None
            await conn.execute(
                "INSERT INTO ob_schema_version (version, description) VALUES (%s, %s)",
                (version, description),
            )
    return Migrated(before=before, after=LATEST)
