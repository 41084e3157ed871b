"""The simulator's workspace routes: the key check with the workspace's credits, and the
agents it holds.

- ``GET /api/v2/api-key/validate``: 401 for a refused key, else the workspace and a credits
  object (``config.credits_max`` less the credits the agent calls have used).
- ``GET /api/v2/agents/list?type=`` and ``GET /api/v2/agents/get?oId=`` over
  ``config.agents`` (oId -> agent type); with no workspace modelled, ``get`` finds any
  ``ca_`` id.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from octave_bulk.simulator.wire import AgentServer, Scope, Send, envelope, send_json

__all__ = ["AGENTS_GET_PATH", "AGENTS_LIST_PATH", "VALIDATE_PATH", "agents", "validate_key"]

VALIDATE_PATH = "/api/v2/api-key/validate"
AGENTS_LIST_PATH = "/api/v2/agents/list"
AGENTS_GET_PATH = "/api/v2/agents/get"


async def validate_key(server: AgentServer, scope: Scope, send: Send) -> None:
    """``GET /api/v2/api-key/validate``."""
    if server.key_error(scope):
        await send_json(send, 401, envelope("Unauthorized", "Invalid API key"))
        return
    cfg = server.config
    remaining = max(0.0, cfg.credits_max - server.credits_used)
    credits = {
        "totalUsed": server.credits_used,
        "totalRemaining": remaining,
        "totalMax": cfg.credits_max,
        "quotaUsed": server.credits_used,
        "quotaAvailable": remaining,
        "quotaMax": cfg.credits_max,
        "period": "month",
        "creditsUsed": 0,
        "creditsAvailable": 0,
    }
    data = {
        "valid": True,
        "workspaceOId": "wa_simulator",
        "workspaceName": "Octave simulator",
        "organizationOId": "og_simulator",
        "credits": credits,
    }
    await send_json(send, 200, {**envelope("API key is valid", None), "data": data})


async def agents(server: AgentServer, scope: Scope, send: Send, *, listing: bool) -> None:
    """``GET /api/v2/agents/list?type=`` and ``/get?oId=`` over ``config.agents``."""
    if server.key_error(scope):
        await send_json(send, 401, envelope("Unauthorized", "Invalid API key"))
        return
    query = parse_qs(scope.get("query_string", b"").decode())
    records = [
        {
            "oId": o_id,
            "name": f"Simulated {kind.lower()} agent",
            "type": kind,
            "costToRun": server.config.usage_per_run,
            "itemType": "AGENT",
        }  # fmt: skip
        for o_id, kind in server.config.agents.items()
    ]
    if listing:
        wanted = query.get("type", [None])[0]
        found = [r for r in records if wanted is None or r["type"] == wanted]
        body = {"hasNext": False, "total": len(found), "data": found}
        await send_json(send, 200, {**envelope("Agents", None), **body})
        return
    o_id = query.get("oId", [""])[0]
    match = [r for r in records if r["oId"] == o_id]
    if not server.config.agents and o_id.startswith("ca_"):  # no workspace modelled: any
        match = [{"oId": o_id, "name": "Simulated agent", "type": None}]
    if not match:
        await send_json(send, 404, envelope("Not found", f"Agent {o_id!r} not found"))
        return
    await send_json(send, 200, {**envelope("Agent", None), "data": match[0]})
