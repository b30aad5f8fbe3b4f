"""One pooled HTTP client for every call to the backend: JSON in, status and JSON out.

Owns the httpx client (its connections are reused across calls and connections) and the
cap on an answer's size; a call's time limit is its caller's cancel scope. Must not know
what a call means: the command proxy and the connect hook interpret the status and body.

httpx runs on Trio through its anyio/sniffio support; a call is cancelled like any Trio
operation, so a client that disconnects cancels its backend requests.
"""

from __future__ import annotations

from typing import Any

import attrs
import httpx

from ..protocol.jsontext import dumps, loads

# Concurrent connections to the backend; calls beyond it wait for a free one (within their
# time limit).
MAX_CONNECTIONS = 100
# Largest answer body read from the backend; a bigger one is a bad answer.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
_HEADERS = {"content-type": "application/json", "accept": "application/json"}


class BackendUnreachable(Exception):
    """No answer: the connection failed or broke. The message is ours, never httpx's."""


@attrs.frozen
class Answer:
    status: int
    #: The body parsed as JSON; None when it was empty, not JSON, or too large.
    body: Any


class Backend:
    """POSTs JSON to backend URLs; one instance per gateway, closed by `aclose`."""

    def __init__(self, user_agent: str) -> None:
        self._client = httpx.AsyncClient(
            timeout=None,
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS),
            headers={**_HEADERS, "user-agent": user_agent},
        )

    async def post(self, url: str, body: object) -> Answer:
        """POST `body` as JSON to `url` and read the whole answer.

        Raises:
            BackendUnreachable: the connection failed or broke.
        """
        content = dumps(body).encode("ascii")
        try:
            async with self._client.stream("POST", url, content=content) as response:
                data = await _read_capped(response)
        except httpx.TransportError as exc:
            raise BackendUnreachable(type(exc).__name__) from None
        return Answer(response.status_code, _parse(data))

    async def aclose(self) -> None:
        await self._client.aclose()


async def _read_capped(response: httpx.Response) -> bytes | None:
    chunks = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(data: bytes | None) -> Any:
    if not data:
        return None
    try:
        return loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
