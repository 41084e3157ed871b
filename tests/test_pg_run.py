"""``run --ledger postgresql://…`` on a real PostgreSQL: the shared ledger is the truth for
"done", claims keep concurrent runs from paying twice, and one rate is shared across them.

Every test gets a fresh database on one throwaway server (tests/pgserver.py); in CI a server
that cannot start fails these tests rather than skipping them.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from octave_bulk.run.engine import run_batch
from tests.helpers import read_lines, sim_settings, write_contacts
from tests.pgserver import PgServer, postgres_or_skip

_names = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with postgres_or_skip() as server:
        yield server


@pytest.fixture
def db_url(pg: PgServer) -> str:
    """A fresh empty database's URL (with the superuser's password in it)."""
    return pg.create_database(f"r{os.getpid()}_{next(_names)}")


def _contacts(db_url: str) -> dict[str, tuple[str, int, int]]:
    """requestId -> (state, paid calls, outcomes unknown) in the shared ledger."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT request_id, state, paid_calls, outcome_unknown FROM ob_contact"
        ).fetchall()
    return {rid: (state, paid, unknown) for rid, state, paid, unknown in rows}


async def test_a_run_on_the_shared_ledger_pays_once_and_a_second_run_pays_nothing(
    make_sim: Any, tmp_path: Path, db_url: str, pg: PgServer
) -> None:
    sim = make_sim()
    rids = write_contacts(tmp_path / "in.csv", 40)
    settings = sim_settings(sim.url, ledger=db_url)
    first = await run_batch(tmp_path / "in.csv", tmp_path / "a.ndjson", settings)
    assert first["exit_code"] == 0 and first["paid_calls"] == 40
    assert sim.stats()["calls"] == dict.fromkeys(rids, 1)
    assert _contacts(db_url) == dict.fromkeys(rids, ("done", 1, 0))
    assert len(read_lines(tmp_path / "a.ndjson")) == 40  # the local copy, for inspection
    # Another output, empty: only the database knows these contacts are done.
    second = await run_batch(tmp_path / "in.csv", tmp_path / "b.ndjson", settings)
    assert second["exit_code"] == 0 and second["paid_calls"] == 0
    assert second["counts"]["skipped_done"] == 40
    assert sim.stats()["calls"] == dict.fromkeys(rids, 1)
    assert not (tmp_path / "a.ledger.sqlite").exists()  # no SQLite beside the output
    assert not _mentioned(tmp_path, pg.password)


def _mentioned(folder: Path, secret: str) -> list[str]:
    """The files in ``folder`` whose text holds ``secret``."""
    return [p.name for p in folder.iterdir() if secret in p.read_text(errors="replace")]
