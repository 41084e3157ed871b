"""One call's classification, through httpx's ASGI transport into the simulator app."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from octave_bulk.agents.sequence import SequenceResponse
from octave_bulk.errors import FatalApiError, RetryableApiError, TerminalApiError
from octave_bulk.http.client import OctaveClient, make_transport
from octave_bulk.simulator import Simulator, SimulatorConfig
from tests.conftest import TEST_KEY

BODY = orjson.dumps({"agentOId": "ca_1", "email": "a@b.co", "requestId": "r1"})


def client_for(**config: Any) -> tuple[OctaveClient, httpx.AsyncBaseTransport]:
    transport = httpx.ASGITransport(app=Simulator(SimulatorConfig(**config)))
    return octave(transport, "http://sim", TEST_KEY), transport


def octave(
    transport: httpx.AsyncBaseTransport, url: str, key: str = "k", timeout: float = 2
) -> OctaveClient:
    return OctaveClient(transport, base_url=url, api_key=SecretStr(key), timeout=timeout)


async def test_success_keeps_the_raw_body() -> None:
    client, http = client_for()
    async with http:
        result = await client.run(BODY, "r1")
    parsed = SequenceResponse.model_validate_json(result.raw)
    assert parsed.found and parsed.emails
    assert orjson.loads(result.raw)["_metadata"]["usage"] == 1.0
    assert result.credits == 1.0


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
            await client.run(BODY, "r1")
    assert type(caught.value) is error
    assert caught.value.kind == code  # type: ignore[attr-defined]
    assert TEST_KEY not in str(caught.value)


async def test_503_and_429_carry_retry_after() -> None:
    client, http = client_for(forced={"r1": "503"})
    async with http:
        with pytest.raises(RetryableApiError) as caught:
            await client.run(BODY, "r1")
    assert caught.value.retry_after == 1.0


async def test_headers_sent() -> None:
    seen: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        return httpx.Response(
            200, json={"_metadata": {}, "found": True, "data": {"emails": [{"subject": "Hi"}]}}
        )

    async with httpx.MockTransport(handler) as transport:
        await octave(transport, "http://x", "k1").run(BODY, "r1")
    assert seen["api_key"] == "k1"
    assert seen["x-request-source"] == "octave-bulk"
    assert seen["x-external-request-id"] == "r1"


async def test_empty_emails_is_not_found() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"_metadata": {}, "found": True, "data": {"emails": []}})

    async with httpx.MockTransport(handler) as transport:
        with pytest.raises(TerminalApiError, match="no emails"):
            await octave(transport, "http://x").run(BODY, "r1")


async def test_transport_errors_over_a_real_socket(make_sim: Any) -> None:
    sim = make_sim(faults={"reset": 1.0})
    for name in ("aiohttp", "httpx"):
        async with make_transport(concurrency=2, transport=name) as transport:
            with pytest.raises(RetryableApiError) as caught:
                await octave(transport, sim.url).run(BODY, "r1")
        assert caught.value.kind in {"connection_reset", "disconnected", "transport"}


async def test_read_timeout_is_a_timeout(make_sim: Any) -> None:
    sim = make_sim(faults={"hang": 1.0})
    async with make_transport(concurrency=2) as transport:
        with pytest.raises(RetryableApiError) as caught:
            await octave(transport, sim.url, timeout=0.3).run(BODY, "r1")
    assert caught.value.kind == "timeout"


async def test_validate_key(make_sim: Any) -> None:
    sim = make_sim(api_key="good")
    async with make_transport(concurrency=1) as transport:
        data = await octave(transport, sim.url, "good").validate_key()
        with pytest.raises(FatalApiError):
            await octave(transport, sim.url, "bad").validate_key()
    assert data["data"]["credits"]["totalMax"] == 100_000.0  # type: ignore[index]


async def test_any_other_transport_failure_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise ValueError("Bad status line 'HTTP/1.1 2OO OK'")  # e.g. a broken proxy

    async with httpx.MockTransport(handler) as transport:
        with pytest.raises(RetryableApiError) as caught:
            await octave(transport, "http://x").run(BODY, "r1")
    assert caught.value.kind == "protocol" and "Bad status line" in caught.value.message


async def test_json_that_orjson_refuses_is_kept_not_paid_again() -> None:
    body = b'\xef\xbb\xbf{"_metadata": {"usage": 1}, "found": true, "data": {"emails": [{"subject": "Hi \\ud83d"}]}}'

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    async with httpx.MockTransport(handler) as transport:
        result = await octave(transport, "http://x").run(BODY, "r1")
    stored = orjson.loads(result.raw)  # what goes into OUT.ndjson parses everywhere
    assert stored["data"]["emails"][0]["subject"] == "Hi \ufffd" and result.credits == 1.0


async def test_a_redirect_or_404_is_a_fatal_endpoint_error() -> None:
    for status in (302, 404, 405):

        def handler(request: httpx.Request, status: int = status) -> httpx.Response:
            return httpx.Response(status, headers={"location": "https://login"})

        async with httpx.MockTransport(handler) as transport:
            with pytest.raises(FatalApiError) as caught:
                await octave(transport, "http://x").run(BODY, "r1")
        assert caught.value.kind == "bad_endpoint"
