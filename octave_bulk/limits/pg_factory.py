"""The shared limiter of a run on the shared ledger, built from the run's settings.

Contract (docs/scale-out.md, "One shared limit"): :func:`shared_limiter` returns a
:class:`~octave_bulk.limits.shared_pg.SharedRateLimiter` keyed by the workspace URL + agent,
with one judge (the adaptive search) unless ``--no-adaptive``. ``--concurrency C`` is a
ceiling: C permits enforced from the start. Without it and with a judge, the window the judge
finds is enforced once it publishes one (permits 1..:data:`WINDOW_BOUND`, created at open).
"""

from __future__ import annotations

from octave_bulk.errors import ConfigError
from octave_bulk.limits.adaptive import WINDOW_BOUND
from octave_bulk.limits.base import Limiter, LimiterContext
from octave_bulk.limits.pg_judge import JudgeSettings
from octave_bulk.limits.shared_pg import SharedRateLimiter
from octave_bulk.state.pg.dsn import LedgerUrl, connect

__all__ = ["DEFAULT_SHARED_RATE", "shared_limiter"]

DEFAULT_SHARED_RATE = 10.0
"""Calls per second in all when a shared-ledger run with ``--no-adaptive`` gives no
``--rate`` (with the search on, the judge starts from the ``start_rate`` setting and searches)."""


def shared_limiter(context: LimiterContext) -> Limiter:
    """The calls' limiter of a run on the shared ledger: one rate and one window for every
    worker of every host (``--concurrency``, else the window the judge finds, once it finds
    one), searched by one judge (``--no-adaptive``: ``--rate`` held, else
    :data:`DEFAULT_SHARED_RATE`, and a window only with ``--concurrency``);
    ``limits/factory.py`` registers it as ``postgresql``."""
    settings = context.settings
    if settings.ledger_url is None:
        raise ConfigError("limiter = 'postgresql' needs --ledger postgresql://...")
    url = LedgerUrl.parse(settings.ledger_url.get_secret_value())
    target = settings.agent_oid or settings.experiment_oid
    window = settings.concurrency if "concurrency" in settings.model_fields_set else None
    lease = 2 * settings.timeout + settings.drain_timeout
    judge = None
    if settings.adaptive:
        judge = JudgeSettings(
            rate_ceiling=settings.rate,
            window_ceiling=window,
            search_from=settings.start_rate,
            workspace=settings.base_url,
            agent=str(target),
            lease=lease,
            refusal_round_trip=settings.refusal_round_trip,
        )
    start = settings.rate or (settings.start_rate if judge else DEFAULT_SHARED_RATE)
    return SharedRateLimiter(
        lambda: connect(url, application_name="octave-bulk limiter"),
        key=f"{settings.base_url}|{target}",
        rate=start,
        window=window,
        permit_lease=lease,
        judge=judge,
        found_window=WINDOW_BOUND if judge is not None and window is None else None,
        ledger=url,
    )
