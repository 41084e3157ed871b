"""The files the settings name: can each one be written? (``doctor`` asks, before any run.)

A config file may name a log file, a metrics textfile and a ledger; a run writes them but does
not create their folders. :func:`settings_path_problems` checks, without creating anything,
that each named file either exists as a writable regular file or could be created in an
existing, writable folder, and says what is wrong with each one that could not.
"""

from __future__ import annotations

import os
from pathlib import Path

from octave_bulk.settings import Settings

__all__ = ["PATH_SETTINGS", "settings_path_problems", "writable_problem"]

PATH_SETTINGS = ("log_file", "metrics_textfile", "ledger")
"""The settings that name a file a run writes."""


def writable_problem(path: Path) -> str | None:
    """Why ``path`` could not be written (a missing or read-only folder...), or None."""
    if path.is_dir():
        return "is a folder, not a file"
    if path.exists():
        return None if os.access(path, os.W_OK) else "exists but cannot be written"
    folder = path.parent
    if not folder.exists():
        return f"its folder {folder} does not exist (create it first)"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"its folder {folder} cannot be written"
    return None


def settings_path_problems(settings: Settings) -> list[str]:
    """``name path: problem`` for each file the settings name that could not be written."""
    problems = []
    for name in PATH_SETTINGS:
        path = getattr(settings, name)
        if path is not None:
            problem = writable_problem(Path(path))
            if problem:
                problems.append(f"{name} {path}: {problem}")
    return problems
