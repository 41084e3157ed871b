"""What the agents other than the Sequence Agent share: request fields, how a contact becomes
a flat body, success rules, and flattening a payload into export columns.

Every agent besides ``sequence`` takes a flat body of identity fields (a person's, or a
company's), ``runtimeContext`` (free text or an object), ``includeFullAnnotation`` and its
target (``agentOId``; ``experimentOId`` where documented). The ``requestId`` body field is
documented for the Sequence Agent only: the others get ours as the ``x-external-request-id``
header alone (docs/octave-api.md, section "requestId semantics").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydantic import Field, ValidationError, model_validator

from octave_bulk.agents.base import RequestSpec, model_reject
from octave_bulk.agents.envelope import Metadata, RequestModel, ResponseModel
from octave_bulk.agents.fields import value_at
from octave_bulk.input.records import Contact, Reject

__all__ = [
    "COMPANY_FIELDS",
    "PERSON_FIELDS",
    "AgentResponse",
    "CompanyRequest",
    "PersonRequest",
    "TargetedRequest",
    "flat_body_builder",
    "flatten",
    "needs",
]

PERSON_FIELDS = (
    "email",
    "firstName",
    "lastName",
    "jobTitle",
    "companyName",
    "companyDomain",
    "linkedInProfile",
)
"""The identity fields a person agent receives."""

COMPANY_FIELDS = ("companyDomain", "companyName", "crmAccountId")
"""The identity fields a company agent receives."""


class TargetedRequest(RequestModel):
    """The target and the fields every agent shares."""

    agent_o_id: str | None = Field(default=None, alias="agentOId")
    runtime_context: str | dict[str, Any] | None = None
    include_full_annotation: bool | None = None

    @model_validator(mode="after")
    def _has_target(self) -> TargetedRequest:
        target = [self.agent_o_id, getattr(self, "experiment_o_id", None)]
        if sum(value is not None for value in target) != 1:
            raise ValueError("exactly one of agentOId or experimentOId must be set")
        return self


class PersonRequest(TargetedRequest):
    """A person agent's body (enrich-person, qualify-person, call-prep)."""

    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    job_title: str | None = None
    company_name: str | None = None
    company_domain: str | None = None
    linked_in_profile: str | None = None


class CompanyRequest(TargetedRequest):
    """A company agent's body (enrich-company, qualify-company)."""

    company_domain: str | None = None
    company_name: str | None = None
    crm_account_id: str | None = None


class AgentResponse(ResponseModel):
    """The envelope every agent answers with; ``data`` is the agent's own payload."""

    metadata: Metadata = Field(alias="_metadata")
    found: bool
    message: str | None = None
    data: dict[str, Any] | None = None


def flat_body_builder(
    fields: Iterable[str],
    model: type[RequestModel],
    *,
    experiments: bool = False,
    extra: Callable[[RequestSpec], dict[str, Any]] | None = None,
) -> Callable[[Contact, RequestSpec], dict[str, Any] | Reject]:
    """A ``build_body`` for a flat agent: the contact's ``fields`` that are set, its
    ``context`` column (else ``--context``) as ``runtimeContext``, the run-wide fields and
    ``extra(spec)``; checked against ``model`` (a refusal is an ``invalid_field`` reject)."""
    names = tuple(fields)

    def build(contact: Contact, spec: RequestSpec) -> dict[str, Any] | Reject:
        row = contact.fields
        body: dict[str, Any] = {name: row[name] for name in names if row.get(name)}
        if row.get("requestId"):
            body["requestId"] = row["requestId"]  # ours; not sent (see the module docstring)
        context = row.get("context") or spec.context
        if context:
            body["runtimeContext"] = context
        if spec.include_full_annotation is not None:
            body["includeFullAnnotation"] = spec.include_full_annotation
        if experiments and spec.experiment_o_id:
            body["experimentOId"] = spec.experiment_o_id
        elif spec.agent_o_id:
            body["agentOId"] = spec.agent_o_id
        if extra is not None:
            body.update(extra(spec))
        try:
            model.model_validate({k: v for k, v in body.items() if k != "requestId"})
        except ValidationError as exc:
            return model_reject(exc, contact)
        return body

    return build


def needs(*paths: str) -> Callable[[dict[str, Any]], str | None]:
    """A success rule: ``found`` true and, at one of ``paths`` (dotted, under the payload),
    a value that is not empty; else why not."""

    def failure(payload: dict[str, Any]) -> str | None:
        if not payload.get("found"):
            return f"nothing produced: {payload.get('message') or 'found: false'}"
        for path in paths:
            value = value_at(payload, path)
            if value not in (None, "", [], {}):
                return None
        return f"nothing produced: no {' or '.join(paths)} in the answer"

    return failure


def flatten(value: Any, prefix: str = "", *, max_items: int = 10) -> dict[str, str]:
    """A nested value as flat columns: ``a.b.c`` for objects, ``a.0.b`` for lists (up to
    ``max_items`` items), lists of plain values joined by ``; ``."""
    columns: dict[str, str] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            columns.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list):
        if all(not isinstance(item, dict | list) for item in value):
            columns[prefix] = "; ".join("" if item is None else str(item) for item in value)
        else:
            for index, item in enumerate(value[:max_items]):
                columns.update(flatten(item, f"{prefix}.{index}"))
    elif value is not None:
        columns[prefix] = str(value).lower() if isinstance(value, bool) else str(value)
    return columns
