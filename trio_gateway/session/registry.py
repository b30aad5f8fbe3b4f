"""The message registry: client message class -> handler, behind one middleware chain.

Theory of operation
-------------------
Every decoded client message, malformed ones included (codec.py turns those into an `Error`
to send back), goes through `Registry.dispatch` exactly once. The reader awaits it before
reading the next frame, so replies keep request order whether a handler is synchronous (most:
no checkpoint between changing state and queuing the reply) or asynchronous (a subscribe that
waits for the broker). A handler replies through `client.send`, like any broadcast, so a reply
is always ordered with the messages it enables.

Handlers are filed where they live: each handler module has an `install(registry)` that
registers its message classes (session/handlers/). Middleware wraps every handler call, in
the order it was added, outermost first: that is where a check that applies to every message
goes (a rate limit, a metrics counter, a permission check). A middleware may stop a message
by not calling `call_next`, or by raising `ProtocolError`, which becomes the error reply; the
connection stays open either way. That makes `dispatch` the one place every error reply to a
client message passes, so it is where refusals are logged (at debug level).

Must not: touch the socket or know any particular message; decoding is codec.py's.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..observability.jsonlog import fields
from ..protocol.errors import ProtocolError
from ..protocol.messages import ClientMessage, Error
from ..protocol.replies import error_frame

if TYPE_CHECKING:
    from ..fanout.hub import Client
    from .context import GatewayContext

Message = ClientMessage | Error
M = TypeVar("M", bound=Message)
#: A handler: acts on one message of its class; sync, or async when it must wait.
Handler = Callable[["Client", "GatewayContext", M], Awaitable[None] | None]
#: The rest of the chain after a middleware: the next middleware, then the handler.
Next = Callable[["Client", "GatewayContext", Message], Awaitable[None]]
#: A middleware: sees every message once, and calls `call_next` to let it through.
Middleware = Callable[["Client", "GatewayContext", Message, Next], Awaitable[None]]

log = logging.getLogger("trio_gateway.session")


class Registry:
    """Which handler acts on which client message class, and the middleware in front."""

    def __init__(self) -> None:
        self._handlers: dict[type, tuple[Handler[Any], bool]] = {}
        self._middleware: list[Middleware] = []
        self._chain: Next | None = None

    def register(self, cls: type[M], handler: Handler[M]) -> None:
        """Make `handler` act on every message of class `cls`; one handler per class.

        Raises:
            ValueError: `cls` has a handler already.
        """
        if cls in self._handlers:
            raise ValueError(f"{cls.__name__} has a handler already")
        self._handlers[cls] = (handler, inspect.iscoroutinefunction(handler))

    def use(self, middleware: Middleware) -> None:
        """Put `middleware` in front of every handler, inside those added before it."""
        self._middleware.append(middleware)
        self._chain = None

    def handles(self, cls: type[Message]) -> bool:
        return cls in self._handlers

    async def dispatch(self, client: Client, context: GatewayContext, message: Message) -> None:
        """Run `message` through the middleware and its handler; a `ProtocolError` from
        either is sent back as an error reply."""
        chain = self._chain
        if chain is None:
            chain = self._chain = self._build()
        try:
            await chain(client, context, message)
        except ProtocolError as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "error reply",
                    extra=fields(
                        client_id=client.id,
                        # A message that could not be decoded has no type to name.
                        type=None if isinstance(message, Error) else message.TAG,
                        code=exc.code,
                        error=exc.message,
                    ),
                )
            client.send(error_frame(exc.message, exc.code))

    def _build(self) -> Next:
        chain: Next = self._call
        for middleware in reversed(self._middleware):
            chain = _link(middleware, chain)
        return chain

    async def _call(self, client: Client, context: GatewayContext, message: Message) -> None:
        entry = self._handlers.get(type(message))
        if entry is None:
            # A declared message type that nothing here handles: to the client, unknown.
            raise ProtocolError(f"Unknown message type: {message.TAG}")
        handler, is_async = entry
        result = handler(client, context, message)
        if is_async:
            assert result is not None
            await result


def _link(middleware: Middleware, call_next: Next) -> Next:
    async def linked(client: Client, context: GatewayContext, message: Message) -> None:
        await middleware(client, context, message, call_next)

    return linked
