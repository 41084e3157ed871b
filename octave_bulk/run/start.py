"""Before a run's first call: where the input resumes, what a resume must match, how big the
input is.

- :func:`resume_cursor` skips the input's settled prefix when the cursor an earlier run saved
  still applies (same input, same settings fingerprint; CSV only, not with ``--retry-failed``).
- :func:`settings_fingerprint` is what must match for it: the agent, how rows are read, how
  requests are built.
- :func:`input_file` says whether the input can be read twice (a regular file) and its size
  in bytes (an upper bound of its rows, for the credit check).
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

__all__ = ["input_file", "resume_cursor", "settings_fingerprint"]


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


def input_file(input_path: str | Path) -> tuple[Path, int] | None:
    """The input as a regular file and its size in bytes (an upper bound of its rows);
    None for stdin, a pipe or anything else that cannot be read twice."""
    path = Path(input_path)
    if str(input_path) == "-" or not path.is_file():
        return None
    return path, path.stat().st_size
