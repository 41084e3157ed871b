"""Per-row content templates: ``{Column}`` placeholders filled from each input row.

Contract: :class:`ContentTemplates` is built from the step-keyed templates of the options
(``all`` or a step number up to ``MAX_STEPS``) and raises :class:`ConfigError` there for a bad
key or a malformed template (an unmatched brace, an empty placeholder). ``check(headers)``
binds every placeholder to a column of the input, ignoring case and spaces, before any row is
read (:class:`ConfigError` for a placeholder that names no column); ``fill(row)`` then gives the
content fields of one row. ``{{`` and ``}}`` are literal braces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from octave_bulk.agents.fields import MAX_STEPS, STEP_KEYS
from octave_bulk.errors import ConfigError
from octave_bulk.input.mapping import column_key

__all__ = ["ContentTemplates"]

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class ContentTemplates:
    """Per-row context/instructions from templates whose ``{Column}`` placeholders are filled.

    A template under step key ``all`` adds to ``context`` (or ``instructions``), under ``"2"``
    to ``context_2``; the row's own column value comes first, joined by a blank line.
    ``{{`` and ``}}`` are literal braces. Placeholders match columns ignoring case and spaces.

    Args:
        context: step key -> template for runtimeContext.
        instructions: step key -> template for runtimeInstructions.

    Raises:
        ConfigError: a step key other than ``all`` / ``1``...``7``, or a malformed template.
    """

    def __init__(
        self,
        context: Mapping[str, str] | None = None,
        instructions: Mapping[str, str] | None = None,
    ) -> None:
        self._templates: list[tuple[str, str, list[tuple[bool, str]]]] = []
        for prefix, templates in (("context", context), ("instructions", instructions)):
            for key, template in (templates or {}).items():
                step = str(key).strip().lower()
                where = f"{prefix} template {key!r}"
                if step not in STEP_KEYS:
                    msg = f"{where}: the key must be 'all' or a step number 1-{MAX_STEPS}"
                    raise ConfigError(msg)
                target = prefix if step == "all" else f"{prefix}_{step}"
                self._templates.append((where, target, _parse_template(template, where)))
        self._compiled: list[tuple[str, list[tuple[bool, str]]]] = []

    def __bool__(self) -> bool:
        return bool(self._templates)

    def check(self, headers: Sequence[str]) -> None:
        """Bind the placeholders to ``headers``; call before reading any row.

        Raises:
            ConfigError: a placeholder names no column (the message names it and the template).
        """
        columns = {column_key(h): h for h in reversed(headers)}
        self._compiled = []
        for where, target, parts in self._templates:
            bound = []
            for is_column, text in parts:
                if is_column:
                    if column_key(text) not in columns:
                        shown = ", ".join(repr(h) for h in headers[:30])
                        msg = f"{where}: placeholder {{{text}}} names no column in the input ({shown})"
                        raise ConfigError(msg)
                    text = columns[column_key(text)]
                bound.append((is_column, text))
            self._compiled.append((target, bound))

    def fill(self, row: Mapping[str, str]) -> dict[str, str]:
        """Content field -> filled text, for one row (templates that fill to blank left out)."""
        out: dict[str, str] = {}
        for target, parts in self._compiled:
            text = "".join(row.get(t, "").strip() if is_col else t for is_col, t in parts)
            if text.strip():
                out[target] = f"{out[target]}\n\n{text}" if target in out else text
        return out


def _parse_template(template: str, where: str) -> list[tuple[bool, str]]:
    """``(is_column, text)`` parts of a template."""
    parts: list[tuple[bool, str]] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        token = match[0]
        if token in ("{", "}"):
            raise ConfigError(
                f"{where}: unmatched {token!r} (write {token * 2} for a literal brace)"
            )
        parts.append((False, template[pos : match.start()]))
        if token in ("{{", "}}"):
            parts.append((False, token[0]))
        elif not match[1].strip():
            raise ConfigError(
                f"{where}: an empty placeholder {{}}; name a column inside the braces"
            )
        else:
            parts.append((True, match[1].strip()))
        pos = match.end()
    parts.append((False, template[pos:]))
    return [p for p in parts if p[0] or p[1]]
