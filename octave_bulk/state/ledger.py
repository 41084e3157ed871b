"""The ledger: what an output already holds, read at the start of every run.

Contract: :class:`Ledger` ``load()`` returns a :class:`LedgerState`: the done-set (keys of the
requestIds with a durable success), the contacts whose last outcome was a failure (permanent
or retryable, and not done since), and the calls that were on the wire when the last run died.
The results file stays the source of truth; a ledger only indexes it.

:class:`NdjsonLedger`, the first implementation, scans the files themselves. On start it
repairs a torn last line (a kill -9 can only tear the line being written), then builds the
done-set. Every results line starts with ``{"requestId":"...``, so the scan finds the id with a
byte search instead of parsing JSON (docs/performance.md, section "Resume scan and done-set").
A result written before the person key (a *legacy* id, :mod:`octave_bulk.identity`) also puts
the id this version derives for its contact in the done-set: an old output is adopted without
paying anyone again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from octave_bulk.identity import derive_request_id, is_legacy_id, person_key, read_person_hash
from octave_bulk.state.files import iter_ndjson, repair_tail
from octave_bulk.state.idset import IdSet, id_key
from octave_bulk.state.inflight import InflightSlots
from octave_bulk.state.paths import OutputPaths

__all__ = [
    "ErrorsScan",
    "Ledger",
    "LedgerState",
    "NdjsonLedger",
    "ResultsScan",
    "complete_lines",
    "line_request_id",
    "scan_errors",
    "scan_results",
]

_ID_MARK = b'"requestId":"'
_PERSON_MARK = b'"personKey":"'


def line_request_id(line: bytes) -> str | None:
    """The requestId of a results/errors line (fast path: a byte search near the start)."""
    start = line.find(_ID_MARK, 0, 64)
    if start >= 0:
        start += len(_ID_MARK)
        end = line.find(b'"', start)
        value = line[start:end]
        if end > 0 and b"\\" not in value:
            return value.decode("utf-8", "replace")
    try:  # escaped characters or an unusual line: parse it properly
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    rid = record.get("requestId") if isinstance(record, dict) else None
    return rid if isinstance(rid, str) else None


def complete_lines(path: Path) -> Iterator[bytes]:
    """The lines of an NDJSON file up to a torn tail (a line without its newline: being
    written right now, or torn by a kill and not repaired yet)."""
    if not path.exists():
        return
    with open(path, "rb", buffering=1 << 20) as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                return
            yield line


@dataclass
class ResultsScan:
    """What ``OUT.ndjson`` holds: the done-set, its line count and what repair dropped, and
    the people done (person key -> the 1-based line of their latest result)."""

    done: IdSet
    lines: int
    repaired_bytes: int
    bad_lines: int
    persons: IdSet
    path: Path


def scan_results(path: Path, *, repair: bool = True) -> ResultsScan:
    """Repair the tail of the results file (unless ``repair`` is false: then a torn last line
    is only ignored, for readers that must not write) and build its done-set."""
    repaired = repair_tail(path) if repair else 0
    size = path.stat().st_size if path.exists() else 0
    # Sized from the file (results lines are ~2-5 KB) so that the table rarely has to grow.
    done, lines, bad = IdSet(size // 2048), 0, 0
    persons = IdSet(size // 2048, with_values=True)
    add, put = done.add, persons.put
    for line in complete_lines(path):
        lines += 1
        rid = line_request_id(line)
        if rid is None:
            bad += 1
            continue
        add(id_key(rid))
        mark = line.find(_PERSON_MARK, 0, 160)
        if mark >= 0:
            start = mark + len(_PERSON_MARK)
            if (person_id := read_person_hash(line[start : start + 16])) is not None:
                put(person_id, lines)
                continue
        # Written before the person key: parsed (only such lines), and adopted.
        contact = _contact(line)
        if contact is not None and (person := person_key(contact)) is not None:
            put(id_key(person), lines)
        if contact is not None and is_legacy_id(rid):
            add(id_key(derive_request_id(contact)))
    return ResultsScan(done, lines, repaired, bad, persons, path)


def _contact(line: bytes) -> dict[str, Any] | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    contact = record.get("contact") if isinstance(record, dict) else None
    return contact if isinstance(contact, dict) else None


@dataclass
class ErrorsScan:
    """Keys of the contacts whose last recorded outcome was a failure, not done since."""

    permanent: set[int] = field(default_factory=set)
    retryable: set[int] = field(default_factory=set)


def scan_errors(path: Path, done: IdSet, *, repair: bool = True) -> ErrorsScan:
    """Repair the errors file's tail (unless ``repair`` is false); the last record of each id
    decides its kind."""
    if repair:
        repair_tail(path)
    last: dict[int, bool] = {}
    for record in iter_ndjson(path):
        rid = record.get("requestId")
        if isinstance(rid, str):
            key = id_key(rid)
            if key not in done:
                last[key] = bool((record.get("error") or {}).get("retryable"))
    scan = ErrorsScan()
    for key, retryable in last.items():
        (scan.retryable if retryable else scan.permanent).add(key)
    return scan


@dataclass
class LedgerState:
    """What an output holds at the start of a run."""

    results: ResultsScan
    errors: ErrorsScan
    outcome_unknown: list[str]
    """requestIds that were on the wire when the last run died and are not done since."""

    @property
    def done(self) -> IdSet:
        """Keys of the requestIds with a durable success."""
        return self.results.done


class Ledger(Protocol):
    """Where a run learns what its output already holds."""

    def load(self, *, repair: bool = True) -> LedgerState:
        """Read the state; ``repair=False`` for readers that must not write (dry run, status)."""
        ...


class NdjsonLedger:
    """The ledger read from the output's own files (results, errors, in-flight slots)."""

    def __init__(self, paths: OutputPaths) -> None:
        self.paths = paths

    def load(self, *, repair: bool = True) -> LedgerState:
        """Scan the files (see the module docstring)."""
        results = scan_results(self.paths.results, repair=repair)
        errors = scan_errors(self.paths.errors, results.done, repair=repair)
        unknown = [
            rid
            for rid in InflightSlots.leftovers(self.paths.inflight)
            if id_key(rid) not in results.done
        ]
        return LedgerState(results=results, errors=errors, outcome_unknown=unknown)
