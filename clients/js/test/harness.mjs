// Real gateway and redis-server processes for the client's tests, on 127.0.0.1 only.
//
// The gateway is the checkout's own (`python -m trio_gateway serve`), with the Python named
// by TRIO_GATEWAY_PYTHON or the checkout's .venv. Every process is stopped by the test
// that started it (`after`), so a failing test leaves nothing running.

import { spawn } from "node:child_process";
import { once } from "node:events";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "..", "..", "..");
const PYTHON = process.env.TRIO_GATEWAY_PYTHON ?? path.join(ROOT, ".venv", "bin", "python");
export const API_KEY = "node-test-key";

export async function freePort() {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

async function until(check, what, limit = 15000) {
  const deadline = Date.now() + limit;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25); // polling an external process's readiness, not synchronising a test
  }
}

class Process {
  constructor(child, name) {
    this.child = child;
    this.name = name;
    this.output = "";
    this.exited = once(child, "exit");
    child.stdout.on("data", (chunk) => (this.output += chunk));
    child.stderr.on("data", (chunk) => (this.output += chunk));
  }

  async stop(signal = "SIGTERM") {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill(signal);
      await this.exited;
    }
  }
}

export async function startGateway({ port, args = [] } = {}) {
  port ??= await freePort();
  const child = spawn(
    PYTHON,
    ["-m", "trio_gateway", "serve", "--host", "127.0.0.1", "--port", String(port),
      "--api-key", API_KEY, "--log-format", "json", "--drain-timeout", "2", ...args],
    { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
  );
  const gateway = new Process(child, "gateway");
  gateway.port = port;
  gateway.http = `http://127.0.0.1:${port}`;
  gateway.ws = `ws://127.0.0.1:${port}/api/ws`;
  try {
    await until(async () => {
      if (child.exitCode !== null) throw new Error(`gateway exited:\n${gateway.output}`);
      try {
        return (await fetch(`${gateway.http}/api/ready`)).status === 200;
      } catch {
        return false;
      }
    }, "the gateway");
  } catch (error) {
    await gateway.stop("SIGKILL");
    throw error;
  }
  return gateway;
}

export async function startRedis({ port } = {}) {
  port ??= await freePort();
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const redis = new Process(child, "redis");
  redis.port = port;
  redis.url = `redis://127.0.0.1:${port}/0`;
  await until(async () => redis.output.includes("Ready to accept connections"), "redis-server");
  return redis;
}

export async function publish(gateway, topic, data) {
  const answer = await fetch(`${gateway.http}/api/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ topic, data }),
  });
  if (answer.status !== 202) throw new Error(`publish answered ${answer.status}`);
  return (await answer.json()).offsets[0];
}

/** Resolves with the next value `subscribe(handler)` passes that satisfies `test`. */
export function next(client, event, test = () => true, limit = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${event} in ${limit} ms`));
    }, limit);
    const off = client.on(event, (value) => {
      if (test(value)) {
        clearTimeout(timer);
        off();
        resolve(value);
      }
    });
  });
}

/** Collects every value of `event` into an array. */
export function collect(client, event) {
  const seen = [];
  client.on(event, (value) => seen.push(value));
  return seen;
}

export { until };
