"""The Qualify Person Agent: a score, a rationale and the answers to the library's
qualifying questions.

``POST /api/v2/agents/qualify-person/run`` (docs/octave-api.md, section "Other agents").
A 200 without ``data.score`` is a failure (``not_found``): there is nothing to act on.
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
from octave_bulk.agents.envelope import ResponseModel

__all__ = [
    "ENTITIES",
    "QUALIFY_PERSON",
    "Qualification",
    "QualificationAnswer",
    "QualifyPersonRequest",
    "QualifyPersonResponse",
    "has_score",
    "qualify_rows",
]

ENTITIES = ("product", "persona", "segment", "playbook")
"""The blocks a qualify answer may hold, each with its own qualification."""


class QualifyPersonRequest(PersonRequest):
    """Body of ``POST /api/v2/agents/qualify-person/run``."""


class QualificationAnswer(ResponseModel):
    """One qualifying question's answer."""

    question: str | None = None
    answer: str | None = None
    rationale: str | None = None
    confidence: str | None = None


class Qualification(ResponseModel):
    """An entity's ``qualification``: its answers, score and rationale."""

    answers: list[QualificationAnswer] | None = None
    score: float | None = None
    rationale: str | None = None


class QualifyPersonResponse(AgentResponse):
    """Its answer: ``data.score``, ``data.rationale``, per-entity qualifications, person."""


def qualify_rows(payload: dict[str, Any]) -> list[dict[str, str]]:
    """One row: score, rationale, then one column per qualifying question's answer (named
    ``q:<entity>:<question>``) and each entity's own score."""
    data = payload.get("data") or {}
    row = {"score": _text(data.get("score")), "rationale": _text(data.get("rationale"))}
    for entity in ENTITIES:
        block = data.get(entity)
        if not isinstance(block, dict):
            continue
        row[f"{entity}_name"] = _text(block.get("name"))
        qualification = block.get("qualification")
        if not isinstance(qualification, dict):
            continue
        row[f"{entity}_score"] = _text(qualification.get("score"))
        for answer in qualification.get("answers") or []:
            if isinstance(answer, dict) and answer.get("question"):
                row[f"q:{entity}:{answer['question']}"] = _text(answer.get("answer"))
    return [row]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def has_score(payload: dict[str, Any]) -> str | None:
    """Success: ``found`` and a numeric ``data.score``."""
    why = needs("data.score")(payload)
    if why is not None:
        return why
    score = (payload.get("data") or {}).get("score")
    if isinstance(score, bool) or not isinstance(score, int | float):
        return f"nothing produced: data.score is not a number ({score!r})"
    return None


QUALIFY_PERSON = Agent(
    kind="qualify-person",
    path="/api/v2/agents/qualify-person/run",
    request_model=QualifyPersonRequest,
    response_model=QualifyPersonResponse,
    build_body=flat_body_builder(PERSON_FIELDS, QualifyPersonRequest),
    failure=has_score,
    api_type="QUALIFY_PERSON",
    sends_request_id=False,
    export_rows=qualify_rows,
)
"""The Qualify Person Agent."""
