"""Durable state: torn-tail repair, the compact done-set, in-flight slots, atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from octave_bulk.errors import StateError
from octave_bulk.state.files import repair_tail, write_json_atomic
from octave_bulk.state.idset import IdSet, id_key
from octave_bulk.state.inflight import InflightSlots
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.scan import scan_errors, scan_results


@given(st.lists(st.integers(min_value=1, max_value=2**64 - 1), max_size=3000))
@settings(max_examples=30, deadline=None)
def test_id_set_behaves_like_a_set(keys: list[int]) -> None:
    ids, reference = IdSet(), set()
    for key in keys:
        assert ids.add(key) == (key not in reference)
        reference.add(key)
    assert len(ids) == len(reference)
    assert all(key in ids for key in reference)
    for probe in (1, 2, 2**63, 12345):
        assert (probe in ids) == (probe in reference)


@given(st.lists(st.tuples(st.integers(1, 2**64 - 1), st.integers(0, 2**32 - 1)), max_size=2000))
@settings(max_examples=30, deadline=None)
def test_id_set_with_values_behaves_like_a_dict(pairs: list[tuple[int, int]]) -> None:
    table, reference = IdSet(with_values=True), {}
    for key, value in pairs:
        table.put(key, value)
        reference[key] = value
    assert len(table) == len(reference)
    assert all(table.get(key) == value for key, value in reference.items())
    assert table.get(7) == reference.get(7)  # absent: None, and not inserted
    assert len(table) == len(reference)


def test_id_set_is_compact() -> None:
    ids = IdSet()
    for n in range(200_000):
        ids.add(id_key(f"id-{n}"))
    assert len(ids) == 200_000
    assert ids.nbytes() / len(ids) <= 24  # vs ~80-110 bytes for a Python set of strings


def test_output_paths_and_bad_extension() -> None:
    paths = OutputPaths.for_output("dir/results.ndjson")
    assert paths.errors == Path("dir/results.errors.ndjson")
    assert paths.summary == Path("dir/results.summary.json")
    assert OutputPaths.for_output("x.jsonl").rejects == Path("x.jsonl.rejects.ndjson")
    with pytest.raises(StateError, match="must end in .ndjson"):
        OutputPaths.for_output("results.csv")


def test_repair_tail_drops_only_the_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "r.ndjson"
    path.write_bytes(b'{"requestId":"a"}\n{"requestId":"b"}\n{"requestId":"c","res')
    assert repair_tail(path) == len(b'{"requestId":"c","res')
    assert path.read_bytes() == b'{"requestId":"a"}\n{"requestId":"b"}\n'
    assert repair_tail(path) == 0
    path.write_bytes(b'{"torn')
    assert repair_tail(path) == 6 and path.read_bytes() == b""


def test_scan_results_finds_ids_fast_path_and_escaped(tmp_path: Path) -> None:
    path = tmp_path / "r.ndjson"
    path.write_bytes(
        b'{"requestId":"plain","contact":{}}\n'
        b'{"requestId":"with \\"quote\\"","contact":{}}\n'
        b'{"contact":{},"requestId":"late-key"}\n'
        b"garbage\n"
        b'{"requestId":"torn'
    )
    scan = scan_results(path)
    assert scan.lines == 4 and scan.bad_lines == 1 and scan.repaired_bytes > 0
    for rid in ("plain", 'with "quote"', "late-key"):
        assert id_key(rid) in scan.done
    assert id_key("torn") not in scan.done


def test_scan_errors_last_record_wins_and_successes_supersede(tmp_path: Path) -> None:
    path = tmp_path / "e.ndjson"
    path.write_bytes(
        b'{"requestId":"a","error":{"retryable":true}}\n'
        b'{"requestId":"a","error":{"retryable":false}}\n'
        b'{"requestId":"b","error":{"retryable":true}}\n'
        b'{"requestId":"c","error":{"retryable":false}}\n'
    )
    done = IdSet()
    done.add(id_key("c"))
    scan = scan_errors(path, done)
    assert scan.permanent == {id_key("a")}  # b is retryable, c has succeeded since


def test_inflight_slots_record_what_is_on_the_wire(tmp_path: Path) -> None:
    path = tmp_path / "o.inflight"
    slots = InflightSlots(path)
    a = slots.claim("alpha")
    slots.claim("beta")
    slots.release(a)
    c = slots.claim("gamma" * 100)  # long ids are cut, never spill into the next slot
    assert c == a
    slots.close()
    assert InflightSlots.leftovers(path) == [("gamma" * 100)[:255], "beta"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    InflightSlots(path).close()  # a new run starts with empty slots
    assert InflightSlots.leftovers(path) == []


def test_write_json_atomic(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert path.read_text().strip().endswith("}") and '"a": 2' in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
