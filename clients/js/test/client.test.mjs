// The client against real gateway processes: what a page sees, end to end.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import http from "node:http";
import { once } from "node:events";
import net from "node:net";
import { after, test } from "node:test";

import { connect, GatewayError } from "../index.js";
import {
  API_KEY, collect, freePort, next, publish, startGateway, startRedis, until,
} from "./harness.mjs";

const running = [];
after(async () => {
  for (const item of running.reverse()) await item.stop();
});

async function gateway(options) {
  const started = await startGateway(options);
  running.push(started);
  return started;
}

function client(url, options) {
  const made = connect(url, options);
  running.push({ stop: () => made.close() });
  return made;
}

/** A WebSocket that keeps every frame the server sent, for assertions on the wire. */
function recording() {
  const frames = [];
  class Recording extends WebSocket {
    constructor(url) {
      super(url);
      this.addEventListener("message", (event) => frames.push(JSON.parse(event.data)));
    }
  }
  return { frames, WebSocket: Recording };
}

const SECRET = "node-test-secret-of-at-least-32-bytes!";

function jwt(claims) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(claims)}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

test("receives what is published, once, with its offset", async () => {
  const gw = await gateway();
  const c = client(gw.ws, { token: API_KEY, subscriptions: ["chat.a"] });
  const messages = collect(c, "message");
  await c.ready();
  assert.equal(c.state, "connected");
  assert.match(c.clientId, /^[0-9A-Z]{26}$/);
  await publish(gw, "chat.a", { n: 1 });
  await publish(gw, "chat.a", { n: 2 });
  await until(() => messages.length >= 2, "two messages");
  assert.deepEqual(messages, [
    { type: "message", topic: "chat.a", data: { n: 1 }, offset: 1 },
    { type: "message", topic: "chat.a", data: { n: 2 }, offset: 2 },
  ]);
  assert.equal(c.positions["chat.a"].offset, 2);
});

test("answers the server's pings without page code", async () => {
  const gw = await gateway({ args: ["--ping-interval", "0.2", "--pong-timeout", "0.2"] });
  const wire = recording();
  const c = client(gw.ws, { token: API_KEY, WebSocket: wire.WebSocket });
  const states = collect(c, "state");
  await c.ready();
  const first = c.clientId;
  // Ten pings span 2 s, five times the 0.4 s after which a silent client is closed 1008.
  await until(() => wire.frames.filter((f) => f.type === "ping").length >= 10, "ten pings");
  assert.equal(c.clientId, first);
  assert.deepEqual(states, ["connected"]);
});

// Gateways A (on a port it can be restarted on) and B, sharing a fresh redis-server.
async function twoGatewaysOnRedis() {
  const redis = await startRedis();
  running.push(redis);
  const port = await freePort();
  const args = ["--redis-url", redis.url];
  return { port, args, a: await gateway({ port, args }), b: await gateway({ args }) };
}

test("survives a gateway restart and resumes with nothing lost or repeated", async () => {
  const { port, args, b, a: first } = await twoGatewaysOnRedis();
  let a = first;
  let tokens = 0;
  const c = client(a.ws, {
    getToken: () => (tokens++, API_KEY),
    subscriptions: ["news"],
    backoffInitial: 100,
    backoffMax: 500,
  });
  const messages = collect(c, "message");
  const gaps = collect(c, "gap");
  await c.ready();
  await publish(b, "news", 1);
  await until(() => messages.length === 1, "the first message");
  const reconnecting = next(c, "state", (s) => s === "reconnecting");
  await a.stop();
  await reconnecting;
  // Published while the client has no connection: history brings them back.
  await publish(b, "news", 2);
  await publish(b, "news", 3);
  a = await gateway({ port, args });
  await next(c, "state", (s) => s === "connected");
  await publish(b, "news", 4);
  await until(() => messages.length >= 4, "four messages");
  assert.deepEqual(messages.map((m) => [m.data, m.offset]), [[1, 1], [2, 2], [3, 3], [4, 4]]);
  assert.deepEqual(gaps, []);
  assert.ok(tokens >= 2, "getToken is asked again for the new connection");
});

