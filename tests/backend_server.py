"""A real HTTP backend for the gateway's command proxy and connect hook: trio + h11 on
127.0.0.1, port 0, in the test's own trio run (so the autojump clock covers it).

The test gives it an async `answer(path, body) -> (status, body)`; a `bytes` body is sent
as it is, anything else as JSON. Every request is recorded, and a request whose client went
away while `answer` was running is recorded as cancelled: that is how a test sees that the
gateway cancelled a backend call.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import h11
import trio

Answer = Callable[[str, Any], Awaitable[tuple[int, Any]]]


@attrs.define
class Backend:
    answer: Answer
    port: int = 0
    #: (path, decoded JSON body) of every request received, in order.
    requests: list[tuple[str, Any]] = attrs.field(factory=list)
    #: Paths of requests whose client left before the answer was ready.
    cancelled: list[str] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event, alias="_changed")

    async def wait_for(self, predicate: Callable[[Backend], bool]) -> None:
        """Wait until `predicate(self)` holds, checked whenever a request arrives or ends."""
        while not predicate(self):
            await self._changed.wait()

    def _touch(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def serve(
        self, *, task_status: trio.TaskStatus[Backend] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self)
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                head, body = await _read_request(conn, stream)
                if head is None:
                    return
                path = head.target.decode()
                decoded = json.loads(body) if body else None
                self.requests.append((path, decoded))
                self._touch()
                answered = await self._answer_unless_gone(stream, path, decoded)
                if answered is None:
                    self.cancelled.append(path)
                    self._touch()
                    return
                status, payload = answered
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
                await stream.send_all(conn.send(h11.Data(data=data)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async def _answer_unless_gone(
        self, stream: trio.SocketStream, path: str, body: Any
    ) -> tuple[int, Any] | None:
        result: list[tuple[int, Any]] = []
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                result.append(await self.answer(path, body))
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                # The client sends nothing more before our answer: EOF means it left.
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.receive_some()
                nursery.cancel_scope.cancel()

            nursery.start_soon(answer)
            nursery.start_soon(watch)
        return result[0] if result else None


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream
) -> tuple[h11.Request | None, bytes]:
    head: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some()
            if not data and conn.their_state is h11.IDLE:
                return None, b""
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return head, body
        elif isinstance(event, h11.ConnectionClosed):
            return None, b""


async def unused_port() -> int:
    """A local port nothing listens on (bound, then closed): a backend that is down."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port
