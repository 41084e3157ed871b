"""Before the first call: every path a run will write can be written, and the machine can
hold the calls in flight.

A run that finds out at its end that the summary or metrics file cannot be written has paid
for its calls already; one whose output folder is read-only crashed at the lock. So every
path is checked at the start - the output and its side files, the lock, the ledger, the
metrics file (the log file is opened before the run; ``doctor`` checks it by the same rules:
:func:`settings_path_problems`) - and a path that cannot be written is a
:class:`StateError` naming it: exit 2, nothing sent. Temp files left by a killed run (``.NAME.
PID.tmp`` of the summary, cursor, limits or metrics) are removed here too.

:func:`check_descriptors` compares the open-file limit with the concurrency: a pool of 2,000
connections under ``ulimit -n 1024`` failed every connect with ``EMFILE``, which read as an API
failure. The soft limit is raised when the hard limit allows; else a clear error. With no
``--concurrency`` given, :func:`descriptor_room` bounds the window the limiter searches instead
(no error: the search stays below what this process may open).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from octave_bulk.errors import ConfigError, StateError
from octave_bulk.settings.model import Settings
from octave_bulk.state.files import results_agent
from octave_bulk.state.paths import OutputPaths

__all__ = [
    "PATH_SETTINGS",
    "check_agent_of_output",
    "check_descriptors",
    "check_file",
    "check_writable",
    "descriptor_room",
    "remove_stale_temp_files",
    "settings_path_problems",
    "writable_folder",
]

_SPARE_DESCRIPTORS = 64  # files, the ledger, the event loop, threads: besides the sockets


def writable_folder(folder: Path, *, create: bool, for_file: Path | None = None) -> None:
    """Raise :class:`StateError` unless files can be created in ``folder`` (made, with its
    parents, when ``create``); ``for_file``: the file the folder is checked for, named in the
    message."""
    where = f"{for_file}: its folder {folder}" if for_file is not None else f"{folder}: the folder"
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise StateError(f"{where} cannot take files: {existing} is not a folder")
    if not folder.exists():
        if not create:
            raise StateError(f"{where} does not exist (create it first)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"{where} cannot be created: {exc.strerror}") from None
    probe = folder / f".octave-bulk-probe.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return  # our own probe from a moment ago: the folder takes files
    except OSError as exc:
        raise StateError(f"{where} cannot take new files: {exc.strerror}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _writable_file(path: Path) -> None:
    """An existing ``path`` must be a file this process can open for writing (not truncated)."""
    if not os.path.lexists(path):
        return
    if path.is_dir():
        raise StateError(f"{path}: is a folder, not a file")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"{path}: cannot write this file: {exc.strerror}") from None
    os.close(fd)


def check_file(path: Path) -> None:
    """``path`` can be written: its folder is made if missing, an existing file must take
    writes. Raises :class:`StateError` naming what is wrong."""
    writable_folder(path.parent, create=True)
    _writable_file(path)


def check_writable(
    paths: OutputPaths, *, ledger: Path | None = None, metrics: Path | None = None
) -> None:
    """Every path a run writes can be written (see the module docstring); the output's folder
    is created if missing. Raises :class:`StateError` naming the first that cannot."""
    folder = paths.results.parent
    writable_folder(folder, create=True)
    for path in _side_files(paths):
        _writable_file(path)
    ledger_path = ledger or paths.ledger
    if ledger_path.parent != folder:
        writable_folder(ledger_path.parent, create=False, for_file=ledger_path)
    for suffix in ("", "-wal", "-shm"):
        _writable_file(ledger_path.with_name(ledger_path.name + suffix))
    if metrics is not None:  # replaced atomically: a temp file is made next to it
        writable_folder(metrics.parent, create=False, for_file=metrics)
        _writable_file(metrics)


PATH_SETTINGS = ("log_file", "metrics_textfile", "ledger")
"""The settings that name a file a run writes (besides the output and its side files)."""


def settings_path_problems(settings: Settings) -> list[str]:
    """``name path: problem`` for each file the settings name that a run could not write, by
    the rules the run itself checks with (``doctor`` asks; nothing is created)."""
    problems = []
    for name in PATH_SETTINGS:
        path = getattr(settings, name)
        if path is None:
            continue
        try:
            writable_folder(Path(path).parent, create=False, for_file=Path(path))
            _writable_file(Path(path))
        except StateError as exc:
            problems.append(f"{name} {exc}")
    return problems


def _side_files(paths: OutputPaths) -> Iterable[Path]:
    return (paths.results, *paths.side_files())


def remove_stale_temp_files(files: Iterable[Path]) -> list[Path]:
    """Remove ``.NAME.PID.tmp`` temp files of ``files`` (see ``state.files.atomic_file``)
    whose process is gone (a kill or a full disk left them); returns what was removed."""
    removed = []
    for target in files:
        pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.tmp$")
        with contextlib.suppress(OSError):
            for entry in os.scandir(target.parent):
                match = pattern.match(entry.name)
                if match is None or _alive(int(match.group(1))):
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def descriptor_room(wanted: int, *, served: int = 0) -> int:
    """The calls in flight this process can hold connections for, up to ``wanted``, beside
    ``served`` connections it serves: the soft open-file limit is raised (up to the hard one)
    to fit ``wanted`` when it can."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not a POSIX system
        return wanted
    needed = wanted + 8 + served + _SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - 8 - served - _SPARE_DESCRIPTORS))


def check_descriptors(concurrency: int, *, served: int = 0) -> None:
    """The open-file limit holds ``concurrency`` connections, ``served`` more (the callback
    receiver's) and the run's files: the soft limit is raised up to the hard one when needed;
    :class:`ConfigError` when even that is too low."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not a POSIX system
        return
    needed = concurrency + 8 + served + _SPARE_DESCRIPTORS  # the pool holds concurrency + 8
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard == resource.RLIM_INFINITY or hard >= needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
            return
    usable = max(1, min(soft, hard if hard != resource.RLIM_INFINITY else soft))
    raise ConfigError(
        f"--concurrency {concurrency} needs about {needed} open files, and this process may "
        f"open {usable} (ulimit -n): use --concurrency "
        f"{max(1, usable - 8 - served - _SPARE_DESCRIPTORS)}"
        " or less, or raise the limit (ulimit -n, LimitNOFILE= in a systemd unit)"
    )


def check_agent_of_output(paths: OutputPaths, agent_type: str) -> None:
    """Raise :class:`StateError` when the output holds another agent's results: an output
    belongs to one agent (its results' ``agentType``), and a run of another agent appending to
    it would mix records that no export or chained step can read as one."""
    kind = results_agent(paths.results)
    if kind is None or kind == agent_type:
        return
    own = paths.results.with_name(f"{paths.results.stem}-{agent_type}{paths.results.suffix}")
    raise StateError(
        f"{paths.results}: holds {kind} results; a {agent_type} run needs an output of its own "
        f"(e.g. -o {own})"
    )
