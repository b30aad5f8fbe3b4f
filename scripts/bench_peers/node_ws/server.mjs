// Baseline peer for scripts/bench.py: the same protocol subset on Node's `ws`.
//
// Owns nothing but itself. Written the way an experienced `ws` user would: one http.Server
// with `/api/ws` (upgraded by a `noServer` WebSocketServer) and `POST /api/events` on one
// port; each event is serialised once into a Buffer and sent to every matching client with
// `ws.send()` (which queues in the socket and never waits); keepalive is the usual ws ping
// every --heartbeat seconds, terminating a client that did not pong since the last one. The
// listen backlog is 4096, like the gateway's, so the connect storm measures the server.
//
// Protocol subset (docs/PROTOCOL.md): `/api/ws?token=K` -> `ready`; `subscribe` (scope all /
// workspace_id / session_id) -> `subscribed`; `ping` -> `pong`; `POST /api/events` (one event
// or an array, Bearer auth) -> 202 `{"accepted": n}`.
import http from "node:http";
import { parseArgs } from "node:util";
import { WebSocketServer } from "ws";

const { values } = parseArgs({
  options: { "api-key": { type: "string" }, heartbeat: { type: "string", default: "30" } },
});
const apiKey = values["api-key"];
if (!apiKey) {
  process.stderr.write("--api-key is required\n");
  process.exit(2);
}
const heartbeatMs = Number(values.heartbeat) * 1000;

// client -> its subscription keys
const clients = new Map();
let nextId = 1;

function subscriptionKey(message) {
  if (message.scope === "all") return "all";
  for (const [field, prefix] of [["workspace_id", "workspace:"], ["session_id", "session:"]]) {
    const value = message[field];
    if (typeof value === "string" && value) return prefix + value;
  }
  return null;
}

const wss = new WebSocketServer({ noServer: true, maxPayload: 65536, perMessageDeflate: false });

wss.on("connection", (ws) => {
  const subscriptions = new Set();
  clients.set(ws, subscriptions);
  ws.alive = true;
  ws.on("pong", () => { ws.alive = true; });
  ws.on("close", () => clients.delete(ws));
  ws.on("error", () => clients.delete(ws));
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message === null || typeof message !== "object") return;
    if (message.type === "subscribe") {
      const key = subscriptionKey(message);
      if (key) {
        subscriptions.add(key);
        ws.send(JSON.stringify({ type: "subscribed", subscription: key }));
      }
    } else if (message.type === "ping") {
      ws.send('{"type":"pong"}');
    }
  });
  ws.send(JSON.stringify({ type: "ready", client_id: String(nextId++), heartbeat_interval: 30000 }));
});

setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.alive) {
      ws.terminate();
      continue;
    }
    ws.alive = false;
    ws.ping();
  }
}, heartbeatMs).unref();

function answer(response, status, body) {
  const text = JSON.stringify(body);
  response.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  response.end(text);
}

function publish(events) {
  for (const event of events) {
    const keys = ["all", `workspace:${event.workspace_id}`];
    if (event.session_id) keys.push(`session:${event.session_id}`);
    const frame = Buffer.from(JSON.stringify({ type: "event", event }));
    for (const [ws, subscriptions] of clients) {
      if (ws.readyState === ws.OPEN && keys.some((key) => subscriptions.has(key))) {
        ws.send(frame, { binary: false });
      }
    }
  }
}

const server = http.createServer((request, response) => {
  if (request.method !== "POST" || request.url !== "/api/events") return answer(response, 404, { error: "Not found" });
  if (request.headers.authorization !== `Bearer ${apiKey}`) return answer(response, 401, { error: "Unauthorized" });
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks));
    } catch {
      return answer(response, 400, { error: "Invalid JSON" });
    }
    const events = Array.isArray(body) ? body : [body];
    if (!events.every((e) => e && typeof e === "object" && typeof e.workspace_id === "string")) {
      return answer(response, 400, { error: "every event needs a workspace_id" });
    }
    publish(events);
    answer(response, 202, { accepted: events.length });
  });
});

server.on("upgrade", (request, socket, head) => {
  const url = new URL(request.url, "http://localhost");
  if (url.pathname !== "/api/ws" || url.searchParams.get("token") !== apiKey) {
    socket.end("HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    return;
  }
  wss.handleUpgrade(request, socket, head, (ws) => wss.emit("connection", ws, request));
});

server.listen({ host: "127.0.0.1", port: 0, backlog: 4096 }, () => {
  const { port } = server.address();
  process.stderr.write(
    `node-ws-peer listening on ws://127.0.0.1:${port}/api/ws (HTTP API http://127.0.0.1:${port}/api/)\n`,
  );
});

for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
