"""The shared ledger on PostgreSQL, for several hosts working on one job (docs/scale-out.md).

One stage per module: :mod:`~octave_bulk.state.pg.dsn` (the URL, its secret, connecting),
:mod:`~octave_bulk.state.pg.schema` (versioned migrations), :mod:`~octave_bulk.state.pg.claims`
(jobs, contacts, claims before paying, settling), :mod:`~octave_bulk.state.pg.leases`
(heartbeats, self-fencing, reaping), :mod:`~octave_bulk.state.pg.handles` (async jobs:
handles committed with the move to submitted, taken over by any run). Needs the ``postgres`` extra (psycopg 3).
"""

__all__: list[str] = []
