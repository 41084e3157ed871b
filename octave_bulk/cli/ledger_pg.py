"""``ledger init``: create or upgrade the shared ledger's tables on PostgreSQL.

The ``ledger`` group (:mod:`octave_bulk.cli.ledger`) gains this command here, so the shared
ledger's command stays beside its own modules (:mod:`octave_bulk.state.pg`). The URL comes from
``--ledger`` or ``OCTAVE_LEDGER`` and is only ever printed without its password.
"""

from __future__ import annotations

import asyncio
import json

import click

from octave_bulk.cli.common import fail
from octave_bulk.cli.ledger import ledger
from octave_bulk.errors import ConfigError, OctaveBulkError

__all__ = ["init", "ledger"]


@ledger.command()
@click.option(
    "--ledger",
    "ledger_url",
    envvar="OCTAVE_LEDGER",
    required=True,
    metavar="postgresql://USER@HOST/DB",
    help="The shared ledger's PostgreSQL URL (or OCTAVE_LEDGER).",
)
def init(ledger_url: str) -> None:
    """Create or upgrade the shared ledger's tables on PostgreSQL; safe to run again.

    Several hosts may run it at once: migrations are applied one at a time, each once."""
    try:
        migrated = asyncio.run(_init(ledger_url))
    except OctaveBulkError as exc:
        fail(exc)
    click.echo(json.dumps(migrated, indent=2))


async def _init(text: str) -> dict[str, object]:
    try:
        from octave_bulk.state.pg.dsn import LedgerUrl, connect, describe_failure
        from octave_bulk.state.pg.schema import migrate
    except ImportError:
        raise ConfigError(
            "--ledger postgresql://… needs the PostgreSQL driver: pip install 'octave-bulk[postgres]'"
        ) from None
    import psycopg

    from octave_bulk.errors import StateError

    url = LedgerUrl.parse(text)
    async with await connect(url) as conn:
        try:
            result = await migrate(conn)
        except psycopg.Error as exc:
            raise StateError(describe_failure(url, exc)) from None
    return {
        "ledger": url.display,
        "schema_version_before": result.before,
        "schema_version": result.after,
        "changed": result.changed,
    }
