"""Where the shared ledger lives: a ``postgresql://`` URL, read once, its password kept secret.

Contract: :meth:`LedgerUrl.parse` accepts a ``postgresql://`` (or ``postgres://``) URL from
``--ledger`` or ``OCTAVE_LEDGER`` and registers its password with :mod:`octave_bulk.redact`,
so logs, files and tracebacks show ``***`` for it; :attr:`LedgerUrl.display` is the URL without
the password, the only form printed. :func:`connect` opens an autocommit connection (each
statement is its own transaction unless a caller opens one) and turns every failure into a
:class:`~octave_bulk.errors.StateError` whose message names the server by its display form and
never carries the password (whatever the driver put in its message). :func:`out_of_reach`
tells a failure that passes by itself (waited out) from one that does not (the run stops).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from octave_bulk.errors import ConfigError, StateError
from octave_bulk.redact import MASK, register_secret, scrub

__all__ = ["LedgerUrl", "PgConnection", "connect", "describe_failure", "out_of_reach"]

PgConnection = psycopg.AsyncConnection[tuple[Any, ...]]
"""An open connection to the shared ledger (rows as tuples)."""

_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class LedgerUrl:
    """A shared ledger's address. Its ``repr`` and :attr:`display` never show the password."""

    dsn: str = field(repr=False)
    display: str
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str, *, source: str = "--ledger") -> LedgerUrl:
        """Read ``text`` (from ``source``, named in the error when it is not a URL).

        Raises:
            ConfigError: not a ``postgresql://`` URL, or one the driver cannot read.
        """
        if not text.startswith(_SCHEMES):
            raise ConfigError(f"{source}: a shared ledger is a postgresql://user@host/db URL")
        try:
            parts = conninfo_to_dict(text)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(
                f"{source}: not a usable PostgreSQL URL ({_hide(str(exc), text)})"
            ) from None
        password = parts.get("password")
        password = str(password) if password else None
        register_secret(password)
        user = f"{parts['user']}@" if parts.get("user") else ""
        host = parts.get("host") or "localhost"
        port = f":{parts['port']}" if parts.get("port") else ""
        database = f"/{parts['dbname']}" if parts.get("dbname") else ""
        return cls(
            dsn=text, display=f"postgresql://{user}{host}{port}{database}", password=password
        )

    def hide(self, text: str) -> str:
        """``text`` with this URL's password (of any length) and registered secrets masked."""
        if self.password:
            text = text.replace(self.password, MASK)
        return scrub(text)


def _hide(text: str, dsn: str) -> str:
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        return MASK  # unreadable: show nothing of it
    return text.replace(str(password), MASK) if password else scrub(text)


def out_of_reach(exc: BaseException) -> bool:
    """Whether a database failure passes by itself, so that waiting is right: the connection
    failed or was cut (a server restarting, the network; psycopg's ``OperationalError``, which
    covers deadlocks, serialization failures and cancelled statements too, and
    ``InterfaceError``), a standby refusing writes during a failover, or a
    :class:`~octave_bulk.errors.StateError` from :func:`connect`. Any other failure is a
    statement the server refuses (a missing table or column, a permission denied): waiting
    does not mend it, and the run stops on it rather than wait for ever."""
    waited_out = (psycopg.OperationalError, psycopg.InterfaceError, StateError)
    return isinstance(exc, (*waited_out, psycopg.errors.ReadOnlySqlTransaction))


def describe_failure(url: LedgerUrl, exc: BaseException) -> str:
    """A one-line reason for a failed database operation, with the password masked."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return url.hide(f"the shared ledger {url.display}: {reason}")


async def connect(url: LedgerUrl, *, application_name: str = "octave-bulk") -> PgConnection:
    """An autocommit connection to ``url``.

    Raises:
        StateError: the server cannot be reached or refused us (the message names
            :attr:`LedgerUrl.display`, never the password).
    """
    try:
        return await psycopg.AsyncConnection.connect(
            url.dsn, autocommit=True, application_name=application_name, connect_timeout=10
        )
    except psycopg.Error as exc:
        raise StateError(describe_failure(url, exc)) from None
