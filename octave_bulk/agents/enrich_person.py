"""The Enrich Person Agent: a person's profile, company and matched library entities.

``POST /api/v2/agents/enrich-person/run`` (docs/octave-api.md, section "Enrich Person"). The
detailed person fields are not documented: the response model keeps every field, and the
export flattens ``data.person`` and ``data.company`` whatever they hold.
"""

from __future__ import annotations

from typing import Any

from octave_bulk.agents.base import Agent
from octave_bulk.agents.common import (
    PERSON_FIELDS,
    AgentResponse,
    PersonRequest,
    flat_body_builder,
    flatten,
    needs,
)

__all__ = ["ENRICH_PERSON", "EnrichPersonRequest", "EnrichPersonResponse", "enrich_person_rows"]


class EnrichPersonRequest(PersonRequest):
    """Body of ``POST /api/v2/agents/enrich-person/run``."""


class EnrichPersonResponse(AgentResponse):
    """Its answer: ``data`` holds the enriched profile (``person``, ``company``, ...)."""


def enrich_person_rows(payload: dict[str, Any]) -> list[dict[str, str]]:
    """One row: the person's and the company's fields, flattened."""
    data = payload.get("data") or {}
    row = flatten(data.get("person"), "person") | flatten(data.get("company"), "company")
    return [row]


ENRICH_PERSON = Agent(
    kind="enrich-person",
    path="/api/v2/agents/enrich-person/run",
    request_model=EnrichPersonRequest,
    response_model=EnrichPersonResponse,
    build_body=flat_body_builder(PERSON_FIELDS, EnrichPersonRequest),
    failure=needs("data.person", "data.company"),
    api_type="ENRICH_PERSON",
    sends_request_id=False,
    export_rows=enrich_person_rows,
)
"""The Enrich Person Agent."""
