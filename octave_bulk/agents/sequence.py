"""The Sequence Agent: a personalised multi-step email sequence for one contact.

``POST /api/v2/agents/sequence/run`` (docs/octave-api.md, section "Sequence Agent"). Its
request and response models field by field, and :data:`SEQUENCE`, the agent as the engine
sees it: how a contact becomes a request body, and what counts as a produced sequence.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from octave_bulk.agents.base import Agent, RequestSpec, merge_steps
from octave_bulk.agents.envelope import Metadata, RequestModel, ResponseModel, StepMapping
from octave_bulk.agents.fields import OutputFormat
from octave_bulk.input.records import IDENTITY_FIELDS, Contact, Reject

__all__ = [
    "SEQUENCE",
    "Annotation",
    "Annotations",
    "CustomContext",
    "CustomField",
    "Email",
    "EmailSections",
    "EntityRef",
    "Persona",
    "Playbook",
    "Product",
    "ProductData",
    "QualifyingQuestion",
    "SequenceData",
    "SequenceRequest",
    "SequenceResponse",
    "build_sequence_body",
    "sequence_failure",
]


class EntityRef(RequestModel):
    """A reference to a library entity by its object id (``oId``)."""

    o_id: str = Field(alias="oId", min_length=1)


class CustomContext(RequestModel):
    """Pins the library entities the agent should use instead of choosing them."""

    playbook: EntityRef | None = None
    product: EntityRef | None = None
    service: EntityRef | None = None
    persona: EntityRef | None = None
    segment: EntityRef | None = None


class SequenceRequest(RequestModel):
    """Body of ``POST /api/v2/agents/sequence/run``: one contact, one sequence.

    Exactly one of ``agent_o_id`` / ``experiment_o_id`` must be set.
    """

    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    job_title: str | None = None
    company_domain: str | None = None
    company_name: str | None = None
    linked_in_profile: str | None = None
    crm_contact_id: str | None = None
    crm_lead_id: str | None = None
    crm_account_id: str | None = None
    lang: str | None = None
    request_id: str | None = None
    output_format: OutputFormat | None = None
    runtime_context: StepMapping | None = None
    runtime_instructions: StepMapping | None = None
    playbook_selection_context: str | None = None
    custom_context: CustomContext | None = None
    agent_o_id: str | None = Field(default=None, alias="agentOId")
    experiment_o_id: str | None = Field(default=None, alias="experimentOId")
    include_full_annotation: bool | None = None

    @model_validator(mode="after")
    def _one_target(self) -> SequenceRequest:
        if (self.agent_o_id is None) == (self.experiment_o_id is None):
            msg = "exactly one of agentOId or experimentOId must be set"
            raise ValueError(msg)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The JSON body as sent: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class EmailSections(ResponseModel):
    """The parts an email is assembled from."""

    greeting: str | None = None
    opening: str | None = None
    body: str | None = None
    closing: str | None = None
    cta: str | None = None
    ps: str | None = None
    signature: str | None = None


class Email(ResponseModel):
    """One step of the sequence."""

    email: str | None = None
    subject: str | None = None
    core_value_prop: str | None = None
    sections: EmailSections | None = None


class CustomField(ResponseModel):
    """A user-defined product field."""

    title: str | None = None
    value: list[str] | None = None


class ProductData(ResponseModel):
    """The product's library record."""

    type: str | None = None
    internal_name: str | None = None
    summary: str | None = None
    capabilities: list[str] | None = None
    differentiated_value: list[str] | None = None
    status_quo: list[str] | None = None
    challenges_addressed: list[str] | None = None
    customer_benefits: list[str] | None = None
    custom_fields: list[CustomField] | None = None


class QualifyingQuestion(ResponseModel):
    """A question used to qualify a contact against a product or persona."""

    question: str | None = None
    rationale: str | None = None
    fit_type: str | None = None
    weight: str | None = None
    archived_at: str | None = None


class Product(ResponseModel):
    """The product the agent matched."""

    data: ProductData | None = None
    o_id: str | None = Field(default=None, alias="oId")
    name: str | None = None
    internal_name: str | None = None
    description: str | None = None
    primary_url: str | None = None
    qualifying_questions: list[QualifyingQuestion] | None = None
    match_confidence: str | None = None
    match_analysis: str | None = None


class Playbook(ResponseModel):
    """The playbook the agent matched."""

    o_id: str | None = Field(default=None, alias="oId")
    name: str | None = None
    description: str | None = None
    type: str | None = None
    key_insight: list[str] | None = None
    match_confidence: str | None = None
    match_analysis: str | None = None


class Persona(ResponseModel):
    """The persona the agent matched."""

    o_id: str | None = Field(default=None, alias="oId")
    name: str | None = None
    internal_name: str | None = None
    qualifying_questions: list[QualifyingQuestion] | None = None
    match_confidence: str | None = None
    match_analysis: str | None = None


class Annotation(ResponseModel):
    """A source the agent drew on."""

    type: str | None = None
    title: str | None = None
    meta: Any = None
    description: str | None = None
    url: str | None = None


class Annotations(ResponseModel):
    """Annotations block; full metadata only with ``includeFullAnnotation``."""

    annotations: list[Annotation] | None = None
    metadata: Any = None


class SequenceData(ResponseModel):
    """``data`` of a sequence response."""

    emails: list[Email] = Field(default_factory=list)
    product: Product | None = None
    playbook: Playbook | None = None
    persona: Persona | None = None
    output_type: str | None = None
    annotations: Annotations | None = None


class SequenceResponse(ResponseModel):
    """Response of a sequence run. ``found`` false means no sequence was produced."""

    metadata: Metadata = Field(alias="_metadata")
    found: bool
    message: str | None = None
    data: SequenceData | None = None

    @property
    def emails(self) -> list[Email]:
        """The generated emails, empty when there are none."""
        return self.data.emails if self.data is not None else []


def build_sequence_body(contact: Contact, spec: RequestSpec) -> dict[str, Any] | Reject:
    """The request body for one contact, or a reject naming the field the model refused."""
    row = contact.fields
    body: dict[str, Any] = {name: row[name] for name in IDENTITY_FIELDS if row.get(name)}
    if spec.lang and "lang" not in body:
        body["lang"] = spec.lang
    optional = {
        "runtimeContext": merge_steps(spec.context, row, "context"),
        "runtimeInstructions": merge_steps(spec.instructions, row, "instructions"),
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
    return body


def sequence_failure(payload: dict[str, Any]) -> str | None:
    """None when the answer holds at least one email, else why it holds none."""
    data = payload.get("data")
    emails = data.get("emails") if isinstance(data, dict) else None
    if payload.get("found") and isinstance(emails, list) and emails:
        return None
    why = payload.get("message") or ("found: false" if not payload.get("found") else "no emails")
    return f"no sequence produced: {why}"


SEQUENCE = Agent(
    kind="sequence",
    path="/api/v2/agents/sequence/run",
    request_model=SequenceRequest,
    response_model=SequenceResponse,
    build_body=build_sequence_body,
    failure=sequence_failure,
)
"""The Sequence Agent."""
