"""The resume cursor: where in the input every earlier row is already settled.

Resuming must skip the rows whose ``requestId`` is done, and a row's id is only known after it
is read, validated and built (~20 us a row: 4 s per 200k done rows). The cursor lets a resume
skip that work for the *settled prefix* of the input: the physical lines before which every row
ended in a way a plain resume would skip again (a durable success, already done, a permanent
failure, a reject, a duplicate). Those lines are skipped unparsed; every row after them is read
and checked against the done-set as before, so the cursor is only ever a shortcut.

It is kept in ``OUT.cursor.json`` (replaced atomically, every few seconds and at the end of a
run) and used only when all of these still hold, else ignored (a full re-read, never a loss):

* the input is the same regular file: size, mtime and a hash of its first 64 KiB;
* the settings that shape reading and requests are the same (their fingerprint);
* ``OUT.ndjson`` is the same file (device, inode) and at least as long as when it was written;
* ``OUT.rejects.ndjson`` still holds the prefix's rejects (it is cut back to them, not emptied);
* ``--retry-failed`` is off (that re-reads permanent failures) and the input is CSV;
* ``OUT.cursor.keys`` still holds the prefix's first rows (see below).

Duplicates are judged against every earlier row, and the prefix's rows are not read on a
resume: so the first row of every request and person in the prefix is kept too, as
``(key, line)`` u64 pairs appended to ``OUT.cursor.keys`` with each save (``keys_bytes`` in
the cursor says how much of it belongs to the prefix). A resume seeds the duplicate table
with them: a later row of a person first seen in the prefix is a ``duplicate`` reject, as on
a full re-read, not ``skipped_done``.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import stat
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson

from octave_bulk.observe.log import log_event
from octave_bulk.state.files import open_private, write_atomic
from octave_bulk.state.paths import OutputPaths

__all__ = [
    "COUNTED",
    "CursorKeeper",
    "Frontier",
    "ResumeCursor",
    "input_identity",
    "load_cursor",
    "load_first_rows",
    "save_cursor",
]

_VERSION = 2  # 2: keys_bytes (the prefix's first rows)
_HEAD_BYTES = 64 * 1024
COUNTED = ("read", "skipped_done", "skipped_failed", "rejected", "duplicate", "filtered_out")


def input_identity(path: str | Path) -> dict[str, Any] | None:
    """Size, mtime and head hash of a regular input file; None for stdin or anything else."""
    # Checked before opening: reading the head of a pipe (``<(cat export.csv)``) would take
    # those bytes away from the reader.
    if str(path) == "-" or not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return None
            head = handle.read(_HEAD_BYTES)
    except OSError:
        return None
    return {
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "head_sha256": hashlib.sha256(head).hexdigest(),
    }


@dataclass(slots=True)
class ResumeCursor:
    """A settled prefix: skip ``line`` physical lines; ``counts`` is what they held."""

    line: int = 0
    rejects_bytes: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    rejects_by_reason: Counter[str] = field(default_factory=Counter)
    keys_bytes: int = 0


def _file_id(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size


def load_cursor(
    paths: OutputPaths, identity: dict[str, Any] | None, fingerprint: str
) -> tuple[ResumeCursor | None, str]:
    """The saved cursor if it still applies, else None; and why (for the start log)."""
    if identity is None:
        return None, "the input is not a regular file"
    try:
        saved = orjson.loads(paths.cursor.read_bytes())
    except FileNotFoundError:
        return None, "no cursor"
    except (OSError, orjson.JSONDecodeError):
        return None, "unreadable cursor"
    try:
        results = _file_id(paths.results)
        rejects = _file_id(paths.rejects)
        if saved["version"] != _VERSION:
            return None, "a cursor of another version"
        if saved["fingerprint"] != fingerprint:
            return None, "settings changed"
        if saved["input"] != identity:
            return None, "input changed"
        if results is None or [results[0], results[1]] != saved["results_file"][:2]:
            return None, "output replaced"
        if results[2] < saved["results_file"][2]:
            return None, "output shorter than when the cursor was saved"
        if rejects is None or rejects[2] < saved["rejects_bytes"]:
            return None, "rejects file shorter than when the cursor was saved"
        keys = _file_id(paths.cursor_keys)
        if (keys[2] if keys else 0) < int(saved["keys_bytes"]):
            return None, "first-rows file shorter than when the cursor was saved"
        cursor = ResumeCursor(
            line=int(saved["line"]),
            rejects_bytes=int(saved["rejects_bytes"]),
            counts=Counter({k: int(saved["counts"].get(k, 0)) for k in COUNTED}),
            rejects_by_reason=Counter(
                {str(k): int(v) for k, v in saved["rejects_by_reason"].items()}
            ),
            keys_bytes=int(saved["keys_bytes"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None, "unreadable cursor"
    return cursor, "ok"


def save_cursor(
    paths: OutputPaths, cursor: ResumeCursor, identity: dict[str, Any], fingerprint: str
) -> None:
    """Replace ``OUT.cursor.json`` (call only for a prefix whose outcomes are durable)."""
    results = _file_id(paths.results)
    if results is None:
        return
    data = {
        "version": _VERSION,
        "fingerprint": fingerprint,
        "input": identity,
        "results_file": list(results),
        "line": cursor.line,
        "rejects_bytes": cursor.rejects_bytes,
        "counts": dict(cursor.counts),
        "rejects_by_reason": dict(cursor.rejects_by_reason),
        "keys_bytes": cursor.keys_bytes,
    }
    write_atomic(paths.cursor, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


def load_first_rows(paths: OutputPaths, cursor: ResumeCursor) -> array[int]:
    """The prefix's first rows, ``(key, line)`` pairs flat (see the module docstring)."""
    pairs = array("Q")
    if cursor.keys_bytes:
        with open(paths.cursor_keys, "rb") as handle:
            pairs.frombytes(handle.read(cursor.keys_bytes))
    return pairs


