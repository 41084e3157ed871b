"""Octave's agents: each one's endpoint, request and response models, and success rule.

``base`` defines :class:`~octave_bulk.agents.base.Agent`; ``envelope`` what every agent's
answer shares; one module per agent. :func:`get_agent` is the registry (imported lazily, so
that the input stage can use ``envelope`` without loading every agent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from octave_bulk.agents.base import Agent

__all__ = ["AGENT_KINDS", "get_agent"]

AGENT_KINDS = ("sequence",)
"""Every agent kind ``--agent-type`` accepts."""


def get_agent(kind: str = "sequence") -> Agent:
    """The agent of this kind.

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "sequence":
        from octave_bulk.agents.sequence import SEQUENCE

        return SEQUENCE
    raise ValueError(f"unknown agent type {kind!r}: use one of {', '.join(AGENT_KINDS)}")