test("a Redis restart under a live subscription is a gap, then the new epoch", async () => {
  let redis = await startRedis();
  running.push(redis);
  const g = await gateway({ args: ["--redis-url", redis.url] });
  const c = client(g.ws, { token: API_KEY, subscriptions: ["news"] });
  const messages = collect(c, "message");
  const gaps = collect(c, "gap");
  await c.ready();
  await publish(g, "news", 1);
  await publish(g, "news", 2);
  await until(() => messages.length === 2, "two messages");
  const before = c.positions.news;
  await redis.stop("SIGKILL");
  redis = await startRedis({ port: redis.port });
  running.push(redis);
  await until(async () => (await fetch(`${g.http}/api/ready`)).status === 200, "Redis back");
  await publish(g, "news", 3);
  await until(() => messages.length === 3, "the new epoch's first message");
  // Offset 1 again, in another epoch: reported, then delivered rather than dropped.
  assert.deepEqual(messages.map((m) => [m.data, m.offset]), [[1, 1], [2, 2], [3, 1]]);
  assert.equal(gaps.length, 1);
  assert.equal(gaps[0].reason, "epoch");
  assert.deepEqual(gaps[0].since, before);
  assert.notEqual(gaps[0].position.epoch, before.epoch);
  assert.deepEqual(c.positions.news, { epoch: gaps[0].position.epoch, offset: 1 });
  assert.equal(c.state, "connected");
});

// One connection to the test's own redis-server, kept for the whole test: counting
// connections for `maxclients` must not count short-lived ones of our own (as redis-cli's
// would be), and it must still be able to send commands once no new connection fits.
async function redisControl(redis) {
  const socket = net.connect(redis.port, "127.0.0.1");
  await once(socket, "connect");
  let buffered = Buffer.alloc(0);
  let waiting = null;
  const reply = () => {
    // One RESP reply of the kinds these commands give: +simple, -error, :integer, $bulk.
    const end = buffered.indexOf("\r\n");
    if (end < 0) return undefined;
    const head = buffered.subarray(0, end).toString();
    if (head[0] !== "$") {
      buffered = buffered.subarray(end + 2);
      if (head[0] === "-") throw new Error(`redis: ${head.slice(1)}`);
      return head.slice(1);
    }
    const size = Number(head.slice(1));
    if (buffered.length < end + 2 + size + 2) return undefined;
    const body = buffered.subarray(end + 2, end + 2 + size).toString();
    buffered = buffered.subarray(end + 2 + size + 2);
    return body;
  };
  socket.on("data", (data) => {
    buffered = Buffer.concat([buffered, data]);
    if (waiting === null) return;
    try {
      const value = reply();
      if (value !== undefined) {
        const { resolve } = waiting;
        waiting = null;
        resolve(value);
      }
    } catch (error) {
      const { reject } = waiting;
      waiting = null;
      reject(error);
    }
  });
  return {
    command(...args) {
      const parts = args.map((arg) => `$${Buffer.byteLength(arg)}\r\n${arg}\r\n`);
      const answered = new Promise((resolve, reject) => { waiting = { resolve, reject }; });
      socket.write(`*${args.length}\r\n${parts.join("")}`);
      return answered;
    },
    close() { socket.destroy(); },
  };
}

async function readyStatus(gw) {
  return (await fetch(`${gw.http}/api/ready`)).status;
}

test("messages the gateway's instance missed live (a gap frame) are fetched by a resume", async () => {
  const redis = await startRedis();
  running.push(redis);
  const args = ["--redis-url", redis.url];
  const a = await gateway({ args });
  const b = await gateway({ args });
  const c = client(a.ws, { token: API_KEY, subscriptions: ["news"], backoffInitial: 100 });
  const messages = collect(c, "message");
  const gaps = collect(c, "gap");
  await c.ready();
  await publish(b, "news", 1);
  await until(() => messages.length === 1, "the first message");
  // Cut A's Redis subscriber off, and keep it out (no room for a new connection), while B
  // publishes: A's client cannot get message 2 live.
  const stats = await fetch(`${a.http}/api/stats`, { headers: { authorization: `Bearer ${API_KEY}` } });
  const { instance } = await stats.json();
  const control = await redisControl(redis);
  running.push({ stop: async () => control.close() });
  const clients = (await control.command("CLIENT", "LIST")).trim().split("\n");
  const named = new RegExp(` name=\\S*subscriber:${instance}( |$)`);
  const subscriber = clients.find((line) => named.test(line));
  assert.ok(subscriber, "A's subscriber connection is named in CLIENT LIST");
  // Killing the subscriber takes its liveness probe's connection with it: two fewer, and
  // none may come back while `maxclients` is what was left.
  await control.command("CONFIG", "SET", "maxclients", String(clients.length - 2));
  await control.command("CLIENT", "KILL", "ID", /\bid=(\d+)/.exec(subscriber)[1]);
  await until(async () => (await readyStatus(a)) === 503, "A noticing");
  await publish(b, "news", 2);
  await control.command("CONFIG", "SET", "maxclients", "10000");
  await until(async () => (await readyStatus(a)) === 200, "A back");
  await until(() => messages.length === 2, "message 2, fetched after the gap frame");
  await publish(b, "news", 3);
  await until(() => messages.length === 3, "message 3");
  assert.deepEqual(messages.map((m) => [m.data, m.offset]), [[1, 1], [2, 2], [3, 3]]);
  assert.deepEqual(gaps, []);
});

