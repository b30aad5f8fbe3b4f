"""A session's reader (frames in, one dispatch each) and its writer, while it writes.

- The reader is the connection's own task: it receives messages and hands each to the
  registry, awaiting it before reading the next, so replies keep request order. Every reply
  is queued in the client's outbox like any broadcast, so a subscribe ack is always ahead of
  the first message it enables.
- The writer exists only while there is something to write that could not be written at
  once (fanout/outbox.py writes directly otherwise): it takes everything queued, writes it in
  order, in few writes, and ends once nothing is left.

Both turn a closed WebSocket into a close request on the client, and the reader a frame over
the client's budget (session/ratelimit.py) into an error reply and close 4008, after which
it reads nothing more. Must not: decide other close codes or run cleanup;
session/connection.py does.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..fanout.hub import Client
from ..protocol.codec import decode
from ..protocol.errors import RATE_LIMITED
from ..protocol.frames import binary_frame, text_frame
from ..protocol.replies import BINARY_ERROR_FRAME
from ..transport.websocket import ConnectionClosed, FrameRefused, WebSocket
from .context import GatewayContext
from .ratelimit import frames_refused_frame

# Most bytes one write may gather from a client's queue: enough to batch a burst of small
# frames into one send_all, small enough not to copy large messages around needlessly.
COALESCE_LIMIT = 64 * 1024


async def read_loop(ws: WebSocket, client: Client, context: GatewayContext, echo: bool) -> None:
    """Receive until the WebSocket closes; an echo peer gets every message straight back."""
    dispatch = context.handlers.dispatch
    try:
        while True:
            frame = await ws.receive()
            if isinstance(frame, bytes):
                client.send(binary_frame(frame) if echo else BINARY_ERROR_FRAME)
            elif echo:
                client.send(text_frame(frame))
            else:
                await dispatch(client, context, decode(frame))
            # Not held while waiting for the next one: an idle connection would keep its
            # last message, up to max_message_size, for as long as it stays idle.
            del frame
    except ConnectionClosed as exc:
        client.close(exc.closed)
    except FrameRefused:
        context.metrics.rate_limited["frames"] += 1
        client.send(frames_refused_frame(context.config))
        client.close(RATE_LIMITED, flush=True)


async def write_queued(ws: WebSocket, client: Client) -> None:
    """The writer: write everything queued, in order and in few chunks, until nothing is
    left (fanout/outbox.py starts it when a frame cannot be written at once)."""
    outbox = client.outbox
    try:
        while frames := outbox.take_nowait():
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
                outbox.written += len(chunk)
    except ConnectionClosed as exc:
        client.close(exc.closed)
    finally:
        outbox.writer_stopped()


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
