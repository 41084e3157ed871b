"""Shared fixtures: asyncio only, a clean environment, and simulators on loopback."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from octave_bulk.simulator import RunningSimulator, SimulatorConfig, serve_simulator
from tests.pgserver import PgServer, postgres_or_skip

DATA = Path(__file__).parent / "data"
TEST_KEY = "oct_test_key_do_not_leak_7f3a9c"


# Modules whose tests measure rates, 429 shares or lease timings against real processes and
# real clocks: under pytest-xdist (pyproject's addopts) they all run on one worker, one after
# another, never two of them at once (the other worker runs the rest beside them).
MEASURED = {
    "test_engine",
    "test_limits",
    "test_pacing_hints",
    "test_pacing_slow_calls",
    "test_probe",
}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        if module.startswith("test_pg_") or module in MEASURED:
            item.add_marker(pytest.mark.xdist_group("measured"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real key or endpoint from the developer's shell ever reaches a test."""
    import os

    for name in list(os.environ):
        if name.startswith("OCTAVE_"):
            monkeypatch.delenv(name)


def load_json(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


@pytest.fixture
def live_sim() -> Iterator[RunningSimulator]:
    """A default simulator (instant, no faults) on 127.0.0.1, fresh for each test."""
    with serve_simulator(SimulatorConfig()) as running:
        yield running


@pytest.fixture
def make_sim() -> Iterator[Any]:
    """Factory for simulators with a given config; all are stopped after the test."""
    import contextlib

    with contextlib.ExitStack() as stack:

        def start(**kwargs: Any) -> RunningSimulator:
            return stack.enter_context(serve_simulator(SimulatorConfig(**kwargs)))

        yield start


_databases = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    """A throwaway PostgreSQL for the module's tests (tests/pgserver.py: in CI it must start)."""
    with postgres_or_skip() as server:
        yield server


@pytest.fixture
def db_url(pg: PgServer) -> str:
    """A fresh empty database's URL (with the superuser's password in it)."""
    return pg.create_database(f"d{os.getpid()}_{next(_databases)}")
