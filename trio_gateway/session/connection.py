"""One WebSocket client from the 101 to the close: auth, reader, writer, close codes.

Theory of operation
-------------------
`serve_websocket` gets the stream once http_api.py has answered the upgrade. A bad token is
closed 4001; otherwise a `Client` is registered and its session runs two tasks:

- the reader (the connection's own task) receives messages and dispatches them
  synchronously (subscribe, pong, ...); every reply is queued in the client's outbox like any
  broadcast, so a subscribe ack is always ahead of the first message it enables;
- the writer is the only task that writes data frames: it takes everything queued and writes
  it in order, in few writes. The fan-out may write for it while it is idle (outbox.py).

A close is requested through `Client.close(reason)` by anyone (hub: slow consumer,
keepalive: stale, server: shutdown, reader/writer: the WebSocket is already closed). That
cancels the reader and ends the outbox; the writer gets a bounded grace to finish (the whole
queue when the close asked for a flush), then the close frame is sent inside a shielded,
time-bounded scope, and `linger_close` waits for the peer's answer. If a frame was only
partly written the stream is corrupt, so no close frame is attempted and the socket is just
dropped.

Must not raise: failures are logged and closed with 1011; only cancellation propagates.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator

import attrs
import trio

from ..broker import Broker, BrokerUnavailable
from ..fanout.broadcaster import Broadcaster, GatewayClosed, topic_publication
from ..fanout.hub import SESSION_EXPIRED_FRAME, Client, Hub
from ..fanout.outbox import Outbox
from ..fanout.publication import Position
from ..observability.jsonlog import fields
from ..protocol.codec import ECHO_LIMIT, decode, encode
from ..protocol.errors import (
    INTERNAL_ERROR,
    SESSION_EXPIRED,
    SHUTTING_DOWN,
    UNAUTHORIZED,
    ProtocolError,
)
from ..protocol.frames import binary_frame, text_frame
from ..protocol.messages import (
    ClientMessage,
    Error,
    Hello,
    Identify,
    Ping,
    Pong,
    Publish,
    Published,
    Ready,
    Refresh,
    Refreshed,
    Since,
    Subscribe,
    Subscribed,
    Sync,
    Unsubscribe,
    Unsubscribed,
)
from ..protocol.routing import (
    ALL,
    SESSION_PREFIX,
    encodable,
    session_key,
    subscription_key,
    unsubscription_key,
)
from ..protocol.topics import is_pattern
from ..runtime.config import Config
from ..runtime.ids import IdFactory
from ..transport.websocket import ConnectionClosed, WebSocket, linger_close
from .auth import Authenticator, AuthError, Credential, Identity, may_publish, may_subscribe

log = logging.getLogger("trio_gateway.connection")

PONG_FRAME = text_frame(encode(Pong()))
NOT_IDENTIFIED = text_frame(encode(Error("Not identified: send identify first", "unauthorized")))
# Error codes: machine-readable reasons on error replies.
FORBIDDEN = "forbidden"
UNAVAILABLE = "unavailable"
UNAUTHORIZED_CODE = "unauthorized"
BINARY_ERROR = text_frame(encode(Error("Binary frames are not supported; send JSON text frames")))
# Most bytes one write may gather from a client's queue: enough to batch a burst of small
# frames into one send_all, small enough not to copy large messages around needlessly.
COALESCE_LIMIT = 64 * 1024


@attrs.define
class GatewayContext:
    """What every connection shares; built once by server.py."""

    config: Config
    hub: Hub
    new_id: IdFactory
    broker: Broker
    auth: Authenticator
    broadcaster: Broadcaster
    # Set when graceful shutdown begins: handshakes still in flight close 1001 at once and the
    # HTTP side stops keeping connections alive.
    shutting_down: trio.Event = attrs.field(factory=trio.Event)


async def handle(client: Client, context: GatewayContext, message: ClientMessage | Error) -> None:
    """Act on one decoded client message; the reader awaits it before reading the next.

    Most messages are handled synchronously (`dispatch`). A subscribe and a sync may wait for
    the broker: a subscribe is acked once its key is live on this instance and its position
    is known, and the reader reads nothing else meanwhile, so replies keep request order.
    """
    try:
        if isinstance(message, Subscribe):
            await _subscribe(client, context, message)
        elif isinstance(message, Sync):
            await _sync(client, context, message)
        elif isinstance(message, Publish):
            await _publish(client, context, message)
        elif isinstance(message, Refresh):
            _refresh(client, context, message)
        elif isinstance(message, Identify):
            raise ProtocolError("Already identified")
        else:
            dispatch(client, context, message)
    except ProtocolError as exc:
        client.send(_error_frame(exc.message, exc.code))


def dispatch(client: Client, context: GatewayContext, message: ClientMessage | Error) -> None:
    """Act on a message that needs nothing from the broker. Synchronous: no checkpoint
    between state and reply."""
    if isinstance(message, Error):
        client.send(text_frame(encode(message)))
    elif isinstance(message, Unsubscribe):
        maybe_key = unsubscription_key(message)
        if maybe_key is None:
            context.hub.unsubscribe_all(client)
            client.send(text_frame(encode(Unsubscribed(ALL))))
        else:
            context.hub.unsubscribe(client, maybe_key)
            client.send(text_frame(encode(Unsubscribed(maybe_key))))
    elif isinstance(message, Pong):
        client.last_pong = trio.current_time()
    elif isinstance(message, Ping):
        client.send(PONG_FRAME)


async def _subscribe(client: Client, context: GatewayContext, message: Subscribe) -> None:
    hub, config = context.hub, context.config
    key = subscription_key(message)
    if not may_subscribe(client.identity, key):
        raise ProtocolError(f"Forbidden: may not subscribe to {key[:ECHO_LIMIT]}", FORBIDDEN)
    if key not in client.subscriptions and len(client.subscriptions) >= config.max_subscriptions:
        raise ProtocolError(
            f"Too many subscriptions: at most {config.max_subscriptions} per connection"
        )
    recover = message.recover or message.since is not None
    if is_pattern(key) and recover:
        raise ProtocolError(
            "Invalid subscribe: wildcard topics are live only (no since or recover)"
        )
    if recover:
        client.offsets = True
    elif is_pattern(key) or not key.startswith(SESSION_PREFIX):
        hub.subscribe(client, key)
        # Acked from the broker's side the moment the key is live, ahead of any message it
        # brings (those reach the client straight through the hub).
        ack = text_frame(encode(Subscribed(key)))
        await _when_live(context, key, lambda: client.send(ack))
        return
    await _subscribe_with_position(client, context, key, message.since, recover=recover)


async def _subscribe_with_position(
    client: Client,
    context: GatewayContext,
    key: str,
    since: Since | None,
    *,
    recover: bool,
) -> None:
    """Subscribe after asking the broker where `key` stands (and, for a session, its state).

    What is published meanwhile is kept aside by the hub, then sent after the ack and any
    replay, minus what the replay already covered: nothing lost or doubled on `key`.
    """
    hub = context.hub
    hub.begin_recovery(client, key)
    position: Position | None = None
    try:
        await _when_live(context, key, lambda: None)
        position = await context.broker.fetch(
            key,
            (since.offset, since.epoch) if since is not None else None,
            state=key.startswith(SESSION_PREFIX),
        )
    except BrokerUnavailable:
        pass
    # No checkpoint from here on: ack, replay and what was kept aside go out in one piece,
    # and as one queue entry, so a replay of up to history_size messages is not mistaken for
    # a slow consumer (the outbox limit counts entries).
    kept = hub.end_recovery(client, key)
    if position is None:
        # The broker is down: live from now on, and a resume cannot be vouched for.
        ack = Subscribed(key, recovered=False if since is not None else None)
        client.send(b"".join([text_frame(encode(ack)), *(frame for _, frame in kept)]))
        return
    if recover:
        ack = Subscribed(key, position.epoch, position.offset, position.recovered)
    else:
        ack = Subscribed(key)
    frames = [text_frame(encode(ack))]
    if position.recovered:
        frames += [frame for _, frame in position.replay]
    elif position.state is not None:
        # A client starting afresh gets the latest state first; one that recovered got every
        # update it missed instead, and an older state now would go back in time.
        frames.append(text_frame(position.state))
    frames += [frame for offset, frame in kept if offset > position.offset]
    client.send(frames[0] if len(frames) == 1 else b"".join(frames))


async def _when_live(context: GatewayContext, key: str, on_live: Callable[[], object]) -> None:
    """Run `on_live` once `key` is live on this instance, or after `request_timeout`."""
    done = trio.Event()

    def fire() -> None:
        if not done.is_set():
            done.set()
            on_live()

    context.broker.when_live(key, fire)
    with trio.move_on_after(context.config.request_timeout):
        await done.wait()
    # Redis too slow to confirm: go on; the channel still comes up when Redis answers.
    fire()


async def _sync(client: Client, context: GatewayContext, message: Sync) -> None:
    if not message.session_id or not encodable(message.session_id):
        raise ProtocolError("Invalid sync: session_id must be a non-empty string")
    try:
        state = await context.broker.state(session_key(message.session_id))
    except BrokerUnavailable:
        raise ProtocolError("Broker unavailable: try again later") from None
    if state is None:
        raise ProtocolError(f"No state retained for session {message.session_id[:ECHO_LIMIT]}")
    client.send(text_frame(state))


def _error_frame(message: str, code: str | None = None) -> bytes:
    return text_frame(encode(Error(message[: ECHO_LIMIT * 2], code)))


async def _publish(client: Client, context: GatewayContext, message: Publish) -> None:
    if not may_publish(client.identity, message.topic):
        raise ProtocolError(
            f"Forbidden: may not publish on {message.topic[:ECHO_LIMIT]}", FORBIDDEN
        )
    try:
        publication = topic_publication(message.topic, message.data, client.identity.user_id)
    except ValueError as exc:
        raise ProtocolError(f"Invalid publish: {exc}") from None
    try:
        (offsets,) = await context.broadcaster.send(publication)
    except (BrokerUnavailable, GatewayClosed):
        raise ProtocolError(
            "Broker unavailable: not published; try again later", UNAVAILABLE
        ) from None
    client.send(text_frame(encode(Published(message.topic, offsets[0]))))


def _refresh(client: Client, context: GatewayContext, message: Refresh) -> None:
    try:
        identity = context.auth.authenticate(message.token, time.time())
    except AuthError as exc:
        raise ProtocolError(f"Refresh refused: {exc}", UNAUTHORIZED_CODE) from None
    if identity.user_id != client.identity.user_id:
        # The session keeps its old expiry: a token cannot move a connection to another user.
        raise ProtocolError("Refresh refused: the token is for another user", FORBIDDEN)
    client.identity = identity
    _set_expiry(client, identity)
    client.send(text_frame(encode(Refreshed(identity.expires_at))))


def _set_expiry(client: Client, identity: Identity) -> None:
    if client.expiry is None:
        return
    if identity.expires_at is None:
        client.expiry.deadline = math.inf
    else:
        client.expiry.deadline = trio.current_time() + (identity.expires_at - time.time())


async def _read_loop(ws: WebSocket, client: Client, context: GatewayContext, echo: bool) -> None:
    try:
        while True:
            frame = await ws.receive()
            if isinstance(frame, bytes):
                client.send(binary_frame(frame) if echo else BINARY_ERROR)
            elif echo:
                client.send(text_frame(frame))
            else:
                await handle(client, context, decode(frame))
    except ConnectionClosed as exc:
        client.close(exc.closed)


async def _write_loop(ws: WebSocket, client: Client) -> None:
    """The writer task: takes everything queued, writes it in few chunks, in order."""
    try:
        while True:
            try:
                frames = await client.outbox.take()
            except trio.EndOfChannel:
                return
            for chunk in _coalesce(frames):
                # A closing client gets no more data, except the rest of a frame already
                # partly written (the stream would be corrupt without it).
                if (
                    client.close_reason is not None
                    and not client.flush_before_close
                    and not ws.incomplete
                ):
                    return
                await ws.send_frames(chunk)
    except ConnectionClosed as exc:
        client.close(exc.closed)


def _coalesce(frames: list[bytes]) -> Iterator[bytes]:
    # Small frames are joined into writes of up to COALESCE_LIMIT bytes; a large one is
    # written on its own rather than copied into a join.
    batch: list[bytes] = []
    size = 0
    for frame in frames:
        if batch and size + len(frame) > COALESCE_LIMIT:
            yield b"".join(batch)
            batch, size = [], 0
        batch.append(frame)
        size += len(frame)
    if batch:
        yield batch[0] if len(batch) == 1 else b"".join(batch)


async def _run_session(
    ws: WebSocket, client: Client, context: GatewayContext, *, echo: bool
) -> None:
    config = context.config
    client.outbox.direct = ws
    try:
        async with trio.open_nursery() as session_nursery:
            session_nursery.start_soon(_write_loop, ws, client)
            with client.reader_scope:
                if client.expiry is None:
                    await _read_loop(ws, client, context, echo)
                else:
                    with client.expiry:
                        await _read_loop(ws, client, context, echo)
                    if client.expiry.cancelled_caught:
                        client.send(SESSION_EXPIRED_FRAME)
                        client.close(SESSION_EXPIRED, flush=True)
            # Reading stopped because a close was requested or the peer left: the writer gets
            # a bounded time to finish (a queue to drain for a graceful shutdown).
            grace = config.drain_timeout if client.flush_before_close else config.close_timeout
            session_nursery.cancel_scope.deadline = trio.current_time() + grace
    except Exception:
        client.close(INTERNAL_ERROR)
        raise
    finally:
        # From here on nothing may write to the socket behind the writer's back: the stream
        # is closed once this returns, and its descriptor number may then be reused.
        client.outbox.direct = None
        context.hub.remove(client)
        if client.close_reason is None:
            # Cancelled from outside without a close request: the server is stopping.
            client.close(SHUTTING_DOWN)
        reason = client.close_reason
        assert reason is not None
        # No close frame when the WebSocket is already closed, or when the writer was cut off
        # mid-frame (the stream is corrupt; the socket is just dropped).
        if ws.closed is None and not ws.incomplete:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(config.close_timeout),
                contextlib.suppress(ConnectionClosed),
            ):
                await ws.send_close(reason.code, reason.reason)


async def serve_websocket(
    stream: trio.abc.Stream,
    credential: Credential,
    trailing: bytes,
    context: GatewayContext,
    *,
    echo: bool = False,
) -> None:
    """Run one WebSocket client on `stream`, after http_api.py has answered 101.

    Args:
        stream: the connection, positioned after the upgrade request.
        credential: what the upgrade request's token proved: an identity, why it proved
            nothing (closed 4001), or None when it carried no token (identify first).
        trailing: bytes already read after the request head (the first frames, if any).
        echo: a diagnostics peer: every message it sends comes straight back through the
            same reader, queue and writer, and it gets no `ready`, no pings and no place in
            the hub (so it never counts as a client or receives broadcasts).

    Resource handling:
        Always closes `stream` before returning, lingering briefly so the peer reads our
        close frame.
    Error handling:
        Never raises except `Cancelled`: a failure is logged and closed with 1011.
    """
    config = context.config
    ws = WebSocket(stream, trailing, config.max_message_size)
    client: Client | None = None
    try:
        if credential is None and not echo:
            try:
                credential = await _identify(ws, context)
            except ConnectionClosed:
                return
        if not isinstance(credential, Identity):
            log.info(
                "unauthorized websocket",
                extra=fields(remote=_remote(stream), error=str(credential) if credential else None),
            )
            with trio.move_on_after(config.close_timeout), contextlib.suppress(ConnectionClosed):
                await ws.send_close(UNAUTHORIZED.code, UNAUTHORIZED.reason)
            return
        client = _register(context, credential, echo=echo)
        if context.shutting_down.is_set():
            client.close(SHUTTING_DOWN)
        await _run_session(ws, client, context, echo=echo)
    except Exception:
        log.exception("websocket connection failed", extra=fields(client_id=_id(client)))
    finally:
        if client is not None:
            context.hub.remove(client)
            log.info(
                "client disconnected",
                extra=fields(
                    client_id=client.id,
                    user_id=client.identity.user_id,
                    connected_for=round(trio.current_time() - client.connected_at, 3),
                    code=client.close_reason.code if client.close_reason else None,
                    reason=client.close_reason.reason if client.close_reason else None,
                ),
            )
        await linger_close(stream, config.close_timeout)


async def _identify(ws: WebSocket, context: GatewayContext) -> Credential:
    """The identify handshake of a connection without credentials (seed 003's HELLO).

    Returns the identity, or an AuthError (bad token, timeout) for a 4001 close. Anything
    else the client sends first gets an error reply and changes nothing.
    """
    config = context.config
    hello = Hello(round(config.ping_interval * 1000), round(config.identify_timeout * 1000))
    with trio.move_on_after(config.identify_timeout):
        await ws.send_frames(text_frame(encode(hello)))
        while True:
            frame = await ws.receive()
            message = decode(frame) if isinstance(frame, str) else None
            if isinstance(message, Identify):
                try:
                    return context.auth.authenticate(message.token, time.time())
                except AuthError as exc:
                    return exc
            await ws.send_frames(NOT_IDENTIFIED)
    return AuthError("identify timed out")


def _register(context: GatewayContext, identity: Identity, *, echo: bool) -> Client:
    config = context.config
    now = trio.current_time()
    client = Client(
        id=context.new_id(),
        outbox=Outbox(config.queue_depth),
        connected_at=now,
        last_pong=now,
        identity=identity,
    )
    if identity.expires_at is not None:
        client.expiry = trio.CancelScope()
        _set_expiry(client, identity)
    if not echo:
        ready = Ready(
            client.id, round(config.ping_interval * 1000), identity.user_id, identity.expires_at
        )
        client.send(text_frame(encode(ready)))
        context.hub.add(client)
    log.info(
        "client connected",
        extra=fields(client_id=client.id, user_id=identity.user_id, echo=echo),
    )
    return client


def _id(client: Client | None) -> str | None:
    return client.id if client is not None else None


def _remote(stream: trio.abc.Stream) -> str | None:
    socket = getattr(stream, "socket", None)
    if socket is None:
        return None
    try:
        host, port, *_ = socket.getpeername()
    except (OSError, ValueError):
        return None
    return f"{host}:{port}"
