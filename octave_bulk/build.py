"""Request builder: a :class:`Contact` plus the run's settings becomes one Sequence Agent request.

The ``requestId`` is the row's own when it has one; otherwise it is derived from everything
that shapes the emails (target, contact fields, context, instructions, format, language, ...),
so the same input and settings give the same ids on every run and any change that would change
the emails gives new ones. It is the resume key, the dedup key and the join key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from octave_bulk.agents.sequence import OutputFormat, SequenceRequest
from octave_bulk.input.records import IDENTITY_FIELDS, Contact, Reject
from octave_bulk.state.checkpoint import IdSet, id_key

__all__ = ["BuiltRequest", "RequestBuilder", "RequestSpec", "build_request", "derive_request_id"]

_ID_PREFIX = "ob-"


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """The run-wide parts of every request (from settings)."""

    agent_o_id: str | None = None
    experiment_o_id: str | None = None
    output_format: OutputFormat = OutputFormat.TEXT
    lang: str | None = None
    context: str | None = None
    instructions: str | None = None
    playbook_selection_context: str | None = None
    include_full_annotation: bool | None = None


def _merge(global_all: str | None, row: dict[str, str], prefix: str) -> dict[str, str]:
    """runtimeContext/runtimeInstructions: global and row text for ``all``, ``prefix_N`` for N."""
    merged: dict[str, list[str]] = {}
    if global_all:
        merged.setdefault("all", []).append(global_all)
    for name, text in row.items():
        if name == prefix:
            merged.setdefault("all", []).append(text)
        elif name.startswith(prefix + "_"):
            merged.setdefault(name[len(prefix) + 1 :], []).append(text)
    return {key: "\n\n".join(parts) for key, parts in merged.items()}


def derive_request_id(wire: dict[str, Any]) -> str:
    """A stable id from a request body (``requestId`` itself excluded)."""
    payload = {k: v for k, v in wire.items() if k != "requestId"}
    digest = hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return _ID_PREFIX + digest[:32]


@dataclass(frozen=True, slots=True)
class BuiltRequest:
    """A request that passed the model: its requestId, its done-set key, the body to send."""

    request_id: str
    key: int
    wire: dict[str, Any]


def build_request(contact: Contact, spec: RequestSpec) -> BuiltRequest | Reject:
    """Build the request for one contact, or a reject naming the field the model refused."""
    row = contact.fields
    body: dict[str, Any] = {name: row[name] for name in IDENTITY_FIELDS if row.get(name)}
    if spec.lang and "lang" not in body:
        body["lang"] = spec.lang
    optional = {
        "runtimeContext": _merge(spec.context, row, "context"),
        "runtimeInstructions": _merge(spec.instructions, row, "instructions"),
        "playbookSelectionContext": spec.playbook_selection_context,
        "includeFullAnnotation": spec.include_full_annotation,
        "agentOId": spec.agent_o_id,
        "experimentOId": spec.experiment_o_id,
    }
    body["outputFormat"] = spec.output_format.value
    body |= {key: value for key, value in optional.items() if value is not None and value != {}}
    try:
        # The model only checks; the body sent is the dict built here (already in wire form).
        SequenceRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"]) or None
        message = str(error["msg"]).removeprefix("Value error, ")
        return Reject(contact.line, "invalid_field", where, message, dict(row))
    if not body.get("requestId"):
        body["requestId"] = derive_request_id(body)
    return BuiltRequest(body["requestId"], id_key(body["requestId"]), body)


class RequestBuilder:
    """Builds requests row by row; a row with the requestId of an earlier row becomes a
    ``duplicate`` reject naming that row's line (the first one wins, and is sent once).

    Args:
        spec: the run-wide request fields.
        expected_rows: input size, to size the table of first lines (~17 bytes per row).
    """

    def __init__(self, spec: RequestSpec, expected_rows: int = 1024) -> None:
        self.spec = spec
        self._first_line = IdSet(expected_rows, with_values=True)

    def build(self, contact: Contact) -> BuiltRequest | Reject:
        """The request for this row, or why it will not be sent."""
        built = build_request(contact, self.spec)
        if isinstance(built, Reject):
            return built
        first = self._first_line.setdefault(built.key, contact.line)
        if first == contact.line:
            return built
        message = f"the same request as line {first} (requestId {built.request_id})"
        return Reject(contact.line, "duplicate", "requestId", message, dict(contact.fields))
