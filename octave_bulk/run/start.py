"""Before a run's first call: where the input resumes, what a resume must match, how big the
input is.

- :func:`resume_cursor` skips the input's settled prefix when the cursor an earlier run saved
  still applies (same input, same settings fingerprint; CSV only, not with ``--retry-failed``).
- :func:`settings_fingerprint` is what must match for it: the agent, how rows are read, how
  requests are built.
- :func:`count_lines` is the input's rough size, for the progress bar and the duplicate table.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from octave_bulk.input.intake import reader_options
from octave_bulk.input.reader import ContactReader
from octave_bulk.run.build import request_spec
from octave_bulk.settings.model import Settings
from octave_bulk.state.cursor import ResumeCursor, load_cursor
from octave_bulk.state.paths import OutputPaths

__all__ = ["count_lines", "resume_cursor", "settings_fingerprint"]


def resume_cursor(
    reader: ContactReader,
    paths: OutputPaths,
    settings: Settings,
    identity: dict[str, Any] | None,
    fingerprint: str,
) -> tuple[ResumeCursor, str]:
    """Skip the input's settled prefix if a saved cursor still applies; what was skipped and
    why (or why not)."""
    if settings.retry_failed:
        return ResumeCursor(), "not used with --retry-failed"
    if reader.format != "csv":
        return ResumeCursor(), "not used for NDJSON input"
    cursor, note = load_cursor(paths, identity, fingerprint)
    if cursor is None:
        return ResumeCursor(), note
    reader.skip_to(cursor.line, cursor.counts["read"])
    return cursor, f"skipped {cursor.counts['read']:,} settled rows (lines up to {cursor.line:,})"


def settings_fingerprint(settings: Settings) -> str:
    """What must match for a resume cursor to apply: the agent, how rows are read and
    requests built."""
    shape = repr((settings.agent_type, reader_options(settings), request_spec(settings)))
    return hashlib.sha256(shape.encode()).hexdigest()


def count_lines(path: Path | None) -> int | None:
    """Input records, roughly (lines minus the header), for the progress bar's total."""
    if path is None or not path.is_file():
        return None
    lines = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
    return max(0, lines - 1)
