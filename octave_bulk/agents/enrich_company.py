"""The Enrich Company Agent: firmographics, funding and the matched product.

``POST /api/v2/agents/enrich-company/run`` (docs/octave-api.md, section "Enrich Company").
"""

from __future__ import annotations

from typing import Any

from octave_bulk.agents.base import Agent
from octave_bulk.agents.common import (
    COMPANY_FIELDS,
    AgentResponse,
    CompanyRequest,
    flat_body_builder,
    needs,
)
from octave_bulk.agents.envelope import ResponseModel

__all__ = [
    "ENRICH_COMPANY",
    "CompanyLocation",
    "EnrichCompanyRequest",
    "EnrichCompanyResponse",
    "EnrichedCompany",
    "FundingRound",
    "company_columns",
    "enrich_company_rows",
]


class EnrichCompanyRequest(CompanyRequest):
    """Body of ``POST /api/v2/agents/enrich-company/run``."""


class CompanyLocation(ResponseModel):
    """``data.company.location``."""

    region: str | None = None
    locality: str | None = None
    postal_code: str | None = None
    country_code: str | None = None
    street_address: str | None = None


class FundingRound(ResponseModel):
    """One of ``data.company.crunchBaseFunding``."""

    funding_round_count: int | None = None
    round_date: str | None = None
    round_name: str | None = None
    investor_names: list[str] | None = None
    investor_count: int | None = None
    round_amount: float | None = None
    round_currency: str | None = None


class EnrichedCompany(ResponseModel):
    """``data.company``."""

    name: str | None = None
    description: str | None = None
    domain: str | None = None
    website: str | None = None
    founded: int | str | None = None
    location: CompanyLocation | None = None
    employee_count: int | None = None
    follower_count: int | None = None
    type: str | None = None
    slug: str | None = None
    logo_url: str | None = None
    country_code: str | None = None
    specialties: list[str] | None = None
    industry: str | None = None
    crunch_base_funding: list[FundingRound] | None = None


class EnrichCompanyResponse(AgentResponse):
    """Its answer: ``data.company`` plus the matched product and other entities."""


def company_columns(company: Any) -> dict[str, str]:
    """The firmographic columns of a ``company`` object (missing values left empty)."""
    if not isinstance(company, dict):
        company = {}
    location = company.get("location")
    if not isinstance(location, dict):
        location = {}
    rounds = [r for r in company.get("crunchBaseFunding") or [] if isinstance(r, dict)]
    amounts = [r["roundAmount"] for r in rounds if isinstance(r.get("roundAmount"), int | float)]
    last = max(rounds, key=lambda r: str(r.get("roundDate") or ""), default={})
    values = {
        "company_name": company.get("name"),
        "company_domain": company.get("domain"),
        "website": company.get("website"),
        "description": company.get("description"),
        "industry": company.get("industry"),
        "employee_count": company.get("employeeCount"),
        "follower_count": company.get("followerCount"),
        "founded": company.get("founded"),
        "type": company.get("type"),
        "country_code": company.get("countryCode") or location.get("countryCode"),
        "region": location.get("region"),
        "city": location.get("locality"),
        "specialties": "; ".join(str(s) for s in company.get("specialties") or []),
        "funding_rounds": len(rounds) or None,
        "funding_total": sum(amounts) if amounts else None,
        "last_round": last.get("roundName"),
        "last_round_date": last.get("roundDate"),
        "linkedin_slug": company.get("slug"),
    }
    return {key: "" if value is None else str(value) for key, value in values.items()}


def enrich_company_rows(payload: dict[str, Any]) -> list[dict[str, str]]:
    """One row of firmographics, plus the matched product's name and confidence."""
    data = payload.get("data") or {}
    product = data.get("product")
    if not isinstance(product, dict):
        product = {}
    row = company_columns(data.get("company"))
    row["matched_product"] = str(product.get("name") or "")
    row["match_confidence"] = str(product.get("matchConfidence") or "")
    return [row]


ENRICH_COMPANY = Agent(
    kind="enrich-company",
    path="/api/v2/agents/enrich-company/run",
    request_model=EnrichCompanyRequest,
    response_model=EnrichCompanyResponse,
    build_body=flat_body_builder(COMPANY_FIELDS, EnrichCompanyRequest),
    failure=needs("data.company"),
    subject="company",
    api_type="ENRICH_COMPANY",
    sends_request_id=False,
    export_rows=enrich_company_rows,
)
"""The Enrich Company Agent."""
