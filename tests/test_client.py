"""One call's classification, through httpx's ASGI transport into the simulator app."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from octave_bulk.client import OctaveClient, make_http_client
from octave_bulk.errors import FatalApiError, RetryableApiError, TerminalApiError
from octave_bulk.simulator import Simulator, SimulatorConfig
from tests.conftest import TEST_KEY

BODY = orjson.dumps({"agentOId": "ca_1", "email": "a@b.co", "requestId": "r1"})


def client_for(**config: Any) -> tuple[OctaveClient, httpx.AsyncClient]:
    app = Simulator(SimulatorConfig(**config))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")
    return OctaveClient(http, SecretStr(TEST_KEY)), http


async def test_success_keeps_the_raw_body() -> None:
    client, http = client_for()
    async with http:
        result = await client.run_sequence(BODY, "r1")
    assert result.response.found and result.response.emails
    assert orjson.loads(result.raw)["_metadata"]["usage"] == 1.0


@pytest.mark.parametrize(
    ("kind", "error", "code"),
    [
        ("500", RetryableApiError, "http_500"),
        ("502", RetryableApiError, "http_502"),
        ("503", RetryableApiError, "http_503"),
        ("504", RetryableApiError, "http_504"),
        ("429", RetryableApiError, "rate_limited"),
        ("invalid_json", RetryableApiError, "invalid_json"),
        ("truncate", RetryableApiError, "invalid_json"),
        ("reset", RetryableApiError, "connection_reset"),
        ("not_found", TerminalApiError, "not_found"),
        ("400", TerminalApiError, "http_400"),
        ("401", FatalApiError, "unauthorized"),
        ("402", FatalApiError, "payment_required"),
        ("403", FatalApiError, "forbidden"),
    ],
)
async def test_classification(kind: str, error: type[Exception], code: str) -> None:
    client, http = client_for(forced={"r1": kind})
    async with http:
        with pytest.raises(error) as caught:
            await client.run_sequence(BODY, "r1")
    assert type(caught.value) is error
    assert caught.value.kind == code  # type: ignore[attr-defined]
    assert TEST_KEY not in str(caught.value)


async def test_503_and_429_carry_retry_after() -> None:
    client, http = client_for(forced={"r1": "503"})
    async with http:
        with pytest.raises(RetryableApiError) as caught:
            await client.run_sequence(BODY, "r1")
    assert caught.value.retry_after == 1.0


async def test_headers_sent() -> None:
    seen: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        return httpx.Response(200, json={"_metadata": {}, "found": True, "data": {"emails": [{}]}})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://x")
    async with http:
        await OctaveClient(http, SecretStr("k1")).run_sequence(BODY, "r1")
    assert seen["api_key"] == "k1"
    assert seen["x-request-source"] == "octave-bulk"
    assert seen["x-external-request-id"] == "r1"


async def test_empty_emails_is_not_found() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"_metadata": {}, "found": True, "data": {"emails": []}})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://x")
    async with http:
        with pytest.raises(TerminalApiError, match="no emails"):
            await OctaveClient(http, SecretStr("k")).run_sequence(BODY, "r1")


async def test_transport_errors_over_a_real_socket(make_sim: Any) -> None:
    sim = make_sim(faults={"reset": 1.0})
    for transport in ("aiohttp", "httpx"):
        http = make_http_client(
            base_url=sim.url, concurrency=2, timeout=2, connect_timeout=2, transport=transport
        )
        async with http:
            with pytest.raises(RetryableApiError) as caught:
                await OctaveClient(http, SecretStr("k")).run_sequence(BODY, "r1")
        assert caught.value.kind in {"connection_reset", "disconnected", "transport"}


async def test_read_timeout_is_a_timeout(make_sim: Any) -> None:
    sim = make_sim(faults={"hang": 1.0})
    http = make_http_client(base_url=sim.url, concurrency=2, timeout=0.3, connect_timeout=2)
    async with http:
        with pytest.raises(RetryableApiError) as caught:
            await OctaveClient(http, SecretStr("k")).run_sequence(BODY, "r1")
    assert caught.value.kind == "timeout"


async def test_validate_key(make_sim: Any) -> None:
    sim = make_sim(api_key="good")
    http = make_http_client(base_url=sim.url, concurrency=1, timeout=2, connect_timeout=2)
    async with http:
        data = await OctaveClient(http, SecretStr("good")).validate_key()
        with pytest.raises(FatalApiError):
            await OctaveClient(http, SecretStr("bad")).validate_key()
    assert data["data"]["credits"]["totalMax"] == 100_000.0  # type: ignore[index]
