"""Octave object ids as a user types them: is this an agent id, an experiment id, or a slip?

Octave's ids carry their kind as a prefix (docs/octave-api.md, "Id prefixes"): agents ``ca_``,
experiments ``ae_``, workflows ``caw_``. :func:`target_id_problem` says what is wrong with a
``--agent``/``--experiment`` value before any call is made: a space, a placeholder left from
an example config, the id of another kind of object, or no id at all.
"""

from __future__ import annotations

import re

__all__ = ["ID_PREFIXES", "target_id_problem"]

ID_PREFIXES = {"ca_": "an agent", "ae_": "an experiment", "caw_": "a workflow"}
"""Octave id prefix -> the kind of object it names."""

_ID = re.compile(r"^[a-z]+_[A-Za-z0-9_-]+$")
_PLACEHOLDER = re.compile(r"REPLACE_ME|YOUR_|\.\.\.|…|<|>")
_FLAGS = {"ca_": "--agent", "ae_": "--experiment"}


def target_id_problem(value: str, prefix: str) -> str | None:
    """Why ``value`` is not an id starting with ``prefix`` (``ca_`` or ``ae_``), or None."""
    if value != value.strip() or any(c.isspace() for c in value):
        return f"{value!r} contains a space: give the id alone, e.g. {prefix}abc123"
    if _PLACEHOLDER.search(value):
        return (
            f"{value!r} is a placeholder from an example: give your own id "
            "(octave-bulk doctor lists the workspace's agents)"
        )
    kind = next(
        (k for k in sorted(ID_PREFIXES, key=len, reverse=True) if value.startswith(k)), None
    )
    if kind != prefix and kind is not None:
        what = ID_PREFIXES[kind]
        hint = f": use {_FLAGS[kind]} {value}" if kind in _FLAGS else ""
        return f"{value!r} is {what} id, not {ID_PREFIXES[prefix]} id{hint}"
    if kind is None or not _ID.match(value):
        return f"{value!r} is not {ID_PREFIXES[prefix]} id (they look like {prefix}abc123)"
    return None
