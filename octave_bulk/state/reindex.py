"""Rebuild and check an output's index in the ledger (``octave-bulk ledger rebuild|check``).

Contract: :func:`rebuild` forgets the output's contacts, calls, coverage and snapshot and
indexes its files again from the first byte (under the output's run lock: never while a run
writes). Calls come back as the files tell them: one per line, attempt 0, no times. The runs
table is kept (the files do not hold what it records). :func:`check` reads the files alone and
compares each person's latest success (requestId and byte offset) and the coverage with the
ledger's rows (``contacts``, and the ``outcomes`` not folded into it yet); it writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from octave_bulk.state.file_view import load_output
from octave_bulk.state.history import RunHistory
from octave_bulk.state.index import OutcomeRow, OutputIndex, signed
from octave_bulk.state.lock import RunLock
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.scan import scan_results

__all__ = ["check", "rebuild"]


def rebuild(paths: OutputPaths, ledger: Path | None = None) -> dict[str, Any]:
    """Index the output's files again; the index's counts afterwards.

    Raises:
        StateError: a run holds the output's lock, or the ledger cannot be written.
    """
    lock = RunLock(paths.lock)
    lock.acquire()
    try:
        with RunHistory.open(ledger or paths.ledger) as history:
            index = OutputIndex(history, paths.results)
            index.reset()
            state = load_output(paths, index)
            index.save_snapshot(state.snapshot())
            return index.counts()
    finally:
        lock.release()


def check(paths: OutputPaths, ledger: Path | None = None) -> dict[str, Any]:
    """Whether the ledger's rows agree with the files (``agree``), and where they differ.

    Raises:
        StateError: the ledger cannot be read.
    """
    rows: list[OutcomeRow] = []
    scan = scan_results(paths.results, repair=False, on_row=rows.append)
    expected = {signed(person): (rid, offset) for person, rid, _, _, offset in rows}
    errors_size = paths.errors.stat().st_size if paths.errors.exists() else 0
    with RunHistory.open(ledger or paths.ledger, readonly=True) as history:
        index = OutputIndex(history, paths.results, readonly=True)
        covered = index.coverage()
        found = index.latest_successes()
        counts = index.counts()
    differ = [
        person
        for person in expected.keys() | found.keys()
        if expected.get(person) != found.get(person)
    ]
    coverage_ok = covered == (scan.size, errors_size)
    return {
        "agree": not differ and coverage_ok,
        "people_in_files": len(expected),
        "people_in_ledger": len(found),
        "people_differing": len(differ),
        "examples": [
            {
                "person": f"{person % (1 << 64):016x}",
                "files": expected.get(person),
                "ledger": found.get(person),
            }
            for person in differ[:5]
        ],
        "coverage": {"ledger": list(covered), "files": [scan.size, errors_size]},
        **counts,
    }
