"""One WebSocket client from the 101 to the close: identify, register, run, close.

Theory of operation
-------------------
`serve_websocket` gets the stream once transport/http.py has answered the upgrade. A token
only the backend can judge goes to the connect hook first (backend/connect.py; no usable
answer closes 1013). A bad token is closed 4001; otherwise a `Client` is registered (in the
hub with the subscriptions the backend bound it to, live before `ready`; then the
lifecycle's connect hooks) and its session starts, as a new task in the connection nursery,
and the handshake's task ends: nothing the HTTP side and the handshake awaited through is
held while the connection is idle, which it is most of its life.

The session's task is the reader (session/io.py): it hands every message to the registry
(session/registry.py, handlers in session/handlers/). Frames are written straight to the
socket when they can be, and a writer task runs only while some cannot (fanout/outbox.py);
that and work a message starts beside the reader (a command call, `Client.tasks`) are the
session's tasks (session/tasks.py), run in the connection nursery and waited for before the
stream closes; the lifecycle's `stopped` hooks end the command calls once reading stops.

A close is requested through `Client.close(reason)` by anyone (hub: slow consumer,
keepalive: stale, server: shutdown, reader/writer: the WebSocket is already closed). That
cancels the reader and ends the outbox; the writer gets a bounded grace to finish (the whole
queue when the close asked for a flush), then the close frame is sent inside a shielded,
time-bounded scope, and `linger_close` waits for the peer's answer. If a frame was only
partly written the stream is corrupt, so no close frame is attempted and the socket is just
dropped. Once the client has left the hub the lifecycle's disconnect hooks run.

Must not raise: failures are logged and closed with 1011; only cancellation propagates.
Must not handle client messages itself: that is the registry's.
"""

from __future__ import annotations

import contextlib
import logging
import time

import trio

from ..backend.connect import HookUnavailable
from ..fanout.hub import Client
from ..fanout.outbox import Outbox
from ..observability.jsonlog import fields
from ..protocol.codec import encode
from ..protocol.errors import (
    INTERNAL_ERROR,
    RATE_LIMITED,
    SESSION_EXPIRED,
    SHUTTING_DOWN,
    TRY_AGAIN_LATER,
    UNAUTHORIZED,
    CloseReason,
)
from ..protocol.frames import text_frame
from ..protocol.messages import Ready
from ..protocol.replies import SESSION_EXPIRED_FRAME
from ..runtime.config import Config
from ..transport.limits import Slot
from ..transport.websocket import ConnectionClosed, FrameRefused, WebSocket, linger_close
from .auth import AuthError, Credential, Identity, Pending
from .context import GatewayContext
from .expiry import set_expiry
from .handlers.identify import identify_handshake
from .handlers.subscribe import when_live
from .io import read_loop, write_queued
from .pattern_quota import within_quota
from .ratelimit import TokenBucket, frame_bucket, frames_refused_frame
from .tasks import SessionTasks

log = logging.getLogger("trio_gateway.connection")


async def _run_session(
    ws: WebSocket,
    client: Client,
    context: GatewayContext,
    echo: bool,
    slot: Slot | None,
    remote: str | None,
    origin: str | None,
) -> None:
    """A registered client's session, from `ready` to the closed stream, as a task of its
    own: what an idle connection is. One function, because every frame it awaits through is
    held for as long as the connection is idle. Never raises except `Cancelled`."""
    config = context.config
    tasks = SessionTasks(_connection_nursery(), client, (write_queued, ws, client))
    outbox = client.outbox
    outbox.direct = ws
    outbox.writers = tasks
    ws.lend_fd(outbox)
    try:
        try:
            if not echo:
                context.lifecycle.connected(client)
            # What was queued before the session started (`ready`), unless it is closing.
            if client.close_reason is None or client.flush_before_close:
                outbox.flush()
            client.tasks = tasks
            try:
                with client.reader_scope:
                    if client.expiry is None:
                        await read_loop(ws, client, context, echo)
                    else:
                        with client.expiry:
                            await read_loop(ws, client, context, echo)
                if client.expiry is not None and client.expiry.cancelled_caught:
                    client.send(SESSION_EXPIRED_FRAME)
                    client.close(SESSION_EXPIRED, flush=True)
            finally:
                # Work started beside the reader (command calls) stops with it.
                client.tasks = None
                if not echo:
                    context.lifecycle.stopped(client)
            # Reading stopped because a close was requested or the peer left: the writer
            # gets a bounded time to finish (a queue to drain for a graceful shutdown,
            # including what the flusher did not reach).
            if client.flush_before_close:
                outbox.flush()
            grace = config.drain_timeout if client.flush_before_close else config.close_timeout
            with trio.move_on_after(grace):
                await tasks.wait()
        except Exception:
            client.close(INTERNAL_ERROR)
            raise
        finally:
            # From here on nothing may write to the socket behind the writer's back: the
            # stream is closed once this returns, and its descriptor number may then be
            # reused.
            ws.lend_fd(None)
            outbox.direct = None
            outbox.writers = None
            tasks.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(config.close_timeout):
                await tasks.wait()
            context.hub.remove(client)
            if client.close_reason is None:
                # Cancelled from outside without a close request: the server is stopping.
                client.close(SHUTTING_DOWN)
            if not echo:
                context.lifecycle.disconnected(client)
            await _close_frame(ws, client, config)
    except Exception:
        log.exception("websocket connection failed", extra=fields(client_id=client.id))
    finally:
        await _ended(ws.stream, client, context, slot, remote, origin)


