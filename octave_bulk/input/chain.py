"""Chaining: an earlier run's results file read as the input of the next agent.

Contract: :func:`results_row` recognises a results line (an object with ``requestId``, a
``contact`` object and a ``response`` object) and turns it into an input row: the contact's
canonical fields (CRM ids included; the earlier request's own settings - target, formats,
context, its requestId - left out, the new run builds its own) plus the earlier response as
JSON text under :data:`RESPONSE_KEY`; a person's older results in the file (superseded by a
later one, :func:`latest_lines`) are left out, as ``export`` leaves them out. :class:`ResultFilter` (``--where``) decides which rows
go on, with an expression over that response: evaluated by ``simpleeval`` (Python's ``ast``
parsed, only comparisons, ``and``/``or``/``not``, ``in``, arithmetic and literals; no calls,
no attribute beyond dictionary keys, no ``eval``). Names are the response's keys, the keys
of its ``data`` (``score`` for ``data.score``) and ``contact``. A name a row's response lacks
makes the expression false for that row; any other failure on a row (``data['x']`` on a result
without ``x``, a wrong type) leaves that row out too, as ``where_failed``. An assignment or
several statements are refused when parsed (:func:`where_tree`). :func:`context_from` (``--context-from``) carries
values of the earlier response into the new request's context.

A ``--context-from`` entry ``FILE.ndjson:PATH`` reads another run's results instead
(:class:`ContextSources`): each row is joined to that file's latest result for the same
person - or, when that run was a company agent's, for the row's company (its domain, else
account id, else name) - and the value at PATH goes into the context. A pipeline writes
``STEP.PATH`` for the results of its step STEP.
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path
from typing import Any

import orjson
from simpleeval import InvalidExpression, SimpleEval

from octave_bulk.agents import COMPANY_AGENTS
from octave_bulk.agents.fields import value_at
from octave_bulk.errors import ConfigError, InputError
from octave_bulk.identity import person_key, read_person_hash
from octave_bulk.state.idset import IdSet, id_key

__all__ = [
    "PERSON_KEY",
    "RESPONSE_KEY",
    "ContextSources",
    "ResultFilter",
    "context_from",
    "latest_lines",
    "results_row",
    "where_tree",
]

RESPONSE_KEY = "@response"
"""The input row key holding the earlier response (JSON text)."""

PERSON_KEY = "@personKey"
"""The input row key holding the earlier result's ``personKey``."""

_NOT_CARRIED = frozenset(
    {
        "requestId",
        "agentOId",
        "experimentOId",
        "outputFormat",
        "runtimeContext",
        "runtimeInstructions",
        "includeFullAnnotation",
        "playbookSelectionContext",
        "customContext",
        "url",
        "limit",
        "minimal",
        "searchContext",
    }  # fmt: skip
)


def results_row(value: dict[str, Any]) -> dict[str, Any] | None:
    """The input row of a results line, or None when ``value`` is not one."""
    contact, response = value.get("contact"), value.get("response")
    if not (isinstance(value.get("requestId"), str) and isinstance(contact, dict)):
        return None
    if not isinstance(response, dict):
        return None
    row = {key: item for key, item in contact.items() if key not in _NOT_CARRIED}
    row[RESPONSE_KEY] = orjson.dumps(response).decode()
    if isinstance(value.get("personKey"), str):
        row[PERSON_KEY] = value["personKey"]
    return row


def latest_lines(path: Path, names: frozenset[str] = frozenset()) -> tuple[IdSet, set[str]]:
    """Person (``personKey`` as an int) -> the 1-based line of their latest result in a
    results file: an earlier result of the same person (made before a change) is superseded,
    and chaining reads only the latest. Also which of ``names`` (a ``--where``'s) some line
    holds as a JSON key (a byte search, in the same pass)."""
    latest = IdSet(1024, with_values=True)
    wanted = {name: f'"{name}":'.encode() for name in names}
    found: set[str] = set()
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            at = line.find(b'"personKey":"', 0, 200)
            if at >= 0:
                start = at + len(b'"personKey":"')
                person = read_person_hash(line[start : start + 16])
                if person is not None:
                    latest.put(person, number)
            if len(found) < len(wanted):
                found.update(name for name, key in wanted.items() if key in line)
    return latest, found


