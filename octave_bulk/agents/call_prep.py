"""The Call Prep Agent: discovery questions, a call script and briefs for one person.

``POST /api/v2/agents/call-prep/run`` (docs/octave-api.md, section "Other agents"). The
answer's field names come from a third-party description; they are read under ``data``.
"""

from __future__ import annotations

from typing import Any

from octave_bulk.agents.base import Agent
from octave_bulk.agents.common import (
    PERSON_FIELDS,
    AgentResponse,
    PersonRequest,
    flat_body_builder,
    needs,
)

__all__ = ["CALL_PREP", "CallPrepRequest", "CallPrepResponse", "call_prep_rows"]


class CallPrepRequest(PersonRequest):
    """Body of ``POST /api/v2/agents/call-prep/run``."""


class CallPrepResponse(AgentResponse):
    """Its answer: ``data.discoveryQuestions``, ``callScript``, ``personBrief``, ..."""


def call_prep_rows(payload: dict[str, Any]) -> list[dict[str, str]]:
    """One row: the briefs, the questions (one per line) and the script."""
    data = payload.get("data") or {}
    questions = [
        str(q.get("question") if isinstance(q, dict) else q)
        for q in data.get("discoveryQuestions") or []
    ]
    return [
        {
            "person_brief": str(data.get("personBrief") or ""),
            "company_brief": str(data.get("companyBrief") or ""),
            "discovery_questions": "\n".join(questions),
            "call_script": str(data.get("callScript") or ""),
        }
    ]


CALL_PREP = Agent(
    kind="call-prep",
    path="/api/v2/agents/call-prep/run",
    request_model=CallPrepRequest,
    response_model=CallPrepResponse,
    build_body=flat_body_builder(PERSON_FIELDS, CallPrepRequest),
    failure=needs("data.discoveryQuestions", "data.callScript"),
    api_type="CALL_PREP",
    sends_request_id=False,
    export_rows=call_prep_rows,
)
"""The Call Prep Agent."""
