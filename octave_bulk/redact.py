"""Keeping the API key out of everything a run stores, logs or raises.

The key is registered once (:func:`register_secret`, when a client is built); :func:`scrub`
then replaces it - and its URL-quoted and JSON-escaped forms - with ``***`` in any text or
bytes. A server that echoes the key (``error for key <key>``, ``Invalid API key <key>``, an
``api_key`` header echoed in a body) must not put it into ``OUT.errors.ndjson``, the
summary's ``fatal_error``, a log line or a traceback: the error messages built from answers,
the log formatters and the crash handler all pass through here.
"""

from __future__ import annotations

import json
import os
from typing import overload
from urllib.parse import quote

__all__ = ["MASK", "register_secret", "scrub", "secrets"]

MASK = "***"
_SHORTEST = 8
_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret to scrub (and its encoded forms); empty or very short values (under
    8 characters, which would mangle ordinary text) are ignored."""
    if not value or len(value) < _SHORTEST:
        return
    for form in (value, quote(value, safe=""), json.dumps(value)[1:-1]):
        _SECRETS.add(form)


def secrets() -> frozenset[str]:
    """The registered secrets, plus ``OCTAVE_API_KEY`` from the environment."""
    env = os.environ.get("OCTAVE_API_KEY")
    if env and len(env) >= _SHORTEST and env not in _SECRETS:
        register_secret(env)
    return frozenset(_SECRETS)


@overload
def scrub(text: str) -> str: ...
@overload
def scrub(text: bytes) -> bytes: ...
def scrub(text: str | bytes) -> str | bytes:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in sorted(secrets(), key=len, reverse=True):
        if isinstance(text, bytes):
            encoded = secret.encode("utf-8", "surrogatepass")
            if encoded in text:
                text = text.replace(encoded, MASK.encode())
        elif secret in text:
            text = text.replace(secret, MASK)
    return text
