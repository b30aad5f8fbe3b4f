"""Positions carry a subscription across processes: a new client resumes after what the
last one handled, and gets what was published in between, once."""

import json
from collections.abc import Callable
from pathlib import Path

import trio

from trio_gateway import Config, open_gateway
from trio_gateway.client import Position, open_client

SAVED = Path("positions.json")


def load_positions() -> dict[str, Position]:
    if not SAVED.exists():
        return {}
    return {key: Position(*value) for key, value in json.loads(SAVED.read_text()).items()}


def save_positions(positions: dict[str, Position]) -> None:
    SAVED.write_text(json.dumps(positions))


async def run_client(url: str, count: int, on_connect: Callable[[str], None]) -> None:
    saved = load_positions()  # {} the first time; key -> (epoch, offset) after that
    async with open_client(
        url, "dev-key", subscriptions=["workspace:W"], resume=saved, on_connect=on_connect
    ) as client:
        async for message in client:
            print(message["event"]["n"])
            save_positions(dict(client.positions))  # handled: a restart resumes after it
            count -= 1
            if count == 0:
                break


async def main() -> None:
    config = Config(host="127.0.0.1", port=0, api_keys=("dev-key",))
    async with open_gateway(config) as gateway:
        url = f"ws://127.0.0.1:{gateway.port}/api/ws"
        subscribed = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_client, url, 1, lambda client_id: subscribed.set())
            await subscribed.wait()
            gateway.broadcaster.broadcast_event({"workspace_id": "W", "n": 1})
        # Nobody is connected: this one waits in the server's history.
        gateway.broadcaster.broadcast_event({"workspace_id": "W", "n": 2})
        await run_client(url, 1, lambda client_id: None)


SAVED.unlink(missing_ok=True)  # this demo starts with no saved positions
trio.run(main)
