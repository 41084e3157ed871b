"""Octave's agents: each one's endpoint, request and response models, and success rule.

``base`` defines :class:`~octave_bulk.agents.base.Agent`; ``envelope`` what every agent's
answer shares; one module per agent. :func:`get_agent` is the registry (imported lazily, so
that the input stage can use ``envelope`` without loading every agent).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from octave_bulk.agents.base import Agent

__all__ = ["AGENT_KINDS", "COMPANY_AGENTS", "AgentKind", "get_agent"]

AgentKind = Literal[
    "sequence",
    "enrich-person",
    "enrich-company",
    "qualify-person",
    "qualify-company",
    "content",
    "call-prep",
    "prospector",
]
"""An agent kind, as ``--agent-type`` (the ``agent_type`` setting) names it."""

AGENT_KINDS: tuple[str, ...] = get_args(AgentKind)
"""Every agent kind ``--agent-type`` accepts."""

COMPANY_AGENTS = frozenset({"enrich-company", "qualify-company", "prospector"})
"""The kinds whose input rows are companies (kept here so the reader needs no agent module)."""

_MODULES = {
    "sequence": ("sequence", "SEQUENCE"),
    "enrich-person": ("enrich_person", "ENRICH_PERSON"),
    "enrich-company": ("enrich_company", "ENRICH_COMPANY"),
    "qualify-person": ("qualify_person", "QUALIFY_PERSON"),
    "qualify-company": ("qualify_company", "QUALIFY_COMPANY"),
    "content": ("content", "CONTENT"),
    "call-prep": ("call_prep", "CALL_PREP"),
    "prospector": ("prospector", "PROSPECTOR"),
}


def get_agent(kind: str = "sequence") -> Agent:
    """The agent of this kind.

    Raises:
        ValueError: an unknown kind.
    """
    if kind not in _MODULES:
        raise ValueError(f"unknown agent type {kind!r}: use one of {', '.join(AGENT_KINDS)}")
    module, name = _MODULES[kind]
    agent: Agent = getattr(importlib.import_module(f"octave_bulk.agents.{module}"), name)
    return agent
