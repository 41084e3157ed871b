"""The done-set: 64-bit keys of requestIds in a compact open-addressing table.

A resume holds one key per contact already done; at ~12 bytes per id (plus ~6 with values)
instead of ~80-110 for a Python set of strings, a million done contacts fit in ~24 MB
(docs/performance.md, section "Resume scan and done-set").
"""

from __future__ import annotations

import hashlib
from array import array

__all__ = ["IdSet", "id_key"]


def id_key(request_id: str) -> int:
    """The done-set key of a requestId: 64 bits of BLAKE2b, never 0 (0 marks an empty slot).

    Collisions need ~4 billion ids for even odds; at 1M ids the chance is ~3e-8.
    """
    key = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    return key or 1


class IdSet:
    """A set of 64-bit keys in an open-addressing table: ~12 bytes per id (plus ~6 with
    values) instead of ~80-110 for a Python set of strings or bytes.

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

    def get(self, key: int) -> int | None:
        """The value kept for ``key`` (0 in a table without values), None when absent."""
        table, size = self._table, self._size
        i = key % size
        while (present := table[i]) != 0:
            if present == key:
                return self._values[i] if self._values is not None else 0
            i = i + 1 if i + 1 < size else 0
        return None

    def put(self, key: int, value: int) -> None:
        """Store ``value`` for ``key``, replacing what was kept (a table with values only)."""
        slot = self._insert(key, value)
        if slot >= 0 and self._values is not None:
            self._values[slot] = value

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

    def to_bytes(self) -> bytes:
        """The table as bytes (for :meth:`from_bytes`): the ledger keeps it between runs."""
        values = self._values.tobytes() if self._values is not None else b""
        header = array("Q", [self._size, self._count, len(values)]).tobytes()
        return header + self._table.tobytes() + values

    @classmethod
    def from_bytes(cls, data: bytes) -> IdSet:
        """A table saved by :meth:`to_bytes` (ValueError when ``data`` is not one)."""
        header = array("Q", data[:24])
        if len(header) != 3 or len(data) != 24 + 8 * header[0] + header[2]:
            raise ValueError("not a saved IdSet")
        size, count, values_bytes = header
        table = cls.__new__(cls)
        table._with_values = bool(values_bytes)
        table._size, table._count = size, count
        table._table = array("Q", data[24 : 24 + 8 * size])
        table._values = array("I", data[24 + 8 * size :]) if values_bytes else None
        return table

    def nbytes(self) -> int:
        """Memory held by the table."""
        values = 0 if self._values is None else self._values.itemsize * len(self._values)
        return self._table.itemsize * len(self._table) + values
