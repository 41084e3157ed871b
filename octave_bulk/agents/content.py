"""The Content Agent: free-form content (a LinkedIn message, a brief, ...) for one person.

``POST /api/v2/agents/generate-content/run`` (docs/octave-api.md, section "Other agents").
Accepts ``experimentOId`` as the Sequence Agent does.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from octave_bulk.agents.base import Agent, RequestSpec
from octave_bulk.agents.common import (
    PERSON_FIELDS,
    AgentResponse,
    PersonRequest,
    flat_body_builder,
    needs,
)

__all__ = ["CONTENT", "ContentRequest", "ContentResponse", "content_rows"]


class ContentRequest(PersonRequest):
    """Body of ``POST /api/v2/agents/generate-content/run``."""

    experiment_o_id: str | None = Field(default=None, alias="experimentOId")
    url: str | None = None


class ContentResponse(AgentResponse):
    """Its answer: ``data.content`` (text), ``data.jsonContent`` (object), entities."""


def content_rows(payload: dict[str, Any]) -> list[dict[str, str]]:
    """One row: the content text and its JSON form."""
    data = payload.get("data") or {}
    structured = data.get("jsonContent")
    return [
        {
            "content": str(data.get("content") or ""),
            "json_content": ""
            if structured is None
            else json.dumps(structured, ensure_ascii=False),
        }
    ]


def _url(spec: RequestSpec) -> dict[str, Any]:
    return {"url": spec.url} if spec.url else {}


CONTENT = Agent(
    kind="content",
    path="/api/v2/agents/generate-content/run",
    request_model=ContentRequest,
    response_model=ContentResponse,
    build_body=flat_body_builder(PERSON_FIELDS, ContentRequest, experiments=True, extra=_url),
    failure=needs("data.content", "data.jsonContent"),
    api_type="CONTENT",
    sends_request_id=False,
    export_rows=content_rows,
)
"""The Content Agent."""
