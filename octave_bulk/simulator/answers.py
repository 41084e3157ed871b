"""What an agent call is answered with: its fate drawn from the fault mix, its latency, a
success's body, the error bodies.

Everything here is a function of its arguments: the simulator draws the uniforms from
(seed, requestId, attempt) (:func:`~octave_bulk.simulator.wire.uniforms`), so a request's
fate, latency and content never depend on timing or concurrency.
"""

from __future__ import annotations

import hashlib
import math
import random
from statistics import NormalDist

import orjson
from pydantic import BaseModel, ValidationError

from octave_bulk.agents.base import Agent
from octave_bulk.agents.sequence import SequenceRequest
from octave_bulk.simulator.agents import agent_data
from octave_bulk.simulator.config import FAULT_KINDS, SimulatorConfig
from octave_bulk.simulator.content import generate_data
from octave_bulk.simulator.wire import now_iso

__all__ = [
    "ERROR_TEXT",
    "HTML_502",
    "IMMEDIATE_FATES",
    "describe",
    "latency_seconds",
    "pick_fate",
    "success_body",
]

IMMEDIATE_FATES = frozenset({"429", "400", "401", "402", "403"})
"""Fates answered at once, without a latency draw."""
ERROR_TEXT = {
    "400": ("Bad request", "Invalid request body"),
    "401": ("Unauthorized", "Invalid API key"),
    "402": ("Payment required", "Not enough credits to run this agent"),
    "403": ("Forbidden", "API key validation failed"),
    "429": ("Too many requests", "Rate limit exceeded, slow down"),
    "500": ("Internal server error", "Agent run failed unexpectedly"),
    "503": ("Service unavailable", "Agent capacity exhausted, retry later"),
    "504": ("Gateway timeout", "Agent run timed out upstream"),
}
"""An error fate -> the (title, detail) of its envelope."""
HTML_502 = (
    b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
)
_NORMAL = NormalDist()


def pick_fate(faults: dict[str, float], u: float) -> str:
    """The fault kind a uniform draw ``u`` lands on (``"ok"`` past all of them)."""
    edge = 0.0
    for kind in FAULT_KINDS:
        edge += faults.get(kind, 0.0)
        if u < edge:
            return kind
    return "ok"


def latency_seconds(config: SimulatorConfig, kind: str, u: float) -> float:
    """A fate's latency in simulated seconds (log-normal; 0 for the immediate fates)."""
    if kind in IMMEDIATE_FATES or config.latency.median <= 0:
        return 0.0
    z = _NORMAL.inv_cdf(min(max(u, 1e-9), 1 - 1e-9))
    return config.latency.median * math.exp(config.latency.sigma * z)


def success_body(config: SimulatorConfig, request: BaseModel, agent: Agent, rid: str) -> bytes:
    """A success's whole body for this request (deterministic per requestId)."""
    handle = "sim_" + hashlib.blake2b(rid.encode(), digest_size=8).hexdigest()
    if not isinstance(request, SequenceRequest):
        wire = request.model_dump(by_alias=True, exclude_none=True)
        data = agent_data(agent.kind, wire, config.seed)
        metadata = {"requestId": handle, "timestamp": now_iso(), "usage": config.usage_per_run}
        return orjson.dumps({"_metadata": metadata, "found": True, "data": data})
    content_seed = hashlib.blake2b(f"{config.seed}:{rid}:content".encode(), digest_size=8)
    rng = random.Random(int.from_bytes(content_seed.digest(), "big"))
    n_emails = rng.randint(config.emails_min, config.emails_max)
    payload = {
        "_metadata": {
            "requestId": handle,
            "timestamp": now_iso(),
            "usage": config.usage_per_run,
            "message": "Sequence generated",
        },
        "found": True,
        "message": f"Generated {n_emails} emails",
        "data": generate_data(request, rng, n_emails),
    }
    return orjson.dumps(payload)


def describe(exc: ValidationError) -> str:
    """A 400's detail: each invalid field and why."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
