"""The scan of an output's NDJSON files: what its results and errors lines say.

Contract: :func:`scan_results` returns a :class:`ResultsScan` (the done-set: keys of the
requestIds with a durable success; the people done; bad lines), :func:`scan_errors` an
:class:`ErrorsScan` (the contacts whose last outcome was a failure, permanent or retryable,
and not done since). The file store (``state/file_store.py``) builds its start-up view from
them.

A scan first repairs a torn last line (a kill -9 can only tear the line being written), then
builds the done-set. Every results line starts with
``{"requestId":"...``, so the scan finds the id with a byte search instead of parsing JSON
(docs/performance.md, section "Resume scan and done-set"). Given a base (the snapshot the last
run saved, ``state/file_store.py``), it reads only the lines written since, and hands each
row to ``on_row`` (the index's catch-up): a million results load in a fraction of a second
(docs/performance.md, "Ledger").
A result written before the person key (a *legacy* id, :mod:`octave_bulk.identity`) also puts
the id this version derives for its contact in the done-set: an old output is adopted without
paying anyone again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.identity import derive_request_id, is_legacy_id, person_key, read_person_hash
from octave_bulk.state.files import NdjsonAppender, iter_ndjson, repair_tail
from octave_bulk.state.idset import IdSet, id_key
from octave_bulk.state.rows import OutcomeRow

__all__ = [
    "ErrorsScan",
    "ResultsScan",
    "complete_lines",
    "line_request_id",
    "quarantine_lines",
    "scan_errors",
    "scan_results",
    "whole_result",
]

_ID_MARK = b'"requestId":"'
_PERSON_MARK = b'"personKey":"'
_RUN_MARK = b'"runId":"'


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


_LINE_HEAD = b'{"requestId":"'
_LINE_TAIL = b'"completedAt":"'


def whole_result(line: bytes) -> bool:
    """Whether a results line (ending in a newline) is one whole record, cheaply: a line as
    the sink writes it starts with the requestId, ends with ``"completedAt":"..."}`` and holds
    one record head; anything else is parsed. A line cut short that still ends in a newline
    (a crash of the filesystem, an edit) must not count as done."""
    if (
        line.startswith(_LINE_HEAD)
        and line.endswith(b'"}\n')
        and line.find(_LINE_TAIL, len(line) - 48) > 0
        and line.count(_LINE_HEAD) == 1
    ):
        return True
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(record, dict) and isinstance(record.get("requestId"), str)


def complete_lines(path: Path, offset: int = 0) -> Iterator[bytes]:
    """The lines of an NDJSON file from byte ``offset`` up to a torn tail (a line without its
    newline: being written right now, or torn by a kill and not repaired yet)."""
    if not path.exists():
        return
    with open(path, "rb", buffering=1 << 20) as handle:
        handle.seek(offset)
        for line in handle:
            if not line.endswith(b"\n"):
                return
            yield line


@dataclass
class ResultsScan:
    """What ``OUT.ndjson`` holds: the done-set, its line count and what repair dropped, and
    the people done (person key -> the 1-based line of their latest result); ``size``: the
    bytes read (complete lines)."""

    done: IdSet
    lines: int
    repaired_bytes: int
    bad_lines: int
    persons: IdSet
    path: Path
    size: int = 0


def scan_results(
    path: Path,
    *,
    repair: bool = True,
    base: ResultsScan | None = None,
    on_row: Callable[[OutcomeRow], None] | None = None,
    quarantine: Path | None = None,
) -> ResultsScan:
    """Repair the tail of the results file (unless ``repair`` is false: then a torn last line
    is only ignored, for readers that must not write) and build its done-set - from ``base``
    on, when given (a snapshot: only the lines after ``base.size`` are read). ``on_row`` gets
    the index row of every line read. A line that is not a whole record (:func:`whole_result`)
    is not done (its contact is sent again), counted in ``bad_lines`` and copied to
    ``quarantine`` when given (once per line: its byte offset is kept with it)."""
    repaired = repair_tail(path) if repair else 0
    if base is None:
        # Sized from the file (results lines are ~2-5 KB) so that the table rarely grows.
        size = path.stat().st_size if path.exists() else 0
        base = ResultsScan(
            IdSet(size // 2048), 0, 0, 0, IdSet(size // 2048, with_values=True), path
        )
    done, persons, lines, bad, offset = (
        base.done,
        base.persons,
        base.lines,
        base.bad_lines,
        base.size,
    )
    add, put = done.add, persons.put
    quarantined: list[tuple[int, int, bytes]] = []
    for line in complete_lines(path, offset):
        start = offset
        offset += len(line)
        lines += 1
        rid = line_request_id(line) if whole_result(line) else None
        if rid is None:
            bad += 1
            quarantined.append((start, lines, line))
            continue
        add(id_key(rid))
        person = None
        mark = line.find(_PERSON_MARK, 0, 160)
        if mark >= 0:
            at = mark + len(_PERSON_MARK)
            person = read_person_hash(line[at : at + 16])
        if person is None:  # written before the person key: parsed (only such lines), adopted
            contact = _contact(line)
            if contact is not None and (key := person_key(contact)) is not None:
                person = id_key(key)
            if contact is not None and is_legacy_id(rid):
                add(id_key(derive_request_id(contact)))
        if person is not None:
            put(person, lines)
        if on_row is not None:
            on_row((person or id_key(rid), rid, "ok", _run_id(line), start))
    if quarantined and quarantine is not None:
        quarantine_lines(quarantine, path, quarantined)
    return ResultsScan(done, lines, repaired, bad, persons, path, offset)


def quarantine_lines(target: Path, source: Path, bad: list[tuple[int, int, bytes]]) -> None:
    """Copy bad lines to ``target`` (one record each: the file, byte offset, line number, the
    raw bytes as text), skipping those copied before. The results file keeps them (readers
    skip a line that is not JSON); their contacts are sent again."""
    seen = {(record.get("file"), record.get("offset")) for record in iter_ndjson(target)}
    appender = NdjsonAppender(target)
    try:
        for start, number, line in bad:
            if (str(source), start) in seen:
                continue
            record = {
                "file": str(source),
                "offset": start,
                "line": number,
                "bytes": len(line),
                "raw": line.decode("utf-8", "replace"),
            }
            appender.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
    finally:
        appender.close()


def _contact(line: bytes) -> dict[str, Any] | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    contact = record.get("contact") if isinstance(record, dict) else None
    return contact if isinstance(contact, dict) else None


def _run_id(line: bytes) -> str | None:
    mark = line.find(_RUN_MARK, 0, 200)
    if mark < 0:
        return None
    start = mark + len(_RUN_MARK)
    end = line.find(b'"', start)
    return line[start:end].decode("utf-8", "replace") if end > start else None


@dataclass
class ErrorsScan:
    """Keys of the contacts whose last recorded outcome was a failure, not done since;
    ``size``: the bytes read."""

    permanent: set[int] = field(default_factory=set)
    retryable: set[int] = field(default_factory=set)
    size: int = 0


def scan_errors(
    path: Path,
    done: IdSet,
    *,
    repair: bool = True,
    base: ErrorsScan | None = None,
    on_row: Callable[[OutcomeRow], None] | None = None,
) -> ErrorsScan:
    """Repair the errors file's tail (unless ``repair`` is false); the last record of each id
    decides its kind (from ``base`` on, when given). ``on_row`` gets index rows."""
    if repair:
        repair_tail(path)
    scan = base or ErrorsScan()
    offset = scan.size
    last: dict[int, bool] = {}
    for line in complete_lines(path, offset):
        start = offset
        offset += len(line)
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        rid = record.get("requestId") if isinstance(record, dict) else None
        if not isinstance(rid, str):
            continue
        key = id_key(rid)
        retryable = bool((record.get("error") or {}).get("retryable"))
        last[key] = retryable
        if on_row is not None:
            contact = record.get("contact")
            person = person_key(contact) if isinstance(contact, dict) else None
            run = record.get("runId")
            state = "retryable" if retryable else "permanent"
            on_row((id_key(person or rid), rid, state, str(run) if run else None, start))
    for key, retryable in last.items():
        scan.permanent.discard(key)
        scan.retryable.discard(key)
        (scan.retryable if retryable else scan.permanent).add(key)
    return ErrorsScan(
        {k for k in scan.permanent if k not in done},
        {k for k in scan.retryable if k not in done},
        offset,
    )
