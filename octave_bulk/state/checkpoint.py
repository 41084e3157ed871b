"""Durable run state: what is done, what failed, what was in flight, and who holds the output.

The results file ``OUT.ndjson`` is the ledger. On start we repair a torn last line (truncate to
the last newline: a kill -9 can only tear the line being written), then scan it into a compact
done-set of 64-bit keys. Every line starts with ``{"requestId":"...``, so the scan finds the id
with a byte search instead of parsing JSON (perf-notes §6).

``OUT.inflight`` holds one fixed-size slot per call on the wire: the requestId is written before
the call is sent and cleared once its outcome is durable. Slots left non-empty by a killed run
are calls whose outcome is unknown (they may have been paid): they are reported, then retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.errors import StateError

__all__ = [
    "ErrorsScan",
    "IdSet",
    "InflightSlots",
    "OutputPaths",
    "ResultsScan",
    "RunLock",
    "id_key",
    "iter_ndjson",
    "line_request_id",
    "repair_tail",
    "scan_errors",
    "scan_results",
    "write_atomic",
    "write_json_atomic",
]

_ID_MARK = b'"requestId":"'
_SLOT = 256
_EMPTY_SLOT = bytes(_SLOT)


def id_key(request_id: str) -> int:
    """The done-set key of a requestId: 64 bits of BLAKE2b, never 0 (0 marks an empty slot).

    Collisions need ~4 billion ids for even odds; at 1M ids the chance is ~3e-8.
    """
    key = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    return key or 1


class IdSet:
    """A set of 64-bit keys in an open-addressing table: ~12 bytes per id (plus ~6 with
    values) instead of ~80-110 for a Python set of strings or bytes (perf-notes §6).

    Args:
        capacity: expected number of keys; sized right, the table never has to grow.
        with_values: also keep one unsigned 32-bit integer per key (see :meth:`setdefault`).
    """

    _LOAD = 0.7

    def __init__(self, capacity: int = 1024, *, with_values: bool = False) -> None:
        self._with_values = with_values
        self._allocate(max(1024, int(capacity / self._LOAD) + 1))

    def _allocate(self, size: int) -> None:
        self._size = size
        self._table = array("Q", bytes(8 * size))
        self._values = array("I", bytes(4 * size)) if self._with_values else None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int):
            return False
        table, size = self._table, self._size
        i = key % size
        while (value := table[i]) != 0:
            if value == key:
                return True
            i = i + 1 if i + 1 < size else 0
        return False

    def add(self, key: int) -> bool:
        """Add a key; True when it was not there yet."""
        return self._insert(key, 0) < 0

    def setdefault(self, key: int, value: int) -> int:
        """The value kept for ``key``, storing ``value`` first if the key is new."""
        slot = self._insert(key, value)
        if slot < 0:
            return value
        return self._values[slot] if self._values is not None else 0

    def _insert(self, key: int, value: int) -> int:
        """-1 when inserted, else the slot where the key already was."""
        if self._count + 1 > self._size * self._LOAD:
            self._grow()
        table, size = self._table, self._size
        i = key % size
        while (present := table[i]) != 0:
            if present == key:
                return i
            i = i + 1 if i + 1 < size else 0
        table[i] = key
        if self._values is not None:
            self._values[i] = value
        self._count += 1
        return -1

    def _grow(self) -> None:
        old_keys, old_values = self._table, self._values
        self._allocate(self._size * 2)
        for slot, key in enumerate(old_keys):
            if key:
                self._insert(key, old_values[slot] if old_values is not None else 0)

    def nbytes(self) -> int:
        """Memory held by the table."""
        values = 0 if self._values is None else self._values.itemsize * len(self._values)
        return self._table.itemsize * len(self._table) + values


@dataclass(frozen=True)
class OutputPaths:
    """``OUT.ndjson`` and its side files (the output's name with its extension replaced)."""

    results: Path

    @classmethod
    def for_output(cls, out: str | Path) -> OutputPaths:
        """Paths for an output file; it must end in .ndjson or .jsonl."""
        path = Path(out)
        if path.suffix not in {".ndjson", ".jsonl"}:
            raise StateError(f"{path}: the output must end in .ndjson or .jsonl")
        return cls(path)

    def _side(self, suffix: str) -> Path:
        return self.results.with_name(self.results.stem + suffix)

    @property
    def errors(self) -> Path:
        """Failures: one line per contact whose attempts in a run ended in failure."""
        return self._side(".errors.ndjson")

    @property
    def rejects(self) -> Path:
        """Input rows that never became requests (rewritten by each run)."""
        return self._side(".rejects.ndjson")

    @property
    def summary(self) -> Path:
        """The last run's report, replaced atomically."""
        return self._side(".summary.json")

    @property
    def inflight(self) -> Path:
        """Slots of calls on the wire (see the module docstring)."""
        return self._side(".inflight")

    @property
    def cursor(self) -> Path:
        """Where the input's settled prefix ends (see ``octave_bulk.state.cursor``)."""
        return self._side(".cursor.json")

    @property
    def lock(self) -> Path:
        """Held while a run writes to these files."""
        return self._side(".lock")


def repair_tail(path: Path) -> int:
    """Truncate a torn last line (no trailing newline). Returns the bytes dropped."""
    if not path.exists():
        return 0
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        pos = size
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            handle.seek(pos)
            chunk = handle.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = pos + nl + 1
                break
        else:
            keep = 0
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
        return size - keep


def iter_ndjson(path: Path) -> Iterator[dict[str, Any]]:
    """Each JSON object line of a file (unparseable lines are skipped)."""
    if not path.exists():
        return
    with open(path, "rb", buffering=1 << 20) as handle:
        for line in handle:
            with contextlib.suppress(orjson.JSONDecodeError):
                record = orjson.loads(line)
                if isinstance(record, dict):
                    yield record


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


@dataclass
class ResultsScan:
    """What ``OUT.ndjson`` holds: the done-set, its line count and what repair dropped."""

    done: IdSet
    lines: int
    repaired_bytes: int
    bad_lines: int


def scan_results(path: Path, *, repair: bool = True) -> ResultsScan:
    """Repair the tail of the results file (unless ``repair`` is false: then a torn last line
    is only ignored, for readers that must not write) and build its done-set."""
    repaired = repair_tail(path) if repair else 0
    size = path.stat().st_size if path.exists() else 0
    # Sized from the file (results lines are ~2-5 KB) so that the table rarely has to grow.
    done, lines, bad = IdSet(size // 2048), 0, 0
    if path.exists():
        add = done.add
        with open(path, "rb", buffering=1 << 20) as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # a torn tail we may not repair
                lines += 1
                rid = line_request_id(line)
                if rid is None:
                    bad += 1
                else:
                    add(id_key(rid))
    return ResultsScan(done=done, lines=lines, repaired_bytes=repaired, bad_lines=bad)


@dataclass
class ErrorsScan:
    """Contacts whose last recorded run ended in failure and that have not succeeded since."""

    permanent: set[int]


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
    return ErrorsScan(permanent={k for k, retryable in last.items() if not retryable})


class InflightSlots:
    """Fixed-size slots in ``OUT.inflight``, one per call on the wire (see module docstring).

    Args:
        path: the slot file (emptied at start).
        carry: ids whose outcome is still unknown from an earlier run: they keep a slot until
            they succeed (:meth:`settle`), so a run that dies before re-sending them does not
            forget them.
    """

    def __init__(self, path: Path, carry: Iterable[str] = ()) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, 0)
        self._free: list[int] = []
        self._used = 0
        self._carried = {rid: self.claim(rid) for rid in carry}

    def settle(self, request_id: str) -> None:
        """A carried id now has a durable success: its old outcome no longer matters."""
        slot = self._carried.pop(request_id, None)
        if slot is not None:
            self.release(slot)

    @staticmethod
    def leftovers(path: Path) -> list[str]:
        """requestIds of calls that were on the wire when the last run died."""
        if not path.exists():
            return []
        data = path.read_bytes()
        ids = []
        for offset in range(0, len(data) - _SLOT + 1, _SLOT):
            slot = data[offset : offset + _SLOT]
            if slot != _EMPTY_SLOT:
                ids.append(slot.split(b"\n", 1)[0].decode("utf-8", "replace"))
        return ids

    def claim(self, request_id: str) -> int:
        """Record a call about to be sent; returns its slot."""
        slot = self._free.pop() if self._free else self._next()
        data = request_id.encode()[: _SLOT - 1] + b"\n"
        os.pwrite(self._fd, data.ljust(_SLOT, b"\0"), slot * _SLOT)
        return slot

    def _next(self) -> int:
        self._used += 1
        return self._used - 1

    def release(self, slot: int) -> None:
        """The call's outcome is durable (or it never got an answer worth keeping)."""
        os.pwrite(self._fd, _EMPTY_SLOT, slot * _SLOT)
        self._free.append(slot)

    def sync(self) -> None:
        """Flush the slots to disk."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file (slots still in use stay recorded)."""
        os.close(self._fd)


class RunLock:
    """An exclusive lock on the output, so that two runs never write the same files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise StateError naming who holds it."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise StateError(
                f"{self.path.name}: another run is using this output ({holder}); "
                "wait for it to finish or use another -o"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": _utc_now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock (the file stays; its content is only informative)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json_atomic(path: Path, payload: Any) -> None:
    """Replace ``path`` with JSON, crash-consistently (see :func:`write_atomic`)."""
    write_atomic(path, orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
