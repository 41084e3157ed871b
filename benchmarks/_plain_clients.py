"""Plain client loops for the overhead benchmark, run as their own process:

    python _plain_clients.py KIND URL BODIES.ndjson CONCURRENCY

KIND is httpx-post (httpx.AsyncClient.post over the aiohttp transport), httpx-transport
(httpx.Request straight into that transport, as the engine does) or aiohttp (a bare aiohttp
ClientSession). All run on uvloop, like the engine's CLI. Prints {"wall": s, "cpu": s}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import uvloop
from httpx_aiohttp import AiohttpTransport

RUN = "/api/v2/agents/sequence/run"
HEADERS = {
    "api_key": "bench",
    "content-type": "application/json",
    "accept": "application/json",
    "x-request-source": "octave-bulk",
}


async def pool(
    bodies: list[tuple[str, bytes]], c: int, send: Callable[[str, bytes], Awaitable[int]]
) -> None:
    items = iter(bodies)

    async def worker() -> None:
        for rid, body in items:
            status = await send(rid, body)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")

    await asyncio.gather(*(worker() for _ in range(c)))


async def httpx_post(url: str, bodies: list[tuple[str, bytes]], c: int) -> None:
    limits = httpx.Limits(max_connections=c + 8, max_keepalive_connections=c + 8)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, transport=AiohttpTransport(limits=limits)
    ) as client:

        async def send(rid: str, body: bytes) -> int:
            response = await client.post(
                RUN, content=body, headers={**HEADERS, "x-external-request-id": rid}
            )
            return response.status_code

        await pool(bodies, c, send)


async def httpx_transport(url: str, bodies: list[tuple[str, bytes]], c: int) -> None:
    limits = httpx.Limits(max_connections=c + 8, max_keepalive_connections=c + 8)
    full = httpx.URL(url + RUN)
    timeouts = {"timeout": {"connect": 10.0, "read": 180.0, "write": 30.0, "pool": 10.0}}
    async with AiohttpTransport(limits=limits) as transport:

        async def send(rid: str, body: bytes) -> int:
            request = httpx.Request(
                "POST",
                full,
                content=body,
                headers={**HEADERS, "x-external-request-id": rid},
                extensions=timeouts,
            )
            response = await transport.handle_async_request(request)
            await response.aread()
            await response.aclose()
            return response.status_code

        await pool(bodies, c, send)


async def bare_aiohttp(url: str, bodies: list[tuple[str, bytes]], c: int) -> None:
    connector = aiohttp.TCPConnector(limit=c + 8, limit_per_host=c + 8)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as session:

        async def send(rid: str, body: bytes) -> int:
            async with session.post(
                RUN, data=body, headers={**HEADERS, "x-external-request-id": rid}
            ) as response:
                await response.read()
                return response.status

        await pool(bodies, c, send)


KINDS = {"httpx-post": httpx_post, "httpx-transport": httpx_transport, "aiohttp": bare_aiohttp}


def main() -> None:
    kind, url, path, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    global RUN
    RUN = sys.argv[5] if len(sys.argv) > 5 else RUN  # another agent's endpoint
    bodies = []
    with open(path, "rb") as handle:
        for line in handle:
            record = json.loads(line)  # {"rid": the engine's requestId, "body": as sent}
            bodies.append((record["rid"], json.dumps(record["body"]).encode()))
    cpu, wall = time.process_time(), time.perf_counter()
    uvloop.run(KINDS[kind](url, bodies, concurrency))
    print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}))


if __name__ == "__main__":
    main()