def where_tree(expression: str) -> ast.Expr:
    """The parsed ``--where`` expression: one expression, never a statement.

    simpleeval evaluates an assignment's value (``score = 99`` is 99: every row would pass)
    and only the first of several statements (``x = 1; False``), with a warning; so an
    assignment (``=``, ``:=``, ``+=``...), any other statement and several statements are
    refused here, before anything is sent.

    Raises:
        ValueError: why the text is not one expression (it quotes the text).
    """
    shown = repr(expression if len(expression) <= 100 else expression[:100] + "...")
    try:
        module = ast.parse(expression.strip())
    except SyntaxError as exc:
        hint = _ASSIGN_HINT if "=" in expression and "==" not in expression else ""
        raise ValueError(f"{shown} is not an expression ({exc.msg}){hint}") from None
    except (RecursionError, MemoryError):  # nested or chained beyond the parser's means
        raise ValueError(f"{shown} is nested too deeply to read") from None
    if not module.body:
        raise ValueError("an empty expression: give one, e.g. 'score >= 7'")
    statements = module.body
    for statement in statements:
        if isinstance(statement, ast.Assign) and len(statements) == 1:
            meant = " == ".join(ast.unparse(node) for node in (*statement.targets, statement.value))
            raise ValueError(f"{shown} is an assignment, not a comparison: did you mean {meant!r}?")
        if isinstance(statement, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            raise ValueError(f"{shown} is an assignment, not a comparison{_ASSIGN_HINT}")
        if not isinstance(statement, ast.Expr):
            what = type(statement).__name__.lower()
            raise ValueError(f"{shown} is a statement ({what}), not an expression")
    if len(statements) > 1:
        raise ValueError(
            f"{shown} holds {len(statements)} expressions (; or a line break): give one, "
            "joined with and / or"
        )
    tree = statements[0]
    if not isinstance(tree, ast.Expr):  # pragma: no cover - every other kind was refused above
        raise ValueError(f"{shown} is not an expression")
    if any(isinstance(node, ast.NamedExpr) for node in ast.walk(tree)):
        raise ValueError(f"{shown} holds an assignment (:=), not a comparison{_ASSIGN_HINT}")
    return tree


_ASSIGN_HINT = ": did you mean ==? (e.g. 'score == 9', not 'score = 9')"


class ResultFilter:
    """A ``--where`` expression, parsed once (:func:`where_tree`).

    Raises:
        ConfigError: the expression is not valid (its text and the reason).
    """

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._evaluator = SimpleEval()
        try:
            self._tree = where_tree(expression)
        except ValueError as exc:
            raise ConfigError(f"--where: {exc}") from None
        self.names = frozenset(
            node.id for node in ast.walk(self._tree) if isinstance(node, ast.Name)
        ) - {"contact", "True", "False", "None"}
        """The names the expression reads: each must be a field some result has."""
        self.judged = 0
        """Rows whose result had every name the expression reads."""
        self.passed = 0
        """... and of them, the rows it let through."""

    def check_names(self, present: set[str], fields: set[str], path: str) -> None:
        """Refuse (before any call) an expression naming a field that no result of the input
        has (``present``: the names found; ``fields``: the fields of the first results, for
        a did-you-mean): it would leave out every row, night after night, without a word.

        Raises:
            InputError: a name no result has.
        """
        missing = sorted(self.names - present)
        if not missing:
            return
        name = missing[0]
        close = difflib.get_close_matches(name, sorted(fields), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        shown = ", ".join(sorted(fields)[:20]) or "none"
        raise InputError(
            f"--where {self.expression!r}: no result in the input has a field {name!r} "
            f"({hint}fields of its first results: {shown}); nothing was sent",
            path=path,
        )

    def all_left_out(self) -> str | None:
        """A warning when the expression left out every row whose result had its fields."""
        if self.judged and not self.passed:
            return (
                f"--where {self.expression!r} left out all {self.judged:,} results that have "
                "its fields: is the comparison right?"
            )
        return None

    def verdict(self, response: dict[str, Any], contact: dict[str, Any]) -> tuple[str, str] | None:
        """None when the row goes on; else why it is left out, as a reject's reason and
        message: ``filtered_out`` when the expression
        is false (or names what the result lacks), ``where_failed`` when it cannot be
        evaluated on this result (a missing key, an index past the end, a wrong type, nested
        too deep)."""
        data = response.get("data")
        names = {**(data if isinstance(data, dict) else {}), **response, "contact": contact}
        self._evaluator.names = names
        judged = self.names.issubset(names)
        self.judged += judged
        try:
            if self._evaluator.eval(self.expression, previously_parsed=self._tree):
                self.passed += judged
                return None
        except InvalidExpression:  # a name the result lacks: false, as documented
            pass
        except Exception as exc:  # any failure on one row leaves that row out
            detail = f"{type(exc).__name__}: {exc}"[:200]
            message = f"--where {self.expression!r} cannot be evaluated on this result ({detail})"
            return "where_failed", message
        message = f"--where {self.expression!r} is false for this result"
        return "filtered_out", message


def context_from(paths: tuple[str, ...], response: dict[str, Any]) -> str:
    """The values at ``paths`` (dotted, from the response; ``data.`` may be left out), one
    ``name: value`` line each, for the new request's context; missing ones are skipped
    (and so are ``FILE:PATH`` entries: :class:`ContextSources`)."""
    lines = []
    for path in paths:
        if ":" in path:
            continue
        value: Any = value_at(response, path)
        if value is None:
            value = value_at(response.get("data"), path)
        if value in (None, "", [], {}):
            continue
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        lines.append(f"{path.rsplit('.', 1)[-1]}: {text}")
    return "\n".join(lines)


_COMPANY_FIELDS = ("companyDomain", "companyName", "crmAccountId")


class ContextSources:
    """The ``FILE:PATH`` entries of ``--context-from``: each file's latest values at its
    paths, by person key, read once (see the module docstring).

    Raises:
        InputError: a file cannot be read.
    """

    def __init__(self, entries: tuple[str, ...]) -> None:
        wanted: dict[str, list[str]] = {}
        for entry in entries:
            source, sep, path = entry.rpartition(":")
            if sep and source.endswith((".ndjson", ".jsonl")):
                wanted.setdefault(source, []).append(path)
        self._sources: list[tuple[str, dict[int, list[str]]]] = []
        for source, paths in wanted.items():
            kind, values = _read_source(Path(source), tuple(paths))
            self._sources.append((kind, values))

    def __bool__(self) -> bool:
        return bool(self._sources)

    def context(self, fields: dict[str, str]) -> str:
        """The lines the sources hold for this row's person (or company)."""
        lines: list[str] = []
        for kind, values in self._sources:
            body = {k: v for k, v in fields.items() if k in _COMPANY_FIELDS}
            key = person_key(body if kind in COMPANY_AGENTS else fields, None, kind)
            if key is not None:
                lines += values.get(id_key(key), [])
        return "\n".join(lines)


def _read_source(path: Path, paths: tuple[str, ...]) -> tuple[str, dict[int, list[str]]]:
    kind, values = "sequence", {}
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                try:
                    line = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                person = read_person_hash(line.get("personKey")) if isinstance(line, dict) else None
                response = line.get("response") if isinstance(line, dict) else None
                if person is None or not isinstance(response, dict):
                    continue
                kind = str(line.get("agentType") or kind)
                text = context_from(paths, response)
                values[person] = text.split("\n") if text else []
    except OSError as exc:
        raise InputError(f"--context-from: cannot read it ({exc.strerror})", path=path) from None
    return kind, values
