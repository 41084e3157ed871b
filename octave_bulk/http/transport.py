"""The default HTTP transport: ``httpx_aiohttp.AiohttpTransport`` with a cheaper request path.

Same interface, same requests on the wire, same exceptions (the transport's own
``map_aiohttp_exceptions``); what changes is the per-call work around aiohttp
(docs/performance.md, section "Per-contact CPU"):

* the body is read inside aiohttp (``ClientResponse.read``, one await) and handed to httpx as
  a ``ByteStream``, already read (decoded by httpx when it has a content-encoding), instead of
  an async stream that httpx pulls chunk by chunk through two generators and a context
  manager per chunk;
* what is the same for every call of a run is built once: the ``ClientTimeout`` per timeout
  setting, the aiohttp URL per request URL, the proxy arguments.

Imported only when the aiohttp transport is made (aiohttp takes ~0.1 s to import).
"""

from __future__ import annotations

from typing import Any

import httpx
from aiohttp import BasicAuth, ClientResponse, ClientSession, ClientTimeout, hdrs
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions
from yarl import URL

__all__ = ["ReadingAiohttpTransport", "TooLarge"]

_HTTP11 = b"HTTP/1.1"
_MAX_URLS = 64  # parsed URLs kept (a run uses two)


class TooLarge(Exception):
    """An answer body over the cap (raised by a transport that reads with the cap)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"answer body of {size} bytes or more")
        self.size = size


class ReadingAiohttpTransport(AiohttpTransport):
    """An ``AiohttpTransport`` whose responses come back fully read (see the module
    docstring). Takes the same arguments.

    Bounds each call itself (``enforces_call_bounds``): the request's ``timeout`` extension's
    ``total`` is aiohttp's whole-call timeout (connect, send and the entire body: a server
    dribbling a byte under the read timeout is cut there), and its ``max_body`` extension caps
    the body read (:class:`~octave_bulk.http.client.TooLarge` beyond it, before it is held)."""

    enforces_call_bounds = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._timeouts: dict[tuple[Any, Any, Any, Any], ClientTimeout] = {}
        self._urls: dict[str, URL] = {}
        proxy = self.proxy
        self._proxy_args: dict[str, Any] = {
            "proxy": str(proxy.url) if proxy else None,
            "proxy_auth": BasicAuth(proxy.auth[0], proxy.auth[1]) if proxy and proxy.auth else None,
            "proxy_headers": proxy.headers if proxy else None,
        }

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        client = self.client
        if not isinstance(client, ClientSession):
            client = self.client = self.get_client()
        extensions = request.extensions
        timeout = extensions.get("timeout", {})
        key = (
            timeout.get("connect"),
            timeout.get("read"),
            timeout.get("pool"),
            timeout.get("total"),
        )
        client_timeout = self._timeouts.get(key)
        if client_timeout is None:
            client_timeout = ClientTimeout(
                sock_connect=key[0], sock_read=key[1], connect=key[2], total=key[3]
            )
            self._timeouts[key] = client_timeout
        raw_url = str(request.url) if request.url else "https://127.0.0.1:8000/"
        url = self._urls.get(raw_url)
        if url is None:
            if len(self._urls) >= _MAX_URLS:
                self._urls.clear()
            url = self._urls[raw_url] = URL(raw_url)

        try:
            data: bytes | httpx.AsyncByteStream | None
            try:
                data = request.content
                if data == b"":
                    data = None
            except httpx.RequestNotRead:
                data = request.stream  # type: ignore[assignment]
                request.headers.pop("transfer-encoding", None)  # handled by aiohttp
            async with client.request(
                method=request.method,
                url=url,
                headers=request.headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=client_timeout,
                server_hostname=extensions.get("sni_hostname"),
                **self._proxy_args,
            ) as response:
                cap = extensions.get("max_body")
                if cap is None or (response.content_length or cap + 1) <= cap:
                    body = await response.read()  # the usual answer: a length within the cap
                else:
                    body = await _read_capped(response, cap)
                status, reason, raw_headers = response.status, response.reason, response.raw_headers
                encoded = hdrs.CONTENT_ENCODING in response.headers
        except TooLarge:
            raise
        except Exception as exc:
            # The transport's own mapping (aiohttp errors to httpx ones, the cause kept), entered
            # only on a failure: a context manager around every call costs ~1 us.
            with map_aiohttp_exceptions():
                raise exc

        response_extensions = {"http_version": _HTTP11}
        if reason:
            response_extensions["reason_phrase"] = reason.encode()
        result = httpx.Response(
            status_code=status,
            headers=raw_headers,
            stream=httpx.ByteStream(body),
            request=request,
            extensions=response_extensions,
        )
        if encoded:
            result.read()  # decodes the content-encoding, as httpx would while streaming
        else:
            # Identity: the content is the body. httpx's read() would get there through three
            # context managers and two generators (~6 us a call); should httpx ever keep the
            # content elsewhere, aread() still reads it from the stream.
            result._content = body
        return result


async def _read_capped(response: ClientResponse, cap: int) -> bytes:
    """The body, read chunk by chunk; :class:`TooLarge` as soon as it passes ``cap`` bytes (a
    declared length over the cap is refused before reading)."""
    if response.content_length is not None and response.content_length > cap:
        raise TooLarge(response.content_length)
    chunks, size = [], 0
    while chunk := await response.content.readany():
        size += len(chunk)
        if size > cap:
            raise TooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)
