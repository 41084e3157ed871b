"""The Sequence Agent: a personalised multi-step email sequence for one contact.

``POST /api/v2/agents/sequence/run`` (docs/octave-api.md, section "Sequence Agent"). Its
request and response models field by field, and :data:`SEQUENCE`, the agent as the engine
sees it: how a contact becomes a request body, and what counts as a produced sequence.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import Field, ValidationError, model_validator

from octave_bulk.agents.base import Agent, RequestSpec, merge_steps, model_reject
from octave_bulk.agents.envelope import Metadata, RequestModel, ResponseModel, StepMapping
from octave_bulk.agents.fields import STEP_KEYS, OutputFormat
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
    body["outputFormat"] = spec.output_format.value
    if _IDENTITY_NAMES.issuperset(row):  # no context or instructions of its own (usual)
        context, instructions = _spec_steps(spec)
        context, instructions = dict(context), dict(instructions)
    else:
        context = merge_steps(spec.context, row, "context")
        instructions = merge_steps(spec.instructions, row, "instructions")
    if context:
        body["runtimeContext"] = context
    if instructions:
        body["runtimeInstructions"] = instructions
    body.update(_spec_tail(spec))
    # The model only checks; the body sent is the dict built here (already in wire form). A
    # body of plain strings for string fields, known step keys and exactly one target cannot
    # fail it (_plainly_valid); any other goes through the model, which names the fault.
    if _plainly_valid(body):
        return body
    try:
        SequenceRequest.model_validate(body)
    except ValidationError as exc:
        return model_reject(exc, contact)
    return body


_IDENTITY_NAMES = frozenset(IDENTITY_FIELDS)  # none starts with "context" or "instructions"


def _fast_fields() -> tuple[frozenset[str], bool]:
    """Wire names of the request's plain ``str | None`` fields (no constraints), and whether
    the model holds no checks besides its fields' types and ``_one_target`` (else the fast
    check is off and every body goes through the model)."""
    fields = SequenceRequest.model_fields
    plain = frozenset(
        info.alias or name
        for name, info in fields.items()
        if info.annotation == (str | None) and not info.metadata
    )
    checks = SequenceRequest.__pydantic_decorators__
    usable = (
        set(checks.model_validators) == {"_one_target"}
        and not checks.field_validators
        and fields["output_format"].annotation == (OutputFormat | None)
        and fields["include_full_annotation"].annotation == (bool | None)
        and {fields[n].alias for n in ("runtime_context", "runtime_instructions")} == _STEP_FIELDS
        and {fields[n].alias for n in ("agent_o_id", "experiment_o_id")} <= plain
        and plain >= _IDENTITY_NAMES
    )
    return plain, usable


_STEP_FIELDS = frozenset({"runtimeContext", "runtimeInstructions"})
_FORMATS = frozenset(f.value for f in OutputFormat)
_STR_FIELDS, _FAST = _fast_fields()


def _plainly_valid(body: dict[str, Any]) -> bool:
    """True only for a body :class:`SequenceRequest` certainly accepts: every key a field of
    it (by wire name), ``str`` values for string fields (exactly ``str``), a known output
    format, ``bool`` for includeFullAnnotation, string step mappings with known keys, and
    exactly one of agentOId / experimentOId. False means "ask the model", not "invalid"."""
    if not _FAST or ("agentOId" in body) == ("experimentOId" in body):
        return False
    for key, value in body.items():
        if key in _STR_FIELDS:
            if type(value) is not str:
                return False
        elif key in _STEP_FIELDS:
            if type(value) is not dict:
                return False
            for step, text in value.items():
                if type(step) is not str or step not in STEP_KEYS or type(text) is not str:
                    return False
        elif key == "outputFormat":
            if type(value) is not str or value not in _FORMATS:
                return False
        elif key == "includeFullAnnotation":
            if type(value) is not bool:
                return False
        else:
            return False
    return True


@functools.lru_cache(maxsize=8)
def _spec_steps(spec: RequestSpec) -> tuple[dict[str, str], dict[str, str]]:
    """runtimeContext / runtimeInstructions of a row with no context or instructions of its
    own: what ``merge_steps`` gives for it (copied per body by the caller)."""
    return merge_steps(spec.context, {}, "context"), merge_steps(
        spec.instructions, {}, "instructions"
    )


@functools.lru_cache(maxsize=8)
def _spec_tail(spec: RequestSpec) -> dict[str, Any]:
    """The run-wide fields that follow the steps, in wire order, unset ones left out."""
    tail = {
        "playbookSelectionContext": spec.playbook_selection_context,
        "includeFullAnnotation": spec.include_full_annotation,
        "agentOId": spec.agent_o_id,
        "experimentOId": spec.experiment_o_id,
    }
    return {key: value for key, value in tail.items() if value is not None}


def _has_content(email: Any) -> bool:
    """An email with a subject or a body (``email``, or any section): ``{}`` is not one."""
    if not isinstance(email, dict):
        return False
    if email.get("subject") or email.get("email"):
        return True
    sections = email.get("sections")
    return isinstance(sections, dict) and any(sections.values())


def sequence_failure(payload: dict[str, Any]) -> str | None:
    """None when the answer holds at least one email, else why it holds none."""
    data = payload.get("data")
    emails = data.get("emails") if isinstance(data, dict) else None
    if payload.get("found") and isinstance(emails, list) and any(map(_has_content, emails)):
        return None
    why = payload.get("message") or (
        "found: false"
        if not payload.get("found")
        else "no emails"
        if not emails
        else "emails without a subject or a body"
    )
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
