"""Mint a JWT with pyjwt and connect with it: the gateway's `ready` names the token's `sub`."""

import json
import time

import jwt
import trio
import trio_websocket

from trio_gateway import Config, open_gateway

SECRET = "change-me-to-32-random-bytes-or-more"  # the gateway's jwt_secret (HS256)

token = jwt.encode(
    {
        "sub": "alice",
        "exp": int(time.time()) + 3600,
        "sub_topics": ["chat.**", "workspace.W1"],
        "pub_topics": ["chat.room.*"],
    },
    SECRET,
    algorithm="HS256",
)


async def main() -> None:
    config = Config(host="127.0.0.1", port=0, jwt_secret=SECRET)
    async with open_gateway(config) as gateway:
        url = f"ws://127.0.0.1:{gateway.port}/api/ws?token={token}"
        async with trio_websocket.open_websocket_url(url) as ws:
            print(json.loads(await ws.get_message())["user_id"])


trio.run(main)