async def _close_frame(ws: WebSocket, client: Client, config: Config) -> None:
    # No close frame when the WebSocket is already closed, or when the writer was cut off
    # mid-frame (the stream is corrupt; the socket is just dropped). A peer's close still
    # unanswered gets its answer, with the peer's code.
    reason = client.close_reason
    assert reason is not None
    if not ws.incomplete and (ws.closed is None or ws.owes_close):
        closing = reason if ws.closed is None else ws.closed
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(config.close_timeout),
            contextlib.suppress(ConnectionClosed),
        ):
            await ws.send_close(closing.code, closing.reason)


async def _ended(
    stream: trio.abc.Stream,
    client: Client | None,
    context: GatewayContext,
    slot: Slot | None,
    remote: str | None,
    origin: str | None,
) -> None:
    """The end of every WebSocket, registered or not: out of the hub, one line, the stream
    closed (lingering, so the peer reads our close frame), the slot given back."""
    try:
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
                    **_peer_fields(remote, origin),
                ),
            )
        await linger_close(stream, context.config.close_timeout)
    finally:
        if slot is not None:
            slot.release()


def _connection_nursery() -> trio.Nursery:
    # The nursery this connection's task was started in: the server's connection nursery.
    nursery = trio.lowlevel.current_task().parent_nursery
    assert nursery is not None, "a connection runs as a task of the connection nursery"
    return nursery


async def serve_websocket(
    stream: trio.abc.Stream,
    credential: Credential,
    trailing: bytes,
    context: GatewayContext,
    *,
    echo: bool = False,
    origin: str | None = None,
    remote: str | None = None,
    slot: Slot | None = None,
) -> None:
    """Run one WebSocket client on `stream`, after transport/http.py has answered 101: its
    handshake here, then its session as a task of its own (returning once it is started).

    Args:
        stream: the connection, positioned after the upgrade request.
        credential: what the upgrade request's token proved: an identity, why it proved
            nothing (closed 4001), a token for the connect hook, or None when it carried no
            token (identify first).
        trailing: bytes already read after the request head (the first frames, if any).
        origin: the upgrade request's Origin header, for the connect hook and the logs.
        remote: the peer's "ip:port" (None when the stream is not a socket), likewise.
        echo: a diagnostics peer: every message it sends comes straight back through the
            same reader, queue and writer, and it gets no `ready`, no pings and no place in
            the hub (so it never counts as a client or receives broadcasts).
        slot: this WebSocket's place in the connection caps (transport/limits.py), told
            when the client is registered (its handshake is over) and given back when the
            WebSocket ends.

    Resource handling:
        Closes `stream` (lingering briefly so the peer reads our close frame) and releases
        `slot`, before returning or at the end of the session it started.
    Error handling:
        Never raises except `Cancelled`: a failure is logged and closed with 1011.
    """
    config = context.config
    ws = WebSocket(
        stream, trailing, config.max_message_size, config.max_fragments, context.readiness
    )
    # The budget holds from the first frame: the identify handshake is metered too.
    frames = None if echo else frame_bucket(config, trio.current_time())
    ws.gate = frames
    client: Client | None = None
    handed_over = False
    try:
        via = "upgrade"
        if credential is None and not echo:
            via = "identify"
            try:
                credential = await identify_handshake(ws, context)
            except ConnectionClosed as exc:
                # A framing error, an oversize message or the peer leaving: one line, as
                # for every connection that ends before it is a client.
                log.info(
                    "websocket closed before identify",
                    extra=fields(
                        code=exc.closed.code,
                        reason=exc.closed.reason,
                        **_peer_fields(remote, origin),
                    ),
                )
                return
            except FrameRefused:
                context.metrics.rate_limited["frames"] += 1
                with (
                    trio.move_on_after(config.close_timeout),
                    contextlib.suppress(ConnectionClosed),
                ):
                    await ws.send_frames(frames_refused_frame(config))
                await _refuse(ws, config, RATE_LIMITED)
                return
        client_id = context.new_id()
        kind = "connect_hook" if isinstance(credential, Pending) else None
        if isinstance(credential, Pending):
            try:
                credential = await _ask_backend(context, credential, client_id, remote, origin)
            except HookUnavailable:
                context.metrics.refused["backend_unavailable"] += 1
                await _refuse(ws, config, TRY_AGAIN_LATER)
                return
        if log.isEnabledFor(logging.DEBUG):
            _log_identify(client_id, via, kind, credential)
        if not isinstance(credential, Identity):
            log.info(
                "unauthorized websocket",
                extra=fields(
                    error=str(credential) if credential else None, **_peer_fields(remote, origin)
                ),
            )
            context.metrics.refused["unauthorized"] += 1
            await _refuse(ws, config, UNAUTHORIZED)
            return
        client = _register(
            context, client_id, credential, frames, echo=echo, peer=_peer_fields(remote, origin)
        )
        if slot is not None:
            slot.registered()
        ws.gate = client
        if credential.subscriptions and not echo:
            await _bind(context, client)
        if context.shutting_down.is_set():
            client.close(SHUTTING_DOWN)
        # The session runs as a task of its own, and this one ends: what it awaited through
        # (HTTP, the handshake) is not held for the connection's whole life.
        _connection_nursery().start_soon(
            _run_session, ws, client, context, echo, slot, remote, origin
        )
        handed_over = True
    except Exception:
        log.exception("websocket connection failed", extra=fields(client_id=_id(client)))
    finally:
        if not handed_over:
            await _ended(stream, client, context, slot, remote, origin)


