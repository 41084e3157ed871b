"""Notifications: the end of a run, posted where its operator looks (``notify`` URLs).

Contract: :func:`notify` sends one message per run - the end-of-run lines as its body, the
exit and the output as its title - to every URL of the ``notify`` setting, through Apprise
(a well-kept library that speaks to ~100 services: ``slack://``, ``msteams://``,
``mailto://``, ``json://host/path`` for any webhook...). ``notify_on`` says when: ``always``,
or ``failure`` (an exit other than 0). A notification that cannot be sent is a warning in the
log, never a change of the run's exit code. The URLs often hold tokens: they are registered
secrets (scrubbed from every file and log line) and left out of the settings a run records.

Apprise is an optional dependency (``pip install 'octave-bulk[notify]'``): a ``notify`` set
without it is a settings error before anything is sent (:func:`check_notify`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

from octave_bulk.errors import ConfigError
from octave_bulk.observe.log import log_event
from octave_bulk.redact import register_secret

__all__ = ["check_notify", "notify"]


def check_notify(urls: Sequence[str]) -> None:
    """Refuse (before any call) ``notify`` URLs that Apprise cannot use, or no Apprise.

    Raises:
        ConfigError: Apprise is not installed, or a URL is not one it knows.
    """
    if not urls:
        return
    for url in urls:
        register_secret(url)
    try:
        apprise = _apprise()
    except ImportError:
        raise ConfigError(
            "notify: needs Apprise: pip install 'octave-bulk[notify]' (or leave notify unset)"
        ) from None
    for number, url in enumerate(urls, 1):
        with _quiet():
            known = apprise.Apprise().add(url)
        if not known:
            raise ConfigError(
                f"notify: URL {number} of {len(urls)} is not one Apprise knows "
                "(see its docs: slack://, msteams://, mailto://, json://host/path ...)"
            )


def notify(urls: Sequence[str], when: str, summary: Mapping[str, Any], body: str) -> bool:
    """Post the end of a run (``body``: its end-of-run lines) to ``urls``; whether it went.
    Nothing is sent when ``when`` is ``failure`` and the run exited 0."""
    code = summary.get("exit_code")
    if not urls or (when == "failure" and code == 0):
        return False
    apprise = _apprise()
    sender = apprise.Apprise()
    with _quiet():
        for url in urls:
            sender.add(url)
    reason = summary.get("stop_reason") or "finished"
    output = (summary.get("outputs") or {}).get("results", "")
    title = f"octave-bulk: exit {code} ({reason}) {output}"
    kind = apprise.NotifyType.SUCCESS if code == 0 else apprise.NotifyType.FAILURE
    try:
        with _quiet():
            sent = bool(sender.notify(body=body, title=title, notify_type=kind))
    except Exception as exc:  # a service's failure must never fail the night
        log_event("notify_failed", level=logging.WARNING, error=f"{type(exc).__name__}: {exc}")
        return False
    if not sent:
        log_event("notify_failed", level=logging.WARNING, error="a notification was not sent")
    return sent


def _apprise() -> ModuleType:
    """Apprise, imported quietly."""
    with _quiet():
        import apprise
    return apprise


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Apprise's plugins import ``imghdr`` (deprecated on Python 3.11-3.12): not our warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield
