"""The Prospector Agent: the people at one company (one row in, many people out).

``POST /api/v2/agents/prospector/run`` (docs/octave-api.md, section "Other agents"): body
``companyDomain``, ``agentOId``, ``limit`` (1-1000, the agent's own setting when unset),
``minimal`` and ``searchContext``. Where the answer lists the people is not documented: the
first list found under ``data`` at one of :data:`PEOPLE_KEYS` is taken.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from octave_bulk.agents.base import Agent, RequestSpec
from octave_bulk.agents.common import AgentResponse, TargetedRequest, flat_body_builder
from octave_bulk.agents.enrich_company import company_columns

__all__ = [
    "PEOPLE_KEYS",
    "PROSPECTOR",
    "ProspectorRequest",
    "ProspectorResponse",
    "people_of",
    "prospector_failure",
    "prospector_rows",
]

PEOPLE_KEYS = ("people", "contacts", "prospects", "results")
"""Where under ``data`` the people found may be listed (the first present wins)."""


class ProspectorRequest(TargetedRequest):
    """Body of ``POST /api/v2/agents/prospector/run``."""

    company_domain: str = Field(min_length=1)
    limit: int | None = Field(default=None, ge=1, le=1000)
    minimal: bool | None = None
    search_context: dict[str, Any] | None = None


class ProspectorResponse(AgentResponse):
    """Its answer: the people found (see :data:`PEOPLE_KEYS`)."""


def people_of(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The people an answer lists."""
    data = payload.get("data") or {}
    for key in PEOPLE_KEYS:
        people = data.get(key)
        if isinstance(people, list):
            return [person for person in people if isinstance(person, dict)]
    return []


def prospector_failure(payload: dict[str, Any]) -> str | None:
    """Success: ``found`` and at least one person."""
    if not payload.get("found"):
        return f"nothing produced: {payload.get('message') or 'found: false'}"
    return None if people_of(payload) else "nothing produced: no people in the answer"


def prospector_rows(payload: dict[str, Any]) -> list[dict[str, str]]:
    """One row per person found, with the company it was found at."""
    rows = []
    for person in people_of(payload):
        company = person.get("company") if isinstance(person.get("company"), dict) else {}
        firmographics = company_columns(company)
        rows.append(
            {
                "first_name": str(person.get("firstName") or ""),
                "last_name": str(person.get("lastName") or ""),
                "title": str(person.get("title") or person.get("jobTitle") or ""),
                "email": str(person.get("email") or ""),
                "linkedin_url": str(
                    person.get("profileUrl") or person.get("linkedInProfile") or ""
                ),
                "location": str(person.get("location") or ""),
                "person_company_name": firmographics["company_name"],
                "person_company_domain": firmographics["company_domain"],
            }
        )
    return rows


def _search(spec: RequestSpec) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if spec.prospect_limit is not None:
        extra["limit"] = spec.prospect_limit
    if spec.search_context:
        extra["searchContext"] = json.loads(spec.search_context)
    if spec.prospect_minimal is not None:
        extra["minimal"] = spec.prospect_minimal
    return extra


PROSPECTOR = Agent(
    kind="prospector",
    path="/api/v2/agents/prospector/run",
    request_model=ProspectorRequest,
    response_model=ProspectorResponse,
    build_body=flat_body_builder(("companyDomain",), ProspectorRequest, extra=_search),
    failure=prospector_failure,
    subject="company",
    api_type="PROSPECTOR",
    sends_request_id=False,
    export_rows=prospector_rows,
)
"""The Prospector Agent."""
