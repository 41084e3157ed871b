"""Pydantic models of the Sequence Agent API, field by field from the API document.

Wire names are camelCase, Python names snake_case. Request models forbid unknown fields, so a
typo in a config or mapping fails before any paid call. Response models keep every field they
do not know (the API grows) and tolerate missing optional ones: a paid response must never be
thrown away because a field it does not need changed shape.

Endpoint: ``POST /api/v2/agents/sequence/run`` (see ``../shared/seeds/``).
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "MAX_STEPS",
    "STEP_KEYS",
    "Annotation",
    "Annotations",
    "CustomContext",
    "CustomField",
    "Email",
    "EmailSections",
    "EntityRef",
    "ErrorResponse",
    "Metadata",
    "OutputFormat",
    "Persona",
    "Playbook",
    "Product",
    "ProductData",
    "QualifyingQuestion",
    "SequenceData",
    "SequenceRequest",
    "SequenceResponse",
    "StepMapping",
    "credits_of",
]

MAX_STEPS = 7
"""Highest step key accepted in runtimeContext / runtimeInstructions.

The API page lists steps 1-4; Octave's own n8n node builds keys up to 7 and headless sequences
allow 7 steps, so 7 is the documented upper bound we accept."""

STEP_KEYS = frozenset({"all", *(str(n) for n in range(1, MAX_STEPS + 1))})
"""The keys of a runtimeContext / runtimeInstructions mapping: ``all`` and ``1`` ... ``MAX_STEPS``."""


def _check_step_keys(value: dict[str, str]) -> dict[str, str]:
    bad = sorted(k for k in value if k not in STEP_KEYS)
    if bad:
        shown = ", ".join(repr(k) for k in bad)
        msg = f"key {shown} is not allowed; use 'all' or a step number 1-{MAX_STEPS}"
        raise ValueError(msg)
    return value


StepMapping = Annotated[dict[str, str], AfterValidator(_check_step_keys)]
"""A runtimeContext / runtimeInstructions mapping: keys ``all`` and ``1`` ... ``MAX_STEPS``."""


def credits_of(usage: object) -> float:
    """Credits from a ``_metadata.usage`` value: a number, else 0 (booleans are not numbers)."""
    if isinstance(usage, int | float) and not isinstance(usage, bool):
        return float(usage)
    return 0.0


class OutputFormat(enum.StrEnum):
    """Format of the generated email text."""

    TEXT = "text"
    HTML = "html"
    MARKDOWN = "markdown"


class _RequestModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        str_strip_whitespace=False,
    )


class EntityRef(_RequestModel):
    """A reference to a library entity by its object id (``oId``)."""

    o_id: str = Field(alias="oId", min_length=1)


class CustomContext(_RequestModel):
    """Pins the library entities the agent should use instead of choosing them."""

    playbook: EntityRef | None = None
    product: EntityRef | None = None
    service: EntityRef | None = None
    persona: EntityRef | None = None
    segment: EntityRef | None = None


class SequenceRequest(_RequestModel):
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


class _ResponseModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


class Metadata(_ResponseModel):
    """``_metadata``: Octave's own id for the response, timestamp and credits used."""

    request_id: str | None = None
    timestamp: str | None = None
    # A number in the document; kept loose so that a richer usage object never loses a response.
    usage: float | dict[str, Any] | None = None
    message: str | None = None

    @property
    def credits(self) -> float:
        """Credits this call used, 0 when the API did not say."""
        return credits_of(self.usage)


class EmailSections(_ResponseModel):
    """The parts an email is assembled from."""

    greeting: str | None = None
    opening: str | None = None
    body: str | None = None
    closing: str | None = None
    cta: str | None = None
    ps: str | None = None
    signature: str | None = None


class Email(_ResponseModel):
    """One step of the sequence."""

    email: str | None = None
    subject: str | None = None
    core_value_prop: str | None = None
    sections: EmailSections | None = None


class CustomField(_ResponseModel):
    """A user-defined product field."""

    title: str | None = None
    value: list[str] | None = None


class ProductData(_ResponseModel):
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


class QualifyingQuestion(_ResponseModel):
    """A question used to qualify a contact against a product or persona."""

    question: str | None = None
    rationale: str | None = None
    fit_type: str | None = None
    weight: str | None = None
    archived_at: str | None = None


class Product(_ResponseModel):
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


class Playbook(_ResponseModel):
    """The playbook the agent matched."""

    o_id: str | None = Field(default=None, alias="oId")
    name: str | None = None
    description: str | None = None
    type: str | None = None
    key_insight: list[str] | None = None
    match_confidence: str | None = None
    match_analysis: str | None = None


class Persona(_ResponseModel):
    """The persona the agent matched."""

    o_id: str | None = Field(default=None, alias="oId")
    name: str | None = None
    internal_name: str | None = None
    qualifying_questions: list[QualifyingQuestion] | None = None
    match_confidence: str | None = None
    match_analysis: str | None = None


class Annotation(_ResponseModel):
    """A source the agent drew on."""

    type: str | None = None
    title: str | None = None
    meta: Any = None
    description: str | None = None
    url: str | None = None


class Annotations(_ResponseModel):
    """Annotations block; full metadata only with ``includeFullAnnotation``."""

    annotations: list[Annotation] | None = None
    metadata: Any = None


class SequenceData(_ResponseModel):
    """``data`` of a sequence response."""

    emails: list[Email] = Field(default_factory=list)
    product: Product | None = None
    playbook: Playbook | None = None
    persona: Persona | None = None
    output_type: str | None = None
    annotations: Annotations | None = None


class SequenceResponse(_ResponseModel):
    """Response of a sequence run. ``found`` false means no sequence was produced."""

    metadata: Metadata = Field(alias="_metadata")
    found: bool
    message: str | None = None
    data: SequenceData | None = None

    @property
    def emails(self) -> list[Email]:
        """The generated emails, empty when there are none."""
        return self.data.emails if self.data is not None else []


class ErrorResponse(_ResponseModel):
    """Octave's error envelope: ``_metadata`` plus a detail ``message``."""

    metadata: Metadata = Field(alias="_metadata")
    message: str | None = None
