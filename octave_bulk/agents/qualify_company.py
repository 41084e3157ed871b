"""The Qualify Company Agent: a company scored against the product and segments.

``POST /api/v2/agents/qualify-company/run`` (docs/octave-api.md, section "Other agents");
its answer has the Qualify Person Agent's shape (score, rationale, per-entity blocks).
"""

from __future__ import annotations

from octave_bulk.agents.base import Agent
from octave_bulk.agents.common import (
    COMPANY_FIELDS,
    AgentResponse,
    CompanyRequest,
    flat_body_builder,
)
from octave_bulk.agents.qualify_person import has_score, qualify_rows

__all__ = ["QUALIFY_COMPANY", "QualifyCompanyRequest", "QualifyCompanyResponse"]


class QualifyCompanyRequest(CompanyRequest):
    """Body of ``POST /api/v2/agents/qualify-company/run``."""


class QualifyCompanyResponse(AgentResponse):
    """Its answer: ``data.score``, ``data.rationale`` and per-entity qualifications."""


QUALIFY_COMPANY = Agent(
    kind="qualify-company",
    path="/api/v2/agents/qualify-company/run",
    request_model=QualifyCompanyRequest,
    response_model=QualifyCompanyResponse,
    build_body=flat_body_builder(COMPANY_FIELDS, QualifyCompanyRequest),
    failure=has_score,
    subject="company",
    api_type="QUALIFY_COMPANY",
    sends_request_id=False,
    export_rows=qualify_rows,
)
"""The Qualify Company Agent."""
