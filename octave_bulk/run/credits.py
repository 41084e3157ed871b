"""The credits before paying: what the API says a run costs and what remains, and the run's
credit check.

:func:`check_credits` is the run's guard, before its first call (whether or not the agent is
looked up, ``check_agent``): when the contacts to send times ``costToRun`` exceed the credits
remaining it raises :class:`FatalApiError` (exit 3), unless ``allow_overdraft``. It counts the
contacts from the run's plan pass (``dry.plan_input``), made for it only when no cheaper bound
(the file's size in bytes, ``--limit``, ``--max-calls``) is covered by what remains; unknown
credits or cost never stop a run. On stdin, which cannot be read twice, ``--limit``/``--max-calls`` bound the
contacts; without either the credits are not checked - said in a warning and in the summary -
and the run stops once they are spent (``run/spend.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from octave_bulk.errors import ApiError, ErrorKind, FatalApiError
from octave_bulk.http.client import OctaveClient
from octave_bulk.observe.log import log_event
from octave_bulk.settings.model import Settings

__all__ = [
    "Credits",
    "CreditsCheck",
    "agent_credits",
    "check_credits",
    "credits_remaining",
    "number_in",
]


def number_in(record: object, name: str) -> float | None:
    """``record[name]`` when it is a number (not a bool), else None."""
    value = record.get(name) if isinstance(record, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class Credits(NamedTuple):
    """The agent's cost per run and the credits remaining, as the API gives them."""

    cost: float | None
    """The agent's ``costToRun``."""
    remaining: float | None
    note: str | None
    """Why either is unknown."""
    failed: bool = False
    """Whether a lookup failed (rather than the API publishing no figure)."""


async def agent_credits(client: OctaveClient, settings: Settings) -> Credits:
    """The agent's cost per run and the credits remaining, as the API gives them."""
    cost = remaining = None
    notes, failed = [], False
    if settings.agent_oid:
        try:
            cost = number_in(
                (await client.get_agent_info(settings.agent_oid)).get("data"), "costToRun"
            )
            if cost is None:
                notes.append("the API gave no costToRun for the agent")
        except ApiError as exc:
            notes.append(f"the agent lookup failed ({exc.message[:120]})")
            failed = True
    else:
        notes.append("an experiment's cost per run is not published")
    remaining, note, unanswered = await credits_remaining(client)
    if note is not None:
        notes.append(note)
    return Credits(cost, remaining, "; ".join(notes) or None, failed or unanswered)


async def credits_remaining(client: OctaveClient) -> tuple[float | None, str | None, bool]:
    """The credits remaining (``GET /api/v2/api-key/validate``, ``totalRemaining``, not
    paid), or None and why; and whether the check failed (rather than gave no figure)."""
    try:
        data = (await client.validate_key()).get("data")
    except ApiError as exc:
        return None, f"the key check failed ({exc.message[:120]})", True
    remaining = number_in(data.get("credits") if isinstance(data, dict) else None, "totalRemaining")
    if remaining is None:
        return None, "the API gave no credits remaining", False
    return remaining, None, False


class CreditsCheck(NamedTuple):
    """What :func:`check_credits` found, for the run."""

    unchecked: str | None = None
    """Why the credits were not checked before the run (None: checked, or nothing to check:
    ``allow_overdraft``, a cost the API does not publish)."""
    ceiling: tuple[float, float] | None = None
    """(cost a call, credits remaining) when the run must stop once those are spent
    (``run/spend.py``): nothing bounded its number of contacts before it (stdin)."""


async def check_credits(
    client: OctaveClient,
    settings: Settings,
    bound: int | None,
    count: Callable[[], int] | None,
) -> CreditsCheck:
    """Before the first paid call: refuse a run whose contacts would cost more credits than
    remain. ``bound`` is an upper bound of the contacts known without reading the input (the
    plan's count, or the file's size: a row takes a byte at least; None for stdin);
    ``count`` counts them exactly (the plan pass, made only when the bound is not enough;
    None for stdin). On stdin the bound is ``--limit``/``--max-calls``; without either the
    run is not refused but warned (``credits_not_checked``) and given a ceiling.

    Raises:
        FatalApiError: the run would (or, on stdin, could) overdraw the credits, and
            ``allow_overdraft`` is off.
    """
    if settings.allow_overdraft:
        return CreditsCheck()
    cost, remaining, note, failed = await agent_credits(client, settings)
    if cost is None or remaining is None:
        if failed:  # the API did not answer (a cost it does not publish is no news)
            log_event("credits_not_checked", level=logging.WARNING, reason=note)
            return CreditsCheck(f"the credits could not be checked: {note}")
        return CreditsCheck()
    bounds = [n for n in (bound, settings.limit, settings.max_calls) if n is not None]
    if not bounds:
        why = (
            "the input is stdin: how many contacts it holds is unknown before reading it "
            "(give --limit or --max-calls to check them)"
        )
        action = f"the run stops once the {remaining:,g} credits remaining are spent"
        log_event("credits_not_checked", level=logging.WARNING, reason=why, action=action)
        return CreditsCheck(f"{why}; {action}", (cost, remaining) if cost > 0 else None)
    most = min(bounds)
    if most * cost <= remaining:
        return CreditsCheck()  # even every row sent would be covered: no count needed
    if count is None:  # stdin cannot be read twice: the bound is all that is known
        raise FatalApiError(
            f"up to {most:,} contacts (--limit, --max-calls) x {cost:g} credits = "
            f"{most * cost:,g} credits, but {remaining:,g} remain; nothing was sent. Send "
            "fewer, or add --allow-overdraft to run until the credits run out",
            kind=ErrorKind.PAYMENT_REQUIRED,
        )
    to_send = count()
    if settings.max_calls is not None:
        to_send = min(to_send, settings.max_calls)
    needed = to_send * cost
    if needed > remaining:
        raise FatalApiError(
            f"{to_send:,} contacts to send x {cost:g} credits = {needed:,g} credits, "
            f"but {remaining:,g} remain; nothing was sent. Send fewer (--limit, --max-calls) or "
            "add --allow-overdraft to run until the credits run out",
            kind=ErrorKind.PAYMENT_REQUIRED,
        )
    return CreditsCheck()
