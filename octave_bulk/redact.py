"""Keeping secrets (the API key, the callback path's token) out of everything a run stores,
logs or raises.

A secret is registered once (:func:`register_secret`: the key when the settings or a client
are built, the callback token when the receiver is made; ``OCTAVE_API_KEY`` is picked up from
the environment on its own); :func:`scrub` then replaces it - and its URL-quoted and
JSON-escaped forms - with ``***`` in any text or bytes. A server may echo the key anywhere
(``error for key <key>``, ``Invalid API key <key>``, an ``api_key`` header echoed in a body, a
result or a job's error that repeats it), in a sync call's answer, an async submit's, a poll's
or a callback's. So the scrub sits where every such text passes, whatever its path:

- every :class:`~octave_bulk.errors.ApiError`'s message (the errors file, the summary's
  ``fatal_error``, what is printed): scrubbed when the error is made;
- every file written (results, errors, jobs, summary, report...): scrubbed by
  :mod:`octave_bulk.state.files`, which every file octave-bulk writes goes through;
- every log line (the log formatters) and a crash's traceback (the crash handler).

Messages are cut to a few hundred characters before they are scrubbed; a text that ends with
the start of a secret (6 characters or more: a key cut there) has that end masked too.
"""

from __future__ import annotations

import json
import os
from typing import overload
from urllib.parse import quote

__all__ = ["MASK", "register_secret", "scrub", "secrets"]

MASK = "***"
_SHORTEST = 8
_CUT = 6  # the shortest start of a secret masked at the end of a text
_SECRETS: set[str] = set()
_TEXT: tuple[str, ...] = ()  # the forms, longest first
_BYTES: tuple[bytes, ...] = ()
_ENV_SEEN: str | None = None


def register_secret(value: str | None) -> None:
    """Remember a secret to scrub (and its encoded forms); empty or very short values (under
    8 characters, which would mangle ordinary text) are ignored."""
    global _TEXT, _BYTES
    if not value or len(value) < _SHORTEST:
        return
    for form in (value, quote(value, safe=""), json.dumps(value)[1:-1]):
        _SECRETS.add(form)
    _TEXT = tuple(sorted(_SECRETS, key=len, reverse=True))
    _BYTES = tuple(form.encode("utf-8", "surrogatepass") for form in _TEXT)


def _from_environment() -> None:
    global _ENV_SEEN
    env = os.environ.get("OCTAVE_API_KEY")
    if env != _ENV_SEEN:
        _ENV_SEEN = env
        register_secret(env)


def secrets() -> frozenset[str]:
    """The registered secrets, plus ``OCTAVE_API_KEY`` from the environment."""
    _from_environment()
    return frozenset(_SECRETS)


@overload
def scrub(text: str) -> str: ...
@overload
def scrub(text: bytes) -> bytes: ...
def scrub(text: str | bytes) -> str | bytes:
    """``text`` with every registered secret replaced by ``***``."""
    _from_environment()
    if isinstance(text, bytes):
        for encoded in _BYTES:
            if encoded in text:
                text = text.replace(encoded, b"***")
        return text
    for secret in _TEXT:
        if secret in text:
            text = text.replace(secret, MASK)
        cut = text.rfind(secret[:_CUT], max(0, len(text) - len(secret)))
        if cut >= 0 and secret.startswith(text[cut:]):
            text = text[:cut] + MASK
    return text