class _Span:
    """Consecutive rows: all settled, or one row still open (sent, awaiting its outcome)."""

    __slots__ = ("counts", "end_line", "open", "reason", "rejects_bytes")

    def __init__(self, end_line: int, rejects_bytes: int, open_: bool) -> None:
        self.end_line, self.rejects_bytes, self.open = end_line, rejects_bytes, open_
        # Plain dicts: a span is made for every row sent, and a Counter costs ~1 us to make.
        self.counts: dict[str, int] = {}
        self.reason: dict[str, int] = {}


class Frontier:
    """Follows rows in input order as they settle; ``cursor()`` is the settled prefix.

    Rows are added in input order with the line they end on and the rejects file's size after
    them. Settled rows merge into one span, so memory grows with the rows still open (about
    the in-flight cap), not with the input. A row that fails retryably never settles in this
    run: the prefix cannot pass it, so rows after it are no longer followed.
    """

    def __init__(self, start: ResumeCursor) -> None:
        self._base = ResumeCursor(
            start.line, start.rejects_bytes, Counter(start.counts), Counter(start.rejects_by_reason)
        )
        self._spans: collections.deque[_Span] = collections.deque()
        self._open: dict[str, _Span] = {}
        self._blocked = False

    def add(
        self,
        end_line: int,
        rejects_bytes: int,
        kind: str,
        *,
        open_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        """A row read: settled as ``kind`` (a ``COUNTED`` name besides ``read``), or still
        open under ``open_id`` (then ``kind`` is what it counts as once it settles)."""
        if self._blocked:
            return
        spans = self._spans
        if open_id is None and spans and not spans[-1].open:
            span = spans[-1]
            span.end_line, span.rejects_bytes = end_line, rejects_bytes
        else:
            span = _Span(end_line, rejects_bytes, open_id is not None)
            spans.append(span)
            if open_id is not None:
                self._open[open_id] = span
        counts = span.counts
        counts["read"] = counts.get("read", 0) + 1
        counts[kind] = counts.get(kind, 0) + 1
        if reason is not None:
            span.reason[reason] = span.reason.get(reason, 0) + 1

    def settle(self, request_id: str, kind: str | None = None) -> None:
        """The open row ``request_id`` has a durable outcome that a resume would skip;
        ``kind`` overrides what it counts as (``skipped_failed`` for a permanent failure)."""
        span = self._open.pop(request_id, None)
        if span is None:
            return
        if kind is not None:
            span.counts = {"read": 1, kind: 1}
        span.open = False
        self._advance()

    def block(self, request_id: str) -> None:
        """The open row ``request_id`` failed retryably: the prefix stops before it."""
        span = self._open.get(request_id)
        if span is None:
            return
        self._blocked = True
        dropped: set[int] = set()
        while self._spans:  # the blocked row and every row after it can never join the prefix
            last = self._spans.pop()
            dropped.add(id(last))
            if last is span:
                break
        self._open = {rid: s for rid, s in self._open.items() if id(s) not in dropped}
        self._advance()

    def _advance(self) -> None:
        spans, base = self._spans, self._base
        while spans and not spans[0].open:
            span = spans.popleft()
            base.line, base.rejects_bytes = span.end_line, span.rejects_bytes
            base.counts.update(span.counts)
            if span.reason:
                base.rejects_by_reason.update(span.reason)

    def cursor(self) -> ResumeCursor:
        """The settled prefix so far (a copy)."""
        self._advance()  # rows settled when read never passed through settle()
        base = self._base
        return ResumeCursor(
            base.line, base.rejects_bytes, Counter(base.counts), Counter(base.rejects_by_reason)
        )


class CursorKeeper:
    """Saves the cursor of one run: periodically while it goes, and once at the end.

    Args:
        paths: the output's files.
        identity: the input's identity (None: stdin or NDJSON, where nothing is saved).
        fingerprint: the settings' fingerprint.
        snapshot: the settled prefix so far (called on the event loop's thread).
        interval: seconds between periodic saves.
    """

    def __init__(
        self,
        paths: OutputPaths,
        identity: dict[str, Any] | None,
        fingerprint: str,
        snapshot: Callable[[], ResumeCursor],
        interval: float = 5.0,
        *,
        first_rows: Callable[[int], bytes] | None = None,
        keys_bytes: int = 0,
    ) -> None:
        self.paths, self.identity, self.fingerprint = paths, identity, fingerprint
        self.snapshot, self.interval = snapshot, interval
        self.first_rows = first_rows
        self._keys_bytes = keys_bytes  # what OUT.cursor.keys holds for the saved prefix
        self._keys_pending = b""  # taken from the builder, not yet appended
        self._keys_cut = False

    def _take(self) -> tuple[ResumeCursor, bytes]:
        """The snapshot and the first rows it covers (on the loop's thread)."""
        cursor = self.snapshot()
        taken = self.first_rows(cursor.line) if self.first_rows is not None else b""
        self._keys_pending += taken
        return cursor, self._keys_pending

    def _save(self, cursor: ResumeCursor, keys: bytes) -> None:
        """Append the prefix's first rows, then replace the cursor that counts them (an
        OSError is only logged: the cursor is a shortcut for the next resume)."""
        try:
            if self.first_rows is not None:
                self._append_keys(keys)
            cursor.keys_bytes = self._keys_bytes
            save_cursor(self.paths, cursor, self.identity or {}, self.fingerprint)
        except OSError as exc:
            log_event("cursor_not_saved", level=logging.WARNING, error=str(exc))

    def _append_keys(self, keys: bytes) -> None:
        fd = open_private(self.paths.cursor_keys, os.O_WRONLY | os.O_CREAT)
        try:
            if not self._keys_cut:  # what lies past the prefix is from a run not saved
                os.ftruncate(fd, self._keys_bytes)
                self._keys_cut = True
            if keys:
                os.pwrite(fd, keys, self._keys_bytes)
                os.fsync(fd)
                self._keys_bytes += len(keys)
                if self._keys_pending.startswith(keys):
                    self._keys_pending = self._keys_pending[len(keys) :]
        finally:
            os.close(fd)

    def save(self, cursor: ResumeCursor | None = None) -> None:
        """Save now (the current snapshot unless ``cursor`` is given)."""
        if self.identity is None:
            return
        snapshot, keys = self._take()
        self._save(cursor or snapshot, keys)

    async def run(self) -> None:
        """Save every ``interval`` seconds until cancelled."""
        while True:
            await anyio.sleep(self.interval)
            if self.identity is None:
                continue
            # The snapshot on the loop's thread (the frontier is not thread-safe), the fsyncs
            # off it.
            cursor, keys = self._take()
            await anyio.to_thread.run_sync(self._save, cursor, keys)
