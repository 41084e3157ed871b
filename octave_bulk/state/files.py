"""Writing files safely: private modes, whole lines, atomic replacement, torn-tail repair.

Every file octave-bulk writes goes through here, so these rules hold everywhere:

* files are created mode 0600 (results hold personal data), whatever the umask;
* what is written never holds the API key (or another registered secret): every line and
  every whole file is scrubbed on its way to the disk (:mod:`octave_bulk.redact`), whichever
  answer, message or path it came from;
* an NDJSON record is one ``os.write`` of one whole line, so a kill -9 can tear at most the
  last line, which :func:`repair_tail` cuts off at the next start;
* a file replaced as a whole (summary, cursor, metrics, exports) is written to a temp file,
  fsynced, renamed over the old one and its directory fsynced: a reader sees the old file or
  the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.redact import scrub

__all__ = [
    "NdjsonAppender",
    "atomic_file",
    "iter_ndjson",
    "open_private",
    "repair_tail",
    "results_agent",
    "write_atomic",
    "write_json_atomic",
]


def open_private(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` with ``mode`` enforced even on an existing file; returns the descriptor."""
    fd = os.open(path, flags | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
    except OSError:  # pragma: no cover - a filesystem without modes
        pass
    return fd


@contextlib.contextmanager
def atomic_file(path: Path, *, mode: int = 0o600) -> Iterator[int]:
    """A descriptor to write ``path``'s new content to; on a clean exit the content replaces
    ``path`` (fsync, rename, fsync of the directory), on an error the temp file is removed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            yield fd
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written == len(data):  # nearly always: one write, no view
        return
    view = memoryview(data)[written:]
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``, crash-consistently (see :func:`atomic_file`)."""
    with atomic_file(path, mode=mode) as fd:
        _write_all(fd, scrub(data))


def write_json_atomic(path: Path, payload: Any) -> None:
    """Replace ``path`` with indented JSON, crash-consistently."""
    write_atomic(path, orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")


class NdjsonAppender:
    """An append-only NDJSON file, created mode 0600.

    Args:
        path: the file.
        keep: cut the file to this many bytes first (0 empties it); None keeps it whole.
    """

    def __init__(self, path: Path, *, keep: int | None = None) -> None:
        self.path = path
        self._fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        if keep is not None:
            os.ftruncate(self._fd, keep)
        self.size = os.fstat(self._fd).st_size
        self.dirty = False

    def write(self, line: bytes) -> None:
        """Write one whole line (``line`` must end with a newline), scrubbed."""
        line = scrub(line)
        _write_all(self._fd, line)
        self.size += len(line)
        self.dirty = True

    def sync(self) -> None:
        """fsync if anything was written since the last sync."""
        if self.dirty:
            self.dirty = False
            os.fsync(self._fd)

    def close(self) -> None:
        """Sync and close."""
        self.sync()
        os.close(self._fd)


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
        keep, pos = 0, size
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            handle.seek(pos)
            newline = handle.read(step).rfind(b"\n")
            if newline >= 0:
                keep = pos + newline + 1
                break
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


def results_agent(results: Path) -> str | None:
    """The agent whose results ``results`` holds: its first line's ``agentType`` (none is the
    Sequence Agent); None for a missing, empty or unreadable file. An output belongs to one
    agent: a run of another agent into it, or an export preset of another agent, is refused."""
    try:
        with open(results, "rb") as handle:
            first = handle.readline(1 << 24)
    except OSError:
        return None
    try:
        record = orjson.loads(first) if first.strip() else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    return str(record.get("agentType") or "sequence")
