"""The run lock: one run at a time per output, and who holds it.

``OUT.lock`` is locked with ``flock`` while a run writes to the output's files; it holds the
holder's pid, host and start time as one JSON line, so that a refused run, ``status`` and
``validate`` can say who is running. The kernel drops the lock when the holder dies, even by
kill -9, so a stale file never blocks the next run; a run that ends removes the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path

from octave_bulk.errors import StateError
from octave_bulk.state.files import open_private
from octave_bulk.state.paths import OutputPaths
from octave_bulk.utc import utc_iso

__all__ = ["RunLock", "refuse_while_running"]


class RunLock:
    """An exclusive lock on the output, so that two runs never write the same files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def holder(self) -> str | None:
        """Who holds the lock (its pid, host and start), or None when no run holds it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Take the lock or raise StateError naming who holds it."""
        while True:
            fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise StateError(
                    f"{self.path.name}: another run is using this output ({holder}); "
                    "wait for it to finish or use another -o"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed that file as we opened it: lock the new one
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_iso(ms=False)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock and remove its file (removed while still locked, so that a run
        that opened it meanwhile sees, once it has the lock, that it is not the file at the
        path any more, and takes the path's new one)."""
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is the file now at ``path``."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def refuse_while_running(paths: OutputPaths, why: str) -> None:
    """Raise StateError naming the holder if a run is using the output (``why``: what a
    command that does not take the lock would break, e.g. "validate would rewrite its rejects")."""
    holder = RunLock(paths.lock).holder()
    if holder is not None:
        raise StateError(
            f"{paths.results}: a run is using this output ({holder}) and {why}; "
            "nothing was written: wait for it to finish or use another -o"
        )