test("a replay through several keys delivers each event once", async () => {
  const { port, args, b, a: first } = await twoGatewaysOnRedis();
  let a = first;
  const c = client(a.ws, {
    token: API_KEY, subscriptions: ["all", "workspace:W", "session:S"], backoffInitial: 100,
  });
  const events = collect(c, "message");
  await c.ready();
  const post = (n) => fetch(`${b.http}/api/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}` },
    body: JSON.stringify({ workspace_id: "W", session_id: "S", n }),
  });
  await post(1);
  await until(() => events.length === 1, "the first event");
  const reconnecting = next(c, "state", (s) => s === "reconnecting");
  await a.stop();
  await reconnecting;
  await post(2);
  await post(3);
  a = await gateway({ port, args });
  await next(c, "state", (s) => s === "connected");
  await post(4);
  await until(() => events.length >= 4, "four events");
  // Each of the three keys replays 2 and 3: the page sees them once, in order.
  assert.deepEqual(events.map((m) => m.event.n), [1, 2, 3, 4]);
  assert.deepEqual(c.positions, {
    all: { epoch: c.positions.all.epoch, offset: 4 },
    "workspace:W": { epoch: c.positions["workspace:W"].epoch, offset: 4 },
    "session:S": { epoch: c.positions["session:S"].epoch, offset: 4 },
  });
});

test("reports a gap when the server's history is gone, then goes on", async () => {
  const port = await freePort();
  let gw = await gateway({ port });
  const c = client(gw.ws, { token: API_KEY, subscriptions: ["news"], backoffInitial: 100 });
  const messages = collect(c, "message");
  await c.ready();
  await publish(gw, "news", "before");
  await until(() => messages.length === 1, "the first message");
  const epoch = c.positions.news.epoch;
  await gw.stop();
  gw = await gateway({ port }); // the memory broker starts a new epoch
  const gap = await next(c, "gap");
  assert.equal(gap.key, "news");
  assert.equal(gap.reason, "epoch");
  assert.deepEqual(gap.since, { epoch, offset: 1 });
  assert.notEqual(gap.position.epoch, epoch);
  await c.ready();
  await publish(gw, "news", "after");
  await until(() => messages.length === 2, "the next message");
  assert.equal(messages[1].data, "after");
});

test("stops on 4001 and says so", async () => {
  const gw = await gateway();
  const c = client(gw.ws, { token: "wrong", backoffInitial: 50 });
  const closed = await next(c, "close");
  assert.equal(closed.code, 4001);
  assert.equal(c.state, "closed");
  await assert.rejects(c.ready(), (error) => error instanceof GatewayError && error.code === "unauthorized");
  await assert.rejects(c.subscribe("news"), { code: "unauthorized" });
});

test("close() is clean: 1000, and the gateway forgets the connection", async () => {
  const gw = await gateway();
  const c = connect(gw.ws, { token: API_KEY, subscriptions: ["news"] });
  await c.ready();
  const closed = next(c, "close");
  await c.close();
  assert.deepEqual(await closed, { code: 1000, reason: "client closing" });
  assert.equal(c.state, "closed");
  await until(async () => {
    const health = await (await fetch(`${gw.http}/api/health`)).json();
    return health.ws_clients === 0;
  }, "the gateway to see the close");
  await assert.rejects(c.publish("news", 1), { code: "closed" });
});

