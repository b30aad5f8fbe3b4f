"""Positions carry a subscription across processes: each client resumes after what the
last one handled, so the second prints only what was published while nobody was connected.
"""

import json

import trio

from trio_gateway import Config, open_gateway
from trio_gateway.client import Position, open_client

SAVED = trio.Path("positions.json")  # key -> [epoch, offset], in the current directory


async def run_client(
    url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    saved = json.loads(await SAVED.read_text()) if await SAVED.exists() else {}
    resume = {key: Position(*value) for key, value in saved.items()}
    async with open_client(url, "dev-key", subscriptions=["workspace:W"], resume=resume) as client:
        task_status.started()  # connected and subscribed
        async for message in client:
            print(message["event"]["n"])
            # Handled: the next client resumes after it.
            await SAVED.write_text(json.dumps(dict(client.positions)))
            break


async def main() -> None:
    await SAVED.unlink(missing_ok=True)  # this demo starts with no saved positions
    config = Config(host="127.0.0.1", port=0, api_keys=("dev-key",))
    async with open_gateway(config) as gateway:
        url = f"ws://127.0.0.1:{gateway.port}/api/ws"
        async with trio.open_nursery() as client_nursery:
            await client_nursery.start(run_client, url)
            gateway.broadcaster.broadcast_event({"workspace_id": "W", "n": 1})
        # Nobody is connected: this one waits in the server's history for the next client.
        gateway.broadcaster.broadcast_event({"workspace_id": "W", "n": 2})
        await run_client(url)


trio.run(main)
