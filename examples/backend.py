"""A backend that owns the sessions and runs the commands, in the standard library only.

The gateway asks it who a session token is (connect_url) and POSTs it every command
(command_url); here it runs in a thread beside a gateway and one browser-like client.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import trio
import trio_websocket

from trio_gateway import Config, open_gateway

SESSIONS: dict[str, dict[str, object]] = {
    "opaque-session-token": {"user_id": "alice", "commands": ["getTables"]}
}


class Backend(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path == "/connect":
            session = SESSIONS.get(request["token"])
            status, answer = (200, session) if session else (401, {})
        else:  # /commands: {"command", "payload", "user_id", ...}
            status, answer = 200, {"event": "tablesLoaded", "payload": {"tables": ["Orders"]}}
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


async def main() -> None:
    backend = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{backend.server_address[1]}"
    config = Config(
        port=0,
        api_keys=("dev-key",),
        connect_url=f"{base}/connect",
        command_url=f"{base}/commands",
    )
    async with open_gateway(config) as gateway:
        url = f"ws://127.0.0.1:{gateway.port}/api/ws?token=opaque-session-token"
        async with trio_websocket.open_websocket_url(url) as ws:
            print(json.loads(await ws.get_message())["user_id"])
            await ws.send_message(json.dumps({"command": "getTables", "id": "1"}))
            print(await ws.get_message())
    backend.shutdown()


trio.run(main)
