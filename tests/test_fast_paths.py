"""The per-contact shortcuts keep the slow path's results: the request check that skips the
model, and the transport that reads bodies inside aiohttp (docs/performance.md, section
"Per-contact CPU")."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from octave_bulk.agents.sequence import SequenceRequest, _plainly_valid
from octave_bulk.errors import RetryableApiError
from octave_bulk.http.client import OctaveClient, make_transport

_KEYS = [
    "email", "firstName", "lang", "requestId", "outputFormat", "runtimeContext",
    "runtimeInstructions", "playbookSelectionContext", "includeFullAnnotation", "agentOId",
    "experimentOId", "customContext", "unknown", "first_name",
]  # fmt: skip
_VALUES = st.one_of(
    st.text(max_size=3),
    st.sampled_from(["text", "html", "markdown", "TEXT"]),
    st.none(),
    st.booleans(),
    st.integers(),
    st.dictionaries(st.sampled_from(["all", "1", "7", "8", "x"]), st.one_of(st.text(), st.none())),
)


@settings(max_examples=2000, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=8))
def test_a_plainly_valid_body_is_one_the_model_accepts(body: dict[str, Any]) -> None:
    if _plainly_valid(body):
        SequenceRequest.model_validate(body)  # must not raise


def test_typical_bodies_take_the_shortcut_and_bad_ones_do_not() -> None:
    good = {"email": "a@b.co", "outputFormat": "text", "agentOId": "ca_1"}
    assert _plainly_valid(good)
    assert _plainly_valid({**good, "runtimeContext": {"all": "x", "2": "y"}})
    for bad in (
        {**good, "experimentOId": "ae_1"},
        {**good, "email": 5},
        {**good, "runtimeContext": {"9": "x"}},
        {**good, "outputFormat": "pdf"},
        {**good, "surprise": "x"},
    ):
        assert not _plainly_valid(bad)
        with pytest.raises(ValidationError):
            SequenceRequest.model_validate(bad)


_OK = orjson.dumps(
    {"_metadata": {"usage": 2}, "found": True, "data": {"emails": [{"subject": "Hi"}]}}
)


async def _serve(answer: bytes, seen: list[bytes]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        seen.append(head + await reader.readexactly(length))
        writer.write(answer)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _response(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(
        body
    )
    return head + b"".join(extra) + b"\r\n" + body


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (_response(_OK), "ok"),
        (_response(gzip.compress(_OK), b"content-encoding: gzip\r\n"), "ok"),
        (_response(_OK)[:-10], "truncated_body"),
    ],
)
async def test_the_default_transport_sends_and_reads_as_httpx_would(
    answer: bytes, outcome: str
) -> None:
    seen: list[bytes] = []
    server = await _serve(answer, seen)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server, make_transport(concurrency=2, base_url=url) as transport:
        client = OctaveClient(transport, base_url=url, api_key=SecretStr("k1"), timeout=2)
        try:
            result = await client.run(b'{"requestId":"r 1"}', "r 1")
        except RetryableApiError as exc:
            assert exc.kind == outcome
        else:
            assert outcome == "ok" and result.raw == _OK and result.credits == 2.0
    assert seen[0] == (
        b"POST /api/v2/agents/sequence/run HTTP/1.1\r\nhost: %s\r\napi_key: k1\r\n"
        b"content-type: application/json\r\naccept: application/json\r\n"
        b"x-request-source: octave-bulk\r\nuser-agent: octave-bulk\r\n"
        b"x-external-request-id: r 1\r\ncontent-length: 19\r\n"
        b"Accept-Encoding: gzip, deflate\r\n\r\n"
        b'{"requestId":"r 1"}' % url.removeprefix("http://").encode()
    )
