"""The store seam: an in-memory store, defined here and known to no module of the package,
plugged into ``run_batch(..., ledger=...)``, runs whole batches against the simulator.

What it shows: the run asks the store (not the output's files) what is done and what failed
for good, claims every call in it before sending, records every durable group in it, keeps
its run history there, and opening the store is the claim on the output.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import pytest

from octave_bulk.errors import StateError
from octave_bulk.run.engine import run_batch
from octave_bulk.settings.model import Settings
from octave_bulk.state.idset import id_key
from octave_bulk.state.jobs import PendingJob
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.store import FinishedRun, Group, StoreCounts
from tests.helpers import read_lines, sim_settings, write_contacts


class MemoryRuns:
    """The run history, as dicts."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.series = 0
        self.holds = 0  # calls held by every run (a budget's period never ends here)

    def start(self, run_id: str, output: str, **fields: Any) -> None:
        self.rows[run_id] = {"output": output, **fields}

    def update(self, run_id: str, **fields: Any) -> None:
        self.rows[run_id].update(fields)

    def hold_calls(
        self, run_id: str, limit: int, since: float, batch: Callable[[int], int]
    ) -> tuple[int, int]:
        spent = self.holds
        granted = batch(limit - spent) if limit > spent else 0
        self.holds += granted
        return granted, spent

    def release_calls(self, run_id: str, calls: int) -> None:
        self.holds -= calls

    def add_series(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.series += len(rows)


class MemoryView:
    """What the memory holds when a run starts (and follows its records)."""

    def __init__(self, memory: MemoryStore) -> None:
        self.memory = memory
        held = dict.fromkeys(memory.held.values())
        self.outcome_unknown = [rid for rid in held if id_key(rid) not in memory.done]
        self.awaiting: frozenset[str] = frozenset()
        self.lost_jobs: frozenset[str] = frozenset()

    def is_done(self, key: int) -> bool:
        return key in self.memory.done

    def failed_for_good(self, key: int) -> bool:
        return key in self.memory.permanent

    def latest_result(self, person: int) -> int | None:
        return self.memory.persons.get(person)

    def result_contacts(self, positions: Collection[int]) -> dict[int, dict[str, Any]]:
        return {}

    def counts(self) -> StoreCounts:
        memory = self.memory
        return StoreCounts(len(memory.done), len(memory.permanent), 0, len(memory.persons))

    def awaited_jobs(self) -> Sequence[PendingJob]:
        return []


class MemoryClaims:
    """Claims as a dict of claim number -> requestId, kept in the memory across runs."""

    def __init__(self, memory: MemoryStore, carry: Collection[str]) -> None:
        self.memory = memory
        memory.held.clear()
        self.carried = {rid: self._hold(rid) for rid in carry}

    def _hold(self, request_id: str) -> int:
        number = next(self.memory.numbers)
        self.memory.held[number] = request_id
        return number

    async def claim(self, request_id: str) -> int:
        self.memory.claimed.append(request_id)
        return self._hold(request_id)

    def release(self, claim: int) -> None:
        self.memory.held.pop(claim, None)

    def settle(self, request_id: str) -> None:
        number = self.carried.pop(request_id, None)
        if number is not None:
            self.release(number)

    def close(self) -> None:
        pass


class MemoryStore:
    """A whole store in memory; :meth:`open` is its factory."""

    def __init__(self) -> None:
        self.done: set[int] = set()
        self.permanent: set[int] = set()
        self.persons: dict[int, int] = {}
        self.held: dict[int, str] = {}  # claims not released: number -> requestId
        self.claimed: list[str] = []  # every claim a run made, in order
        self.numbers = itertools.count()
        self.recorded = 0
        self.finished: list[FinishedRun] = []
        self.history = MemoryRuns()
        self.open_by: str | None = None

    @property
    def runs(self) -> MemoryRuns:
        return self.history

    async def load(self) -> MemoryView:
        return MemoryView(self)

    def claims(self, carry: Collection[str]) -> MemoryClaims:
        return MemoryClaims(self, carry)

    async def record(self, group: Group) -> None:
        for person, rid, state, _, _ in group.outcomes:
            key = id_key(rid)
            self.permanent.discard(key)
            if state == "ok":
                self.done.add(key)
                self.persons[person] = len(self.done)
            elif state == "permanent":
                self.permanent.add(key)
            self.recorded += 1

    async def finish(self, run: FinishedRun) -> None:
        self.finished.append(run)

    @contextlib.asynccontextmanager
    async def open(self, paths: OutputPaths, settings: Settings) -> AsyncIterator[MemoryStore]:
        if self.open_by is not None:
            raise StateError(f"the store is in use by {self.open_by}")
        self.open_by = str(paths.results)
        try:
            yield self
        finally:
            self.open_by = None


async def test_a_run_on_a_memory_store_pays_once_and_the_store_says_what_is_done(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    rids = write_contacts(tmp_path / "in.csv", 60)
    memory = MemoryStore()
    first = await run_batch(
        tmp_path / "in.csv", tmp_path / "a.ndjson", sim_settings(sim.url), ledger=memory.open
    )
    assert first["exit_code"] == 0 and first["paid_calls"] == 60
    assert sim.stats()["calls"] == dict.fromkeys(rids, 1)
    assert memory.done == {id_key(rid) for rid in rids} and memory.recorded == 60
    assert sorted(memory.claimed) == rids and memory.held == {}  # claimed, then released
    row = memory.history.rows[first["run_id"]]
    assert row["exit_code"] == 0 and row["paid_calls"] == 60 and row["succeeded"] == 60
    assert len(memory.finished) == 1 and memory.open_by is None
    # Another output, empty: only the store knows these people are done.
    second = await run_batch(
        tmp_path / "in.csv", tmp_path / "b.ndjson", sim_settings(sim.url), ledger=memory.open
    )
    assert second["exit_code"] == 0 and second["paid_calls"] == 0
    assert second["counts"]["skipped_done"] == 60
    assert sim.stats()["calls"] == dict.fromkeys(rids, 1)
    assert read_lines(tmp_path / "b.ndjson") == []


async def test_a_contact_failed_for_good_in_the_store_is_not_sent_again(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(seed=5, faults={"not_found": 0.1})
    rids = write_contacts(tmp_path / "in.csv", 100)
    memory = MemoryStore()
    first = await run_batch(
        tmp_path / "in.csv", tmp_path / "a.ndjson", sim_settings(sim.url), ledger=memory.open
    )
    missing = {rid for rid in rids if rid not in sim.stats()["successes"]}
    assert missing and memory.permanent == {id_key(rid) for rid in missing}
    assert first["counts"]["failed_permanent"] == len(missing)
    again = await run_batch(
        tmp_path / "in.csv", tmp_path / "b.ndjson", sim_settings(sim.url), ledger=memory.open
    )
    assert again["paid_calls"] == 0 and again["counts"]["skipped_failed"] == len(missing)
    assert all(sim.stats()["calls"][rid] == 1 for rid in missing)


async def test_a_claim_left_in_the_store_is_an_outcome_unknown_until_settled(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    rids = write_contacts(tmp_path / "in.csv", 20)
    memory = MemoryStore()
    memory.held[99] = rids[-1]  # a run died with this call on the wire
    first = await run_batch(
        tmp_path / "in.csv",
        tmp_path / "a.ndjson",
        sim_settings(sim.url, limit=5),
        ledger=memory.open,
    )
    assert first["counts"]["outcome_unknown"] == 1 and first["unknown_request_ids"] == [rids[-1]]
    assert list(memory.held.values()) == [rids[-1]]  # not re-sent yet: still claimed
    second = await run_batch(
        tmp_path / "in.csv", tmp_path / "a.ndjson", sim_settings(sim.url), ledger=memory.open
    )
    assert second["counts"]["outcome_unknown"] == 1 and second["exit_code"] == 0
    assert memory.held == {} and sim.stats()["calls"][rids[-1]] == 1


async def test_a_store_claimed_by_another_run_refuses_the_run_before_any_call(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 10)
    memory = MemoryStore()
    paths = OutputPaths.for_output(tmp_path / "a.ndjson")
    settings = sim_settings(sim.url)
    async with memory.open(paths, settings):
        with pytest.raises(StateError, match="in use by"):
            await run_batch(
                tmp_path / "in.csv", tmp_path / "a.ndjson", settings, ledger=memory.open
            )
    assert sim.stats()["calls"] == {} and memory.history.rows == {}


async def test_a_budget_is_held_in_the_store_across_runs(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 30)
    memory = MemoryStore()
    settings = sim_settings(sim.url, budget="12/day", concurrency=4)
    first = await run_batch(
        tmp_path / "in.csv", tmp_path / "a.ndjson", settings, ledger=memory.open
    )
    assert first["stop_reason"] == "budget" and first["paid_calls"] == 12
    assert memory.history.holds == 12  # held, all sent: nothing given back
    second = await run_batch(
        tmp_path / "in.csv", tmp_path / "a.ndjson", settings, ledger=memory.open
    )
    assert second["stop_reason"] == "budget" and second["paid_calls"] == 0
    assert sum(sim.stats()["calls"].values()) == 12
