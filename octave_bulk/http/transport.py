"""The default HTTP transport: ``httpx_aiohttp.AiohttpTransport`` with a cheaper request path.

Same interface, same requests on the wire, same exceptions (the transport's own
``map_aiohttp_exceptions``); what changes is the per-call work around aiohttp
(docs/performance.md, section "Per-contact CPU"):

* the body is read inside aiohttp (``ClientResponse.read``, one await) and handed to httpx as
  a ``ByteStream``, already read (decoded by httpx when it has a content-encoding), instead of
  an async stream that httpx pulls chunk by chunk through two generators and a context
  manager per chunk;
* what is the same for every call of a run is built once: the ``ClientTimeout`` per timeout
  setting, the aiohttp URL per request URL, the proxy arguments;
* a run's calls can skip httpx altogether (:meth:`ReadingAiohttpTransport.poster`): the same
  request on the wire, and the usual answer (200, no content-encoding) handed back as its
  body, without an ``httpx.Request`` or ``httpx.Response`` made for it.

Imported only when the aiohttp transport is made (aiohttp takes ~0.1 s to import).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from aiohttp import BasicAuth, ClientResponse, ClientSession, ClientTimeout, hdrs
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions
from multidict import CIMultiDict
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
    the body read (:class:`TooLarge` beyond it, before it is held)."""

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
        extensions = request.extensions
        try:
            data: bytes | httpx.AsyncByteStream | None = request.content
            if data == b"":
                data = None
        except httpx.RequestNotRead:
            data = request.stream  # type: ignore[assignment]
            request.headers.pop("transfer-encoding", None)  # handled by aiohttp
        raw_url = str(request.url) if request.url else "https://127.0.0.1:8000/"
        answer = await self._exchange(
            request.method,
            self._url(raw_url),
            request.headers,
            data,
            self._timeout(extensions.get("timeout", {})),
            extensions,
        )
        return _response(request, *answer)

    def poster(
        self, url: httpx.URL, head: list[tuple[str, str]], extensions: dict[str, Any]
    ) -> Callable[[bytes, str], Awaitable[bytes | httpx.Response]]:
        """A POST to one URL with fixed headers and extensions, made once for many calls
        (a run's calls): ``post(body, request_id_header)`` sends the same request on the wire
        as :meth:`handle_async_request` given ``httpx.Request("POST", url, content=body,
        headers=head + [x-external-request-id, content-length], extensions=extensions)``
        (``head`` is in httpx's form: lower-case names, in order, ``host`` first). Returns the
        body for the usual answer (200, no content-encoding): nothing of httpx is built for
        it (~130k instructions a call, a tenth of a contact's CPU: docs/performance.md,
        section "Second pass"); any other answer as the ``httpx.Response`` that method
        returns. Raises what it raises."""
        aio_url = self._url(str(url))
        timeout = self._timeout(extensions.get("timeout", {}))

        async def post(body: bytes, header_id: str) -> bytes | httpx.Response:
            headers = CIMultiDict(head)
            headers.add("x-external-request-id", header_id)
            headers.add("content-length", str(len(body)))
            status, reason, raw_headers, answer, encoded = await self._exchange(
                "POST", aio_url, headers, body or None, timeout, extensions
            )
            if status == 200 and not encoded:
                return answer
            request = httpx.Request("POST", url, headers=list(headers.items()), content=body)
            return _response(request, status, reason, raw_headers, answer, encoded)

        return post

    def _timeout(self, timeout: dict[str, Any]) -> ClientTimeout:
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
        return client_timeout

    def _url(self, raw_url: str) -> URL:
        url = self._urls.get(raw_url)
        if url is None:
            if len(self._urls) >= _MAX_URLS:
                self._urls.clear()
            url = self._urls[raw_url] = URL(raw_url)
        return url

    async def _exchange(
        self,
        method: str,
        url: URL,
        headers: Any,
        data: bytes | httpx.AsyncByteStream | None,
        client_timeout: ClientTimeout,
        extensions: dict[str, Any],
    ) -> tuple[int, str | None, Any, bytes, bool]:
        """One request through aiohttp: (status, reason, raw headers, body, whether the body
        has a content-encoding)."""
        client = self.client
        if not isinstance(client, ClientSession):
            client = self.client = self.get_client()
        try:
            async with client.request(
                method=method,
                url=url,
                headers=headers,
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
                encoded = hdrs.CONTENT_ENCODING in response.headers
                return response.status, response.reason, response.raw_headers, body, encoded
        except TooLarge:
            raise
        except Exception as exc:
            # The transport's own mapping (aiohttp errors to httpx ones, the cause kept), entered
            # only on a failure: a context manager around every call costs ~1 us.
            with map_aiohttp_exceptions():
                raise exc
        raise AssertionError("unreachable")  # pragma: no cover


def _response(
    request: httpx.Request,
    status: int,
    reason: str | None,
    raw_headers: Any,
    body: bytes,
    encoded: bool,
) -> httpx.Response:
    """The answer as httpx's transport would return it, fully read."""
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