test("commands resolve with their answer and reject with the error's code", async () => {
  const backend = http.createServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => (body += chunk));
    request.on("end", () => {
      const call = JSON.parse(body);
      if (call.command === "getTables") {
        response.writeHead(200, { "content-type": "application/json" });
        response.end(JSON.stringify({ event: "tablesLoaded", payload: { echo: call.payload } }));
      } else {
        response.writeHead(404, { "content-type": "application/json" });
        response.end(JSON.stringify({ message: `no command ${call.command}` }));
      }
    });
  });
  backend.listen(0, "127.0.0.1");
  await once(backend, "listening");
  running.push({ stop: () => new Promise((resolve) => backend.close(resolve)) });
  const url = `http://127.0.0.1:${backend.address().port}/commands`;
  const gw = await gateway({ args: ["--command-url", url] });
  const c = client(gw.ws, { token: API_KEY });
  // Called before the connection is ready: it goes out once it is.
  const answers = [c.command("getTables", { ns: "USER" }), c.command("getTables", 2)];
  assert.deepEqual(await Promise.all(answers), [
    { event: "tablesLoaded", payload: { echo: { ns: "USER" } } },
    { event: "tablesLoaded", payload: { echo: 2 } },
  ]);
  await assert.rejects(c.command("missing"), (error) => {
    assert.ok(error instanceof GatewayError);
    assert.deepEqual([error.code, error.command, error.message], [
      "unknown_command", "missing", "no command missing",
    ]);
    return true;
  });
  await assert.rejects(c.command("getTables", null, { timeout: 0 }), { code: "timeout" });
});

test("subscriptions the connect hook binds are held without a subscribe", async () => {
  const hook = http.createServer((request, response) => {
    request.resume();
    request.on("end", () => {
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ user_id: "carol", session_id: "S1", subscriptions: ["session:S1"] }));
    });
  });
  hook.listen(0, "127.0.0.1");
  await once(hook, "listening");
  running.push({ stop: () => new Promise((resolve) => hook.close(resolve)) });
  const gw = await gateway({ args: ["--connect-url", `http://127.0.0.1:${hook.address().port}/`] });
  const wire = recording();
  const c = client(gw.ws, { token: "opaque-session-token", WebSocket: wire.WebSocket });
  const messages = collect(c, "message");
  await c.ready();
  assert.equal(c.userId, "carol");
  assert.deepEqual(c.subscriptions, ["session:S1"]);
  await fetch(`${gw.http}/api/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}` },
    body: JSON.stringify({ workspace_id: "W", session_id: "S1", kind: "x" }),
  });
  await until(() => messages.length === 1, "the session's event");
  assert.deepEqual(messages, [
    { type: "event", event: { workspace_id: "W", session_id: "S1", kind: "x" } },
  ]);
  assert.ok(!wire.frames.some((f) => f.type === "subscribed" || f.type === "error"));
});

test("asks getToken for a fresh token before expires_at and sends refresh", async () => {
  const gw = await gateway({ args: ["--jwt-secret", SECRET] });
  const wire = recording();
  const issued = [];
  const getToken = () => {
    const exp = Math.floor(Date.now() / 1000) + 3;
    issued.push(exp);
    return jwt({ sub: "alice", exp, sub_topics: ["news"] });
  };
  const c = client(gw.ws, { getToken, refreshBefore: 2, WebSocket: wire.WebSocket });
  await c.ready();
  assert.equal(c.userId, "alice");
  await until(() => wire.frames.some((f) => f.type === "refreshed"), "a refresh", 5000);
  const refreshed = wire.frames.find((f) => f.type === "refreshed");
  assert.equal(refreshed.expires_at, issued[1]);
  assert.equal(c.state, "connected");
});

test("presence and typing helpers", async () => {
  const gw = await gateway({ args: ["--jwt-secret", SECRET, "--presence-topic", "room.*"] });
  const token = (sub) => jwt({ sub, exp: Math.floor(Date.now() / 1000) + 600, sub_topics: ["room.**"] });
  const bob = client(gw.ws, { token: token("bob"), subscriptions: ["room.1"] });
  const alice = client(gw.ws, { token: token("alice") });
  const seen = collect(bob, "message");
  await Promise.all([bob.ready(), alice.ready()]);
  // Bob's join reaches the presence store just after his ack: ask until it shows.
  let state;
  await until(async () => (state = await alice.presence("room.1")).members.length > 0, "bob");
  assert.equal(state.type, "presence.state");
  assert.deepEqual(state.members.map((m) => m.user_id), ["bob"]);
  await alice.typing("room.1");
  await until(() => seen.some((f) => f.type === "typing"), "bob to see alice typing");
  assert.deepEqual(seen.find((f) => f.type === "typing"), {
    type: "typing", topic: "room.1", user_id: "alice", state: "start",
  });
  await bob.setPresence("idle");
  await assert.rejects(alice.typing("other.1"), { code: "forbidden" });
  await assert.rejects(alice.typing("room.1", "sideways"), GatewayError);
});