async def _refuse(ws: WebSocket, config: Config, reason: CloseReason) -> None:
    with trio.move_on_after(config.close_timeout), contextlib.suppress(ConnectionClosed):
        await ws.send_close(reason.code, reason.reason)


async def _ask_backend(
    context: GatewayContext,
    pending: Pending,
    client_id: str,
    remote: str | None,
    origin: str | None,
) -> Identity | AuthError:
    """The connect hook's verdict on `pending`'s token (each connection waits for its own).

    Raises:
        HookUnavailable: the backend gave no usable answer (close 1013).
    """
    hook = context.connect_hook
    assert hook is not None, "Pending credentials exist only with a connect hook"
    try:
        return await hook.identify(pending.token, client_id, remote, origin, time.time())
    except AuthError as exc:
        return exc


async def _bind(context: GatewayContext, client: Client) -> None:
    """Wait until the keys the backend subscribed `client` to are live, so `ready` (written
    once the session starts) is ahead of nothing they bring."""
    async with trio.open_nursery() as nursery:
        for key in client.subscriptions:
            nursery.start_soon(when_live, context, key, _nothing)


def _nothing() -> None:
    pass


def _peer_fields(remote: str | None, origin: str | None) -> dict[str, str | None]:
    # Every line about a connection says where it came from; most clients send no Origin.
    # Made for each line rather than kept: an idle connection would hold the dict.
    return {"remote": remote} if origin is None else {"remote": remote, "origin": origin}


def _log_identify(client_id: str, via: str, kind: str | None, credential: Credential) -> None:
    # What the credential proved, never the token: a log line is not a place for secrets.
    if isinstance(credential, Identity):
        kind = kind or ("api_key" if credential.is_api_key else "jwt")
        log.debug(
            "identify",
            extra=fields(
                client_id=client_id,
                via=via,
                outcome="identified",
                kind=kind,
                user_id=credential.user_id,
            ),
        )
    else:
        error = str(credential) if credential else None
        log.debug(
            "identify",
            extra=fields(client_id=client_id, via=via, outcome="refused", error=error),
        )


def _register(
    context: GatewayContext,
    client_id: str,
    identity: Identity,
    frames: TokenBucket | None,
    *,
    echo: bool,
    peer: dict[str, str | None],
) -> Client:
    config = context.config
    now = trio.current_time()
    client = Client(
        id=client_id,
        outbox=Outbox(config.queue_depth),
        connected_at=now,
        last_seen=now,
        identity=identity,
        frames=frames,
    )
    if identity.expires_at is not None:
        client.expiry = trio.CancelScope()
        set_expiry(client, identity)
    if not echo:
        # The backend's subscriptions are held whatever the grants say, up to the limits.
        bound = within_quota(
            config, context.hub.patterns, identity.subscriptions[: config.max_subscriptions]
        )
        ready = Ready(
            client.id,
            round(config.ping_interval * 1000),
            identity.user_id,
            identity.expires_at,
            identity.session_id,
            identity.info,
            bound or None,
        )
        client.send(text_frame(encode(ready)))
        context.hub.add(client)
        for key in bound:
            context.hub.subscribe(client, key)
    log.info(
        "client connected",
        extra=fields(client_id=client.id, user_id=identity.user_id, echo=echo, **peer),
    )
    return client


def _id(client: Client | None) -> str | None:
    return client.id if client is not None else None
