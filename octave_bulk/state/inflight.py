"""In-flight slots: which calls were on the wire when a run died.

``OUT.inflight`` holds one fixed-size slot per call on the wire: the requestId is written
before the call is sent and cleared once its outcome is durable. Slots left non-empty by a
killed run are calls whose outcome is unknown (they may have been paid): they are reported,
then retried. A run that ends with every slot empty removes the file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from octave_bulk.state.files import open_private

__all__ = ["InflightSlots"]

_SLOT = 256
_EMPTY_SLOT = bytes(_SLOT)


class InflightSlots:
    """Fixed-size slots in ``OUT.inflight``, one per call on the wire (see module docstring).

    Args:
        path: the slot file (emptied at start).
        carry: ids whose outcome is still unknown from an earlier run: they keep a slot until
            they succeed (:meth:`settle`), so a run that dies before re-sending them does not
            forget them.
    """

    def __init__(self, path: Path, carry: Iterable[str] = ()) -> None:
        self._path = path
        self._fd = open_private(path, os.O_RDWR | os.O_CREAT)
        os.ftruncate(self._fd, 0)
        self._free: list[int] = []
        self._used = 0
        # One slot per id: an id carried and then sent again by a killed run holds two.
        self._carried = {rid: self.claim(rid) for rid in dict.fromkeys(carry)}

    def settle(self, request_id: str) -> None:
        """A carried id now has a durable success: its old outcome no longer matters."""
        slot = self._carried.pop(request_id, None)
        if slot is not None:
            self.release(slot)

    @staticmethod
    def leftovers(path: Path) -> list[str]:
        """requestIds of calls that were on the wire when the last run died (each once)."""
        if not path.exists():
            return []
        data = path.read_bytes()
        ids = []
        for offset in range(0, len(data) - _SLOT + 1, _SLOT):
            slot = data[offset : offset + _SLOT]
            if slot != _EMPTY_SLOT:
                ids.append(slot.split(b"\n", 1)[0].decode("utf-8", "replace"))
        return list(dict.fromkeys(ids))

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
        """Close the file (slots still in use stay recorded); with none in use, remove it."""
        if not os.pread(self._fd, self._used * _SLOT, 0).strip(b"\0"):
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
        os.close(self._fd)
