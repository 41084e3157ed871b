"""Where a run's files live: ``OUT.ndjson`` and the side files named after it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from octave_bulk.errors import StateError

__all__ = ["OutputPaths"]


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
    def lock(self) -> Path:
        """Held while a run writes to these files."""
        return self._side(".lock")
