"""What the engine needs to know of an agent, and the run-wide request fields.

An :class:`Agent` is data: its kind, its endpoint, its request and response models, how a
contact becomes a request body, and what in an answer's payload means "nothing produced".
The engine, the pacer, the sink and the state are agent-agnostic; they only hold an Agent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from octave_bulk.agents.fields import OutputFormat
from octave_bulk.input.records import Contact, Reject

__all__ = ["Agent", "RequestSpec", "merge_steps", "model_reject"]


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
    url: str | None = None
    """Content Agent: a page the content is about."""
    prospect_limit: int | None = None
    """Prospector: people per company (1-1000; the agent's own setting when unset)."""
    search_context: str | None = None
    """Prospector: the ``searchContext`` object, as JSON text."""
    prospect_minimal: bool | None = None
    """Prospector: ``minimal`` (drops positions, picture URL and nested company)."""


@dataclass(frozen=True, slots=True)
class Agent:
    """One Octave agent as the engine sees it.

    Attributes:
        kind: the registry name (``sequence``).
        path: the endpoint, e.g. ``/api/v2/agents/sequence/run``.
        request_model: checks a body before it is sent (a refusal becomes a reject).
        response_model: the faithful response (unknown fields kept), for readers of results.
        build_body: contact + run-wide fields -> the wire body (camelCase, no requestId yet),
            or a reject naming the field at fault.
        failure: a 200 answer's payload -> None when the agent produced what was asked, else
            why not (the contact then fails as ``not_found``, not retried).
        subject: ``person`` or ``company``: what one input row is (company rows need a
            domain, a name or an account id instead of an email or a LinkedIn profile).
        api_type: the agent type in Octave's agent list (``EMAIL`` for sequences).
        sends_request_id: whether the body carries our ``requestId`` (documented for the
            Sequence Agent only; every agent gets it as ``x-external-request-id``).
        export_rows: a success's payload -> its export rows (column -> text; the prospector
            gives one per person found); None for the Sequence Agent (its own layout).
    """

    kind: str
    path: str
    request_model: type[BaseModel]
    response_model: type[BaseModel]
    build_body: Callable[[Contact, RequestSpec], dict[str, Any] | Reject]
    failure: Callable[[dict[str, Any]], str | None]
    subject: str = "person"
    api_type: str = "EMAIL"
    sends_request_id: bool = True
    export_rows: Callable[[dict[str, Any]], list[dict[str, str]]] | None = None


def merge_steps(global_all: str | None, row: dict[str, str], prefix: str) -> dict[str, str]:
    """runtimeContext/runtimeInstructions: global and row text for ``all``, ``prefix_N`` for
    step N (several texts for one key are joined by a blank line)."""
    merged: dict[str, list[str]] = {}
    if global_all:
        merged.setdefault("all", []).append(global_all)
    for name, text in row.items():
        if name == prefix:
            merged.setdefault("all", []).append(text)
        elif name.startswith(prefix + "_"):
            merged.setdefault(name[len(prefix) + 1 :], []).append(text)
    return {key: "\n\n".join(parts) for key, parts in merged.items()}


def model_reject(exc: ValidationError, contact: Contact) -> Reject:
    """The ``invalid_field`` reject for a body the request model refused: its first error,
    naming the field."""
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in error["loc"]) or None
    message = str(error["msg"]).removeprefix("Value error, ")
    return Reject(contact.line, "invalid_field", where, message, dict(contact.fields))
