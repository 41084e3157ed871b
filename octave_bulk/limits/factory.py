"""Which limiter a run uses: the registry of limiter factories, and the default one.

Contract: :func:`limiter_factory` resolves the ``limiter`` setting (a name) to a
:data:`~octave_bulk.limits.base.LimiterFactory`; an unknown name is a
:class:`~octave_bulk.errors.ConfigError` naming the setting and the names known.
:func:`register_limiter` adds one (a second implementation plugs in by name).
``run_batch(limiter=...)`` takes a factory directly, bypassing the registry.

The default, ``adaptive``, builds :class:`~octave_bulk.limits.adaptive.AdaptiveLimiter`:
for the calls, from the ceilings (``rate``, ``concurrency``), ``start_rate``, ``adaptive``
and the remembered limits; for async status polls, from ``poll_rate`` and
``poll_concurrency`` (no memory: the status endpoint's limits are its own). It owns the one
remembered-limits rule, :func:`start_limits`, which ``plan`` calls too.
"""

from __future__ import annotations

from octave_bulk.errors import ConfigError
from octave_bulk.limits.adaptive import FIRST_WINDOW, AdaptiveLimiter
from octave_bulk.limits.base import Limiter, LimiterContext, LimiterFactory

__all__ = [
    "DEFAULT_LIMITER",
    "SHARED_LIMITER",
    "adaptive_limiter",
    "limiter_factory",
    "register_limiter",
    "shared_limiter",
    "start_limits",
]

DEFAULT_LIMITER = "adaptive"


def start_limits(
    rate_ceiling: float | None,
    window_ceiling: int | None,
    remembered: tuple[float | None, int | None],
) -> tuple[float | None, int | None]:
    """Where a run starts (the one rule, for the run and its forecast): the remembered rate
    and window, each clamped by its ceiling when one is set (from a flag, the environment or
    a config file: a ceiling never turns the memory off); None where nothing is remembered
    (the run starts at the ceiling, or searches)."""
    rate, window = remembered
    if rate is not None and rate_ceiling is not None:
        rate = min(rate, rate_ceiling)
    if window is not None and window_ceiling is not None:
        window = min(window, window_ceiling)
    return rate, window


def adaptive_limiter(context: LimiterContext) -> Limiter:
    """The default factory: today's adaptive limiter, for the calls or the polls."""
    settings = context.settings
    if context.purpose == "polls":
        return AdaptiveLimiter(
            settings.poll_rate,
            settings.poll_concurrency,
            search_from=settings.start_rate,
            refusal_rtt=settings.refusal_round_trip,
            adaptive=settings.adaptive,
            clock=context.clock,
            name="poll_pacing",
        )
    start_rate, start_window = start_limits(settings.rate, settings.concurrency, context.remembered)
    searched = "concurrency" not in settings.model_fields_set  # from FIRST_WINDOW up
    return AdaptiveLimiter(
        settings.rate,
        settings.concurrency,
        start_rate=start_rate,
        start_window=start_window,
        start_period=context.remembered_period if start_rate is not None else None,
        first_window=FIRST_WINDOW if searched else None,
        search_from=settings.start_rate,
        refusal_rtt=settings.refusal_round_trip,
        adaptive=settings.adaptive,
        clock=context.clock,
    )


def shared_limiter(context: LimiterContext) -> Limiter:
    """The ``postgresql`` limiter: one rate (and window) shared through the shared ledger by
    every worker of every host (``limits/shared_pg.py``; its driver is imported on use).
    Async status polls keep an in-process limiter (their limits are the status endpoint's)."""
    if context.purpose == "polls":
        return adaptive_limiter(context)
    from octave_bulk.limits.pg_factory import shared_limiter as build

    return build(context)


SHARED_LIMITER = "postgresql"
"""The limiter chosen by default for a run on a shared ledger (``--ledger postgresql://``)."""

_FACTORIES: dict[str, LimiterFactory] = {
    DEFAULT_LIMITER: adaptive_limiter,
    SHARED_LIMITER: shared_limiter,
}


def register_limiter(name: str, factory: LimiterFactory) -> None:
    """Make ``factory`` the one the ``limiter`` setting names ``name``."""
    _FACTORIES[name] = factory


def limiter_factory(name: str) -> LimiterFactory:
    """The factory the ``limiter`` setting names."""
    try:
        return _FACTORIES[name]
    except KeyError:
        known = ", ".join(sorted(_FACTORIES))
        raise ConfigError(f"limiter = {name!r}: no such limiter (known: {known})") from None
