"""How fast the simulator answers at `instant` latency, against plain client loops.

The simulator must never be the bottleneck of a benchmark. It runs in its own process pinned to
CPU 0; each client loop runs here, pinned to CPU 1, sending N distinct requests at concurrency C.
The simulator's capacity is the requests it serves per CPU-second of its own process, measured
during the fastest client's run; the ratio is that capacity over what a plain httpx loop sends.

    python benchmarks/bench_simulator.py            # 20,000 requests per client, C = 64
    python benchmarks/bench_simulator.py --smoke    # a few hundred, for CI
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import orjson
from _common import RUN_PATH, Simulator, StealMeter, report, simulator
from httpx_aiohttp import AiohttpTransport

HEADERS = {"api_key": "bench", "content-type": "application/json"}


def body(i: int) -> bytes:
    return orjson.dumps(
        {
            "agentOId": "ca_bench",
            "email": f"person{i}@example.com",
            "firstName": "Alex",
            "lastName": "Chen",
            "companyName": "Datadog",
            "jobTitle": "VP Engineering",
            "requestId": f"bench-{i}",
            "outputFormat": "text",
        }
    )


async def run_pool(n: int, c: int, send: Callable[[int], Awaitable[int]]) -> None:
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            status = await send(i)
            if status != 200:
                raise RuntimeError(f"status {status}")

    await asyncio.gather(*(worker() for _ in range(c)))


async def httpx_loop(url: str, n: int, c: int, aiohttp_transport: bool) -> None:
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    transport = AiohttpTransport(limits=limits) if aiohttp_transport else None
    async with httpx.AsyncClient(base_url=url, limits=limits, transport=transport) as client:

        async def send(i: int) -> int:
            response = await client.post(RUN_PATH, content=body(i), headers=HEADERS)
            return response.status_code

        await run_pool(n, c, send)


async def aiohttp_loop(url: str, n: int, c: int) -> None:
    connector = aiohttp.TCPConnector(limit=c, limit_per_host=c)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as session:

        async def send(i: int) -> int:
            async with session.post(RUN_PATH, data=body(i), headers=HEADERS) as response:
                await response.read()
                return response.status

        await run_pool(n, c, send)


CLIENTS: dict[str, Callable[[str, int, int], Awaitable[None]]] = {
    "httpx (default transport)": lambda u, n, c: httpx_loop(u, n, c, aiohttp_transport=False),
    "httpx + aiohttp transport": lambda u, n, c: httpx_loop(u, n, c, aiohttp_transport=True),
    "aiohttp": aiohttp_loop,
}


def measure(sim: Simulator, name: str, n: int, c: int) -> dict[str, object]:
    run = CLIENTS[name]
    asyncio.run(run(sim.url, min(n, 500), c))  # warm-up: fill the pool, import everything
    sim.reset()
    server_cpu, client_cpu = sim.cpu_seconds(), time.process_time()
    with StealMeter() as steal:
        start = time.perf_counter()
        asyncio.run(run(sim.url, n, c))
        wall = time.perf_counter() - start
    server_cpu = sim.cpu_seconds() - server_cpu
    served = sim.stats()["totals"]["successes"]
    assert served == n, f"simulator served {served} of {n}"
    return {
        "client": name,
        "requests": n,
        "req_per_s": n / wall,
        "client_cpu_s_per_1k": (time.process_time() - client_cpu) / n * 1000,
        "server_cpu_util": server_cpu / wall,
        "server_capacity_req_per_cpu_s": n / server_cpu,
        "steal": steal.fraction,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="a short run for CI")
    args = parser.parse_args()
    n = 300 if args.smoke else args.requests
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    with simulator("--latency", "instant", cpu=0) as sim:
        rows = [measure(sim, name, n, args.concurrency) for name in CLIENTS]
    capacity = max(float(r["server_capacity_req_per_cpu_s"]) for r in rows)  # type: ignore[arg-type]
    httpx_rate = float(rows[0]["req_per_s"])  # type: ignore[arg-type]
    summary = {
        "simulator_capacity_req_per_s": capacity,
        "plain_httpx_loop_req_per_s": httpx_rate,
        "ratio_capacity_to_httpx_loop": capacity / httpx_rate,
    }
    report("simulator", rows, summary, smoke=args.smoke)
    print(
        f"\nsimulator capacity ≈ {capacity:,.0f} req/s per server core; plain httpx loop "
        f"{httpx_rate:,.0f} req/s; ratio {capacity / httpx_rate:.1f}x (target: > 1)"
    )


if __name__ == "__main__":
    main()
