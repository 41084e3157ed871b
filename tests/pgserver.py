"""A throwaway PostgreSQL server for the tests: a temp dir, ``initdb``, ``pg_ctl start`` on a free
loopback port, and everything removed afterwards.

``initdb`` refuses to run as root (CI runs as root), so as root the server's commands run as the
``postgres`` user through ``runuser -u postgres --``; otherwise as the current user. The binaries
are found on ``PATH`` or in Debian's ``/usr/lib/postgresql/<version>/bin`` (``.ci/run`` installs
Debian's ``postgresql``). In CI (the ``CI`` variable set) a server that cannot start fails the
tests; elsewhere they are skipped with the reason.

The superuser has a password (scram-sha-256 over TCP), so every test's URL carries one, as a
real deployment's would, and the tests can check it never leaks.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port

__all__ = [
    "PgServer",
    "find_binaries",
    "outputs_released_together",
    "postgres_or_skip",
    "running_postgres",
]

SUPERUSER = "postgres"


def find_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest version."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


@dataclass(slots=True)
class PgServer:
    """A running throwaway server."""

    bin_dir: Path
    data_dir: Path
    socket_dir: Path
    port: int
    password: str
    as_postgres: bool

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """A ``postgresql://`` URL for ``database`` with the superuser's (or another) password."""
        secret = self.password if password is None else password
        return f"postgresql://{SUPERUSER}:{secret}@127.0.0.1:{self.port}/{database}"

    def command(self, tool: str, *args: str) -> list[str]:
        """``tool`` of the server's binaries, run as ``postgres`` when we are root."""
        argv = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", "postgres", "--", *argv] if self.as_postgres else argv

    def pg_ctl(self, *args: str) -> None:
        """``pg_ctl -D DATA ARGS``, waiting for it; raises with its output on failure."""
        log = self.data_dir.parent / "pg_ctl.out"
        done = subprocess.run(
            self.command("pg_ctl", "-D", str(self.data_dir), *args),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {done.stdout}{done.stderr}{tail}")

    def start(self) -> None:
        """Start (or start again) the server on its port, waiting until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self.pg_ctl(
            "-w", "-t", "60", "-l", str(self.data_dir.parent / "pg_ctl.out"), "-o", options, "start"
        )

    def restart_immediate(self) -> None:
        """Stop the server as a crash would (``-m immediate``), then start it again."""
        self.pg_ctl("-m", "immediate", "-w", "stop")
        self.start()

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a test's own name, never user input
        return self.url(name)


@contextlib.contextmanager
def running_postgres() -> Iterator[PgServer]:
    """A fresh server for the duration of the block; stopped and removed after it."""
    bin_dir = find_binaries()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl): install Debian's postgresql")
    as_postgres = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="octave-pg-"))
    server = PgServer(
        bin_dir=bin_dir,
        data_dir=root / "data",
        socket_dir=root,
        port=free_port(),
        password=secrets.token_urlsafe(18),
        as_postgres=as_postgres,
    )
    try:
        password_file = root / "password"
        password_file.write_text(server.password + "\n")
        if as_postgres:
            shutil.chown(root, user="postgres")
            shutil.chown(password_file, user="postgres")
        subprocess.run(
            server.command(
                "initdb", "-D", str(server.data_dir), "-U", SUPERUSER, "--auth-local=trust",
                "--auth-host=scram-sha-256", f"--pwfile={password_file}", "--no-sync",
                "--encoding=UTF8", "--locale=C",
            ),
            capture_output=True, text=True, timeout=180, check=True,
        )  # fmt: skip
        for attempt in range(3):
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = free_port()  # taken between the probe and the start: another
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.pg_ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_or_skip() -> Iterator[PgServer]:
    """:func:`running_postgres`, or a skip with the reason (a failure in CI, never a skip)."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_postgres())
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or ""
            reason = f"cannot start a throwaway PostgreSQL: {exc} {detail}".strip()
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        yield server


def outputs_released_together(processes: list[subprocess.Popen[str]]) -> list[str]:
    """Wait until every worker process printed ``ready``, send each ``go`` on its stdin at once,
    and return what each printed after (so their measured parts overlap)."""
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = []
        for process in processes:
            out, _ = process.communicate(timeout=300)
            assert process.returncode == 0, process.returncode
            outputs.append(out)
        return outputs
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
