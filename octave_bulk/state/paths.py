"""Where a run's files live: ``OUT.ndjson`` and the side files named after it.

The output's path is resolved first when a symlink is on the way (``os.path.realpath``): an
output reached through a symlink, or through a symlinked folder, has the same side files, and
so the same lock, as the file itself - two runs never write one results file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from octave_bulk.errors import StateError

__all__ = ["OutputPaths", "migrate_jsonl_side_files"]


@dataclass(frozen=True)
class OutputPaths:
    """``OUT.ndjson`` and its side files (the output's name with its extension replaced)."""

    results: Path

    @classmethod
    def for_output(cls, out: str | Path) -> OutputPaths:
        """Paths for an output file (resolved: see the module docstring); the file it names
        must end in .ndjson or .jsonl."""
        given = Path(out)
        real = os.path.realpath(given)
        # Without a symlink on the way, the name as given (shorter in messages) is the file.
        path = given if real == os.path.abspath(given) else Path(real)
        if path.suffix not in {".ndjson", ".jsonl"}:
            target = "" if path.name == given.name else f" (a link to {path})"
            raise StateError(f"{given}{target}: the output must end in .ndjson or .jsonl")
        return cls(path)

    def _side(self, suffix: str) -> Path:
        # out.ndjson -> out.errors.ndjson; out.jsonl -> out.jsonl.errors.ndjson, so that
        # out.jsonl and out.ndjson in one folder never share a side file (lock, errors,
        # cursor, in-flight slots, summary).
        if self.results.suffix == ".jsonl":
            return self.results.with_name(self.results.name + suffix)
        return self.results.with_name(self.results.stem + suffix)

    def legacy_side_files(self) -> list[tuple[Path, Path]]:
        """(name before this version, name now) of a ``.jsonl`` output's side files."""
        if self.results.suffix != ".jsonl":
            return []
        pairs = []
        for new in self.side_files():
            old = new.with_name(self.results.stem + new.name[len(self.results.name) :])
            pairs.append((old, new))
        return pairs

    def side_files(self) -> list[Path]:
        """Every side file (the ledger with its WAL files), the lock last."""
        ledger = self.ledger
        return [
            self.errors,
            self.rejects,
            self.corrupt,
            self.summary,
            self.inflight,
            self.cursor,
            self.cursor_keys,
            self.limits,
            self.jobs,
            self.callback_token,
            ledger,
            ledger.with_name(ledger.name + "-wal"),
            ledger.with_name(ledger.name + "-shm"),
            self.lock,
        ]

    @property
    def errors(self) -> Path:
        """Failures: one line per contact whose attempts in a run ended in failure."""
        return self._side(".errors.ndjson")

    @property
    def rejects(self) -> Path:
        """Input rows that never became requests (rewritten by each run)."""
        return self._side(".rejects.ndjson")

    @property
    def corrupt(self) -> Path:
        """Results lines that are not whole records, copied here when a run finds them."""
        return self._side(".corrupt.ndjson")

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
    def cursor_keys(self) -> Path:
        """The settled prefix's first rows (see ``octave_bulk.state.cursor``)."""
        return self._side(".cursor.keys")

    @property
    def ledger(self) -> Path:
        """The run history (SQLite; see ``octave_bulk.state.history``)."""
        return self._side(".ledger.sqlite")

    @property
    def limits(self) -> Path:
        """The server limits the last run settled at (see ``octave_bulk.state.limits``)."""
        return self._side(".limits.json")

    @property
    def jobs(self) -> Path:
        """Async job handles awaiting their result (see ``octave_bulk.state.jobs``)."""
        return self._side(".jobs.ndjson")

    @property
    def callback_token(self) -> Path:
        """The secret segment of the async callback path (see ``octave_bulk.run.callbacks``)."""
        return self._side(".callback-token")

    @property
    def lock(self) -> Path:
        """Held while a run writes to these files."""
        return self._side(".lock")


def migrate_jsonl_side_files(paths: OutputPaths) -> list[Path]:
    """Give a ``.jsonl`` output's side files their own names (``out.jsonl.errors.ndjson``):
    those written under the old shared names (``out.errors.ndjson``) are renamed, unless an
    ``out.ndjson`` beside it may own them. Called by a run, under the output's lock; returns
    the files renamed."""
    if paths.results.suffix != ".jsonl" or paths.results.with_suffix(".ndjson").exists():
        return []
    moved = []
    for old, new in paths.legacy_side_files():
        if old == paths.lock or not old.exists() or new.exists():
            continue
        old.rename(new)
        moved.append(new)
    return moved
