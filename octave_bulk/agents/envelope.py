"""What every Octave agent's API shares: the response envelope, the error envelope, credits,
the output formats and the base models.

Wire names are camelCase, Python names snake_case. Request models forbid unknown fields, so a
typo in a config or mapping fails before any paid call. Response models keep every field they
do not know (the API grows) and tolerate missing optional ones: a paid response must never be
thrown away because a field it does not need changed shape (docs/octave-api.md, section
"Agent endpoints").
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from octave_bulk.agents.fields import MAX_STEPS, STEP_KEYS, credits_of

__all__ = ["ErrorResponse", "Metadata", "RequestModel", "ResponseModel", "StepMapping"]


def _check_step_keys(value: dict[str, str]) -> dict[str, str]:
    bad = sorted(k for k in value if k not in STEP_KEYS)
    if bad:
        shown = ", ".join(repr(k) for k in bad)
        msg = f"key {shown} is not allowed; use 'all' or a step number 1-{MAX_STEPS}"
        raise ValueError(msg)
    return value


StepMapping = Annotated[dict[str, str], AfterValidator(_check_step_keys)]
"""A runtimeContext / runtimeInstructions mapping: keys ``all`` and ``1`` ... ``MAX_STEPS``."""


class RequestModel(BaseModel):
    """Base of every request model: camelCase on the wire, unknown fields refused, frozen."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        str_strip_whitespace=False,
    )


class ResponseModel(BaseModel):
    """Base of every response model: camelCase on the wire, unknown fields kept."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


class Metadata(ResponseModel):
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


class ErrorResponse(ResponseModel):
    """Octave's error envelope: ``_metadata`` plus a detail ``message``."""

    metadata: Metadata = Field(alias="_metadata")
    message: str | None = None
