"""The gateway inside a Trio program: publish in-process, receive on a WebSocket client."""

import trio

from trio_gateway import Config, open_gateway
from trio_gateway.client import open_client


async def main() -> None:
    config = Config(host="127.0.0.1", port=0, api_keys=("dev-key",))
    async with open_gateway(config) as gateway:
        url = f"ws://127.0.0.1:{gateway.port}/api/ws"
        async with open_client(url, "dev-key", subscriptions=["workspace:W"]) as client:
            gateway.broadcaster.broadcast_event({"workspace_id": "W", "kind": "x"})
            async for message in client:
                print(message["event"])
                break


trio.run(main)
