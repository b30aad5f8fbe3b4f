// trio_gateway's client for web pages and Node: one ES module, no dependencies, no build.
//
// Owns one logical connection to the gateway: identify, keepalive (answers the server's
// pings and notices silence), reconnecting with full-jitter exponential backoff, token
// refresh before expiry, restoring every subscription from its last offset with `since`,
// dropping messages already delivered, and matching replies to requests. It mirrors the
// Python library (trio_gateway.client); docs/CLIENTS.md sets the two side by side.
//
// Replies: the server answers requests one by one in arrival order and its errors carry no
// request id, so every request but a command waits in one first-in-first-out line, and the
// head of the line takes the next reply of its kind or the next error. `typing` has no
// reply when it succeeds, so it is followed by a ping whose pong closes its turn. Commands
// carry an id and are matched by it.

const PONG = JSON.stringify({ type: "pong" });
const PING = JSON.stringify({ type: "ping" });
// Frames that carry a key's state rather than its stream: never deduplicated or counted.
const SNAPSHOTS = new Set(["session.state"]);
// Offsets held above a key's watermark before a gap that never fills is given up.
const MAX_AHEAD = 10000;
// Milliseconds close() waits for the server's answer to our close frame.
const CLOSE_WAIT = 2000;

const DEFAULTS = {
  reconnect: true,
  backoffInitial: 500,
  backoffMax: 30000,
  connectTimeout: 10000,
  heartbeatGrace: 10000,
  commandTimeout: 15000,
  refreshBefore: 30,
};

/** A request the gateway refused, or one that could not complete (`code` says which). */
export class GatewayError extends Error {
  constructor(message, code = null, command = null) {
    super(message);
    this.name = "GatewayError";
    this.code = code;
    this.command = command;
  }
}

/** Connects at once; the client reconnects by itself until `close()` or a 4001. */
export function connect(url, options = {}) {
  return new GatewayClient(url, options);
}

// --- keys and positions (pure) -------------------------------------------------------------

function isPattern(key) {
  return !key.includes(":") && key.split(".").some((s) => s === "*" || s === "**");
}

function fieldsOf(key) {
  if (typeof key !== "string" || key === "") {
    throw new TypeError(`expected "all", "workspace:<id>", "session:<id>" or a topic, got ${key}`);
  }
  if (key === "all") return { scope: "all" };
  const colon = key.indexOf(":");
  if (colon < 0) return { topic: key };
  const kind = key.slice(0, colon);
  const value = key.slice(colon + 1);
  if (value !== "" && (kind === "workspace" || kind === "session")) {
    return { [`${kind}_id`]: value };
  }
  throw new TypeError(`expected "all", "workspace:<id>", "session:<id>" or a topic, got ${key}`);
}

function isOffset(value) {
  return Number.isInteger(value) && value >= 0;
}

function checkedPosition(value, what) {
  if (value && typeof value.epoch === "string" && isOffset(value.offset)) {
    return { epoch: value.epoch, offset: value.offset };
  }
  throw new TypeError(`${what} must be {epoch: string, offset: integer >= 0}`);
}

function ackPosition(ack) {
  return typeof ack.epoch === "string" && isOffset(ack.offset)
    ? { epoch: ack.epoch, offset: ack.offset }
    : null;
}

/** The offsets a message carries, by key: a topic message's `offset`, the others' `offsets`. */
function offsetsOf(message) {
  const found = new Map();
  if (SNAPSHOTS.has(message.type)) return found;
  const offsets = message.offsets;
  if (offsets && typeof offsets === "object" && !Array.isArray(offsets)) {
    for (const [key, offset] of Object.entries(offsets)) {
      if (isOffset(offset)) found.set(key, offset);
    }
  }
  if (typeof message.topic === "string" && isOffset(message.offset)) {
    found.set(message.topic, message.offset);
  }
  return found;
}

/** One key's delivered offsets within one epoch: everything up to `offset` is accounted
 * for (delivered here if above `floor`, else older than the subscription); `ahead` holds
 * offsets delivered out of order above it. */
class Track {
  constructor(epoch, offset) {
    this.epoch = epoch;
    this.offset = offset;
    this.floor = offset;
    this.ahead = new Set();
  }

  seen(offset) {
    return offset <= this.offset || this.ahead.has(offset);
  }

  delivered(offset) {
    return (this.floor < offset && offset <= this.offset) || this.ahead.has(offset);
  }

  record(offset) {
    if (offset === this.offset + 1) {
      this.offset = offset;
      this.absorb();
    } else if (offset > this.offset) {
      this.ahead.add(offset);
      if (this.ahead.size > MAX_AHEAD) this.skipTo(Math.min(...this.ahead) - 1);
    }
  }

  skipTo(offset) {
    if (offset > this.offset) {
      // Below the new floor nothing counts as delivered: a repeat might get through, but
      // nothing is claimed that was not delivered.
      this.offset = this.floor = offset;
      for (const seen of this.ahead) if (seen <= offset) this.ahead.delete(seen);
      this.absorb();
    }
  }

  absorb() {
    while (this.ahead.has(this.offset + 1)) {
      this.offset += 1;
      this.ahead.delete(this.offset);
    }
  }
}

function fullJitter(failures, initial, maximum) {
  return Math.random() * Math.min(maximum, initial * 2 ** Math.min(failures, 64));
}

// --- the client ----------------------------------------------------------------------------

export class GatewayClient {
  #url;
  #options;
  #WebSocket;
  #ws = null;
  #state = "connecting";
  #handlers = new Map();
  // Held key -> true, in subscription order; changed as acks arrive.
  #held = new Map();
  // Keys the connect hook bound to the current connection (`ready.subscriptions`).
  #bound = new Set();
  #tracks = new Map();
  // Requests waiting for a connection, and those sent and waiting for their reply.
  #outbox = [];
  #line = [];
  #commands = new Map();
  #nextId = 1;
  #failures = 0;
  #connected = false;
  // `ready` arrived on the current socket: requests may go out (behind the restores).
  #live = false;
  #stopped = false;
  #closed = null;
  #timers = { connect: null, silence: null, refresh: null, retry: null };
  #silenceLimit = Infinity;
  #expiresAt = null;
  #clientId = null;
  #userId = null;
  #waiters = [];
  #closeWaiters = [];

  constructor(url, options = {}) {
    this.#url = url;
    this.#options = { ...DEFAULTS, ...options };
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError("no WebSocket here: pass options.WebSocket");
    }
    const { backoffInitial, backoffMax } = this.#options;
    if (!(backoffInitial > 0 && backoffInitial <= backoffMax)) {
      throw new RangeError("need 0 < backoffInitial <= backoffMax");
    }
    for (const key of options.subscriptions ?? []) {
      fieldsOf(key);
      this.#held.set(key, true);
    }
    for (const [key, position] of Object.entries(options.resume ?? {})) {
      if (isPattern(key)) throw new TypeError(`cannot resume ${key}: a pattern is live only`);
      const { epoch, offset } = checkedPosition(position, `resume[${key}]`);
      this.#tracks.set(key, new Track(epoch, offset));
      this.#held.set(key, true);
    }
    for (const [name, event] of [
      ["onMessage", "message"],
      ["onGap", "gap"],
      ["onState", "state"],
      ["onReady", "ready"],
      ["onClose", "close"],
    ]) {
      if (typeof options[name] === "function") this.on(event, options[name]);
    }
    this.#open();
  }

  get state() {
    return this.#state;
  }

  get clientId() {
    return this.#connected ? this.#clientId : null;
  }

  get userId() {
    return this.#userId;
  }

  get subscriptions() {
    return [...new Set([...this.#held.keys(), ...this.#bound])];
  }

  get positions() {
    const positions = {};
    for (const [key, track] of this.#tracks) {
      if (this.#held.has(key)) positions[key] = { epoch: track.epoch, offset: track.offset };
    }
    return positions;
  }

  on(event, handler) {
    if (!this.#handlers.has(event)) this.#handlers.set(event, new Set());
    this.#handlers.get(event).add(handler);
    return () => this.#handlers.get(event).delete(handler);
  }

  ready() {
    if (this.#connected) return Promise.resolve();
    if (this.#stopped) return Promise.reject(this.#stoppedError());
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  async subscribe(key, { since } = {}) {
    const fields = fieldsOf(key);
    const frame = { type: "subscribe", ...fields };
    if (since !== undefined) {
      if (isPattern(key)) throw new TypeError(`since is not supported for ${key}: live only`);
      since = checkedPosition(since, "since");
      frame.since = { offset: since.offset, epoch: since.epoch };
      // Count what arrives between the request and its ack from `since`.
      if (!this.#tracks.has(key)) this.#tracks.set(key, new Track(since.epoch, since.offset));
    } else if (!isPattern(key)) {
      frame.recover = true;
    }
    const ack = await this.#request(frame, "subscribed", { retry: true, subscribe: key, since });
    return {
      key: ack.subscription,
      position: ackPosition(ack),
      recovered: typeof ack.recovered === "boolean" ? ack.recovered : null,
    };
  }

  async unsubscribe(key) {
    const frame = { type: "unsubscribe", ...(key === undefined ? {} : fieldsOf(key)) };
    await this.#request(frame, "unsubscribed", { retry: true, unsubscribe: key ?? null });
  }

  async publish(topic, data) {
    const ack = await this.#request({ type: "publish", topic, data }, "published", {});
    return { topic: ack.topic, offset: ack.offset };
  }

  command(name, payload = null, { timeout } = {}) {
    const id = `c${this.#nextId++}`;
    return new Promise((resolve, reject) => {
      if (this.#stopped) {
        reject(this.#stoppedError());
        return;
      }
      const call = { frame: { command: name, payload, id }, resolve, reject, sent: false };
      call.timer = setTimeout(() => {
        this.#commands.delete(id);
        reject(new GatewayError(`no answer to ${name}`, "timeout", name));
      }, timeout ?? this.#options.commandTimeout);
      this.#commands.set(id, call);
      if (this.#live) this.#sendCommand(call);
    });
  }

  async setPresence(status) {
    await this.#request({ type: "presence", status }, "presence.set", {});
  }

  presence(topic) {
    return this.#request({ type: "presence.get", topic }, "presence.state", { topic });
  }

  async typing(topic, state = "start") {
    await this.#request({ type: "typing", topic, state }, "pong", { then: PING });
  }

  async refresh(token) {
    const fresh = token ?? (await this.#token());
    const answer = await this.#request({ type: "refresh", token: fresh }, "refreshed", {});
    this.#expiresAt = isOffset(answer.expires_at) ? answer.expires_at : null;
    this.#scheduleRefresh();
    return { expires_at: this.#expiresAt };
  }

  close() {
    if (this.#stopped && this.#ws === null) return Promise.resolve();
    const done = new Promise((resolve) => this.#closeWaiters.push(resolve));
    const ws = this.#ws;
    this.#stop({ code: 1000, reason: "client closing" });
    if (ws !== null && ws.readyState <= 1) {
      ws.onmessage = null;
      const force = setTimeout(() => this.#released(ws), CLOSE_WAIT);
      ws.onclose = () => {
        clearTimeout(force);
        this.#released(ws);
      };
      ws.close(1000, "client closing");
    } else {
      this.#released(ws);
    }
    return done;
  }

  // --- connection --------------------------------------------------------------------------

  #emit(event, value) {
    for (const handler of this.#handlers.get(event) ?? []) {
      try {
        handler(value);
      } catch (error) {
        // A page's handler must not break the connection's bookkeeping.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  #setState(state) {
    if (this.#state !== state) {
      this.#state = state;
      this.#emit("state", state);
    }
  }

  async #token() {
    const { getToken, token } = this.#options;
    return typeof getToken === "function" ? await getToken() : token;
  }

  async #open() {
    let token;
    try {
      token = await this.#token();
    } catch {
      this.#retry({ code: null, reason: "getToken failed" });
      return;
    }
    if (this.#stopped) return;
    let ws;
    try {
      ws = new this.#WebSocket(this.#url);
    } catch {
      this.#retry({ code: null, reason: "cannot open the WebSocket" });
      return;
    }
    this.#ws = ws;
    this.#connected = false;
    this.#timers.connect = setTimeout(
      () => this.#lost(ws, { code: null, reason: "no ready from the server in time" }),
      this.#options.connectTimeout,
    );
    ws.onmessage = (event) => this.#frame(ws, event.data, token);
    ws.onclose = (event) => this.#lost(ws, { code: event.code, reason: event.reason });
    // A failed connection closes with 1006 after this event in browsers; Node 20's
    // WebSocket fires only this one when the connection is refused.
    ws.onerror = () => this.#lost(ws, { code: 1006, reason: "the connection failed" });
  }

  #send(frame) {
    this.#ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  #frame(ws, data, token) {
    if (ws !== this.#ws) return;
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message === null || typeof message !== "object" || Array.isArray(message)) return;
    this.#heard(ws);
    const type = message.type;
    if (type === "ping") {
      this.#send(PONG);
    } else if (type === "hello") {
      if (typeof token === "string" && token !== "") {
        this.#send({ type: "identify", token });
      } else {
        this.#stop({ code: 4001, reason: "the gateway requires a token" });
        ws.close(1000, "no token");
      }
    } else if (type === "ready") {
      this.#ready(message);
    } else if (type === undefined && typeof message.event === "string") {
      this.#answer(message);
    } else if (this.#line.length > 0 && this.#isReply(this.#line[0], message)) {
      const head = this.#line[0];
      if (head.intent.then && type === "error") {
        // Its turn ends with the pong of the ping behind it; the error is its answer.
        head.failure = message;
      } else {
        this.#settle(this.#line.shift(), head.failure ?? message);
      }
    } else if (type === "epoch") {
      this.#newEpoch(message);
    } else if (type === "gap" && isOffset(message.offset) && this.#options.reconnect) {
      // The gateway's instance missed messages live (its Redis subscriber was cut off); they
      // are in history, and a new connection resumes every key from its offset, fetching them.
      this.#lost(ws, { code: null, reason: "the gateway reported messages it could not deliver live" });
    } else if (type === "pong" || type === "subscribed" || type === "unsubscribed") {
      // An answer to nothing we asked: ignore it.
    } else {
      this.#deliver(message);
    }
  }

  #heard(ws) {
    clearTimeout(this.#timers.silence);
    if (Number.isFinite(this.#silenceLimit)) {
      this.#timers.silence = setTimeout(
        () => this.#lost(ws, { code: null, reason: "the server went silent" }),
        this.#silenceLimit,
      );
    }
  }

  #ready(message) {
    clearTimeout(this.#timers.connect);
    this.#clientId = typeof message.client_id === "string" ? message.client_id : null;
    this.#userId = typeof message.user_id === "string" ? message.user_id : null;
    this.#expiresAt = isOffset(message.expires_at) ? message.expires_at : null;
    const interval = message.heartbeat_interval;
    this.#silenceLimit =
      typeof interval === "number" && interval > 0
        ? interval + this.#options.heartbeatGrace
        : Infinity;
    this.#heard(this.#ws);
    this.#live = true;
    // The connect hook binds subscriptions of its own, live before `ready` and again on every
    // connection: they are not restored (which its grants might not even allow).
    this.#bound = new Set(
      (Array.isArray(message.subscriptions) ? message.subscriptions : []).filter(
        (key) => typeof key === "string",
      ),
    );
    this.#emit("ready", message);
    const ws = this.#ws;
    const restores = [...this.#held.keys()].map((key) => this.#restore(key));
    // Requests made meanwhile go out behind the restores, in the order they were made.
    for (const request of this.#outbox.splice(0)) this.#transmit(request);
    for (const call of this.#commands.values()) this.#sendCommand(call);
    Promise.allSettled(restores).then((results) => {
      if (ws !== this.#ws || this.#stopped) return;
      if (results.some((result) => result.status === "rejected" && result.reason.lost)) return;
      this.#connected = true;
      this.#failures = 0;
      this.#setState("connected");
      for (const waiter of this.#waiters.splice(0)) waiter.resolve();
      this.#scheduleRefresh();
    });
  }

  #restore(key) {
    const frame = { type: "subscribe", ...fieldsOf(key) };
    const track = this.#tracks.get(key);
    let since;
    if (isPattern(key)) {
      // Live only: nothing to resume.
    } else if (track !== undefined) {
      since = { epoch: track.epoch, offset: track.offset };
      frame.since = { offset: since.offset, epoch: since.epoch };
    } else {
      frame.recover = true;
    }
    const request = this.#entry(frame, "subscribed", { subscribe: key, since, restore: true });
    this.#transmit(request);
    return request.promise.catch((error) => {
      if (!error.lost) {
        // The server refused to restore it (e.g. the grants changed): let the page know.
        this.#held.delete(key);
        this.#tracks.delete(key);
        this.#deliver({ type: "error", subscription: key, message: error.message, code: error.code });
      }
      throw error;
    });
  }

  #lost(ws, closed) {
    if (ws !== this.#ws) return;
    ws.onmessage = ws.onclose = ws.onerror = null;
    if (ws.readyState <= 1) {
      // Dead or silent: drop it now rather than wait for a close handshake.
      ws.onclose = () => {};
      try {
        ws.close(1000, "going away");
      } catch {
        // Already closing.
      }
    }
    this.#ws = null;
    this.#connected = false;
    this.#live = false;
    clearTimeout(this.#timers.connect);
    clearTimeout(this.#timers.silence);
    clearTimeout(this.#timers.refresh);
    // Subscribes and unsubscribes are safe to ask again; anything else may have taken effect.
    const retried = [];
    for (const request of this.#line.splice(0)) {
      if (request.intent.retry) retried.push(request);
      else if (request.intent.restore) request.reject(Object.assign(new Error("lost"), { lost: true }));
      else request.reject(new GatewayError("the connection dropped", "disconnected"));
    }
    this.#outbox.unshift(...retried);
    for (const [id, call] of this.#commands) {
      if (call.sent) {
        clearTimeout(call.timer);
        this.#commands.delete(id);
        call.reject(new GatewayError("the connection dropped", "disconnected", call.frame.command));
      }
    }
    if (this.#stopped) {
      this.#released(null);
      return;
    }
    if (closed.code === 4001 || (closed.code === 1000 && closed.reason === "Session deleted")) {
      this.#stop(closed);
    } else if (!this.#options.reconnect) {
      this.#stop(closed);
    } else {
      this.#retry(closed);
    }
  }

  #retry(closed) {
    if (this.#stopped) return;
    if (!this.#options.reconnect) {
      this.#stop(closed);
      return;
    }
    this.#setState("reconnecting");
    const { backoffInitial, backoffMax } = this.#options;
    const delay = fullJitter(this.#failures++, backoffInitial, backoffMax);
    this.#timers.retry = setTimeout(() => this.#open(), delay);
  }

  #stop(closed) {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#closed = closed;
    for (const timer of Object.values(this.#timers)) clearTimeout(timer);
    const error = this.#stoppedError();
    for (const request of [...this.#line.splice(0), ...this.#outbox.splice(0)]) {
      request.reject(error);
    }
    for (const [id, call] of this.#commands) {
      clearTimeout(call.timer);
      this.#commands.delete(id);
      call.reject(error);
    }
    for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
    this.#connected = false;
    this.#live = false;
    this.#setState("closed");
    this.#emit("close", closed);
  }

  #released(ws) {
    if (ws !== null && ws === this.#ws) this.#ws = null;
    for (const resolve of this.#closeWaiters.splice(0)) resolve();
  }

  #stoppedError() {
    const closed = this.#closed ?? { code: null, reason: "closed" };
    const code = closed.code === 4001 ? "unauthorized" : "closed";
    return new GatewayError(`the client stopped (${closed.code ?? "-"} ${closed.reason})`, code);
  }

  // --- requests and replies ------------------------------------------------------------------

  #entry(frame, expect, intent) {
    const request = { frame, expect, intent };
    request.promise = new Promise((resolve, reject) => {
      request.resolve = resolve;
      request.reject = reject;
    });
    return request;
  }

  #request(frame, expect, intent) {
    if (this.#stopped) return Promise.reject(this.#stoppedError());
    const request = this.#entry(frame, expect, intent);
    if (this.#live) this.#transmit(request);
    else this.#outbox.push(request);
    return request.promise;
  }

  #transmit(request) {
    this.#line.push(request);
    this.#send(request.frame);
    if (request.intent.then) this.#send(request.intent.then);
  }

  #isReply(request, message) {
    if (message.type === "error") return true;
    if (message.type !== request.expect) return false;
    return request.intent.topic === undefined || message.topic === request.intent.topic;
  }

  #settle(request, message) {
    if (message.type === "error") {
      request.reject(new GatewayError(String(message.message), message.code ?? null));
      return;
    }
    const { subscribe, unsubscribe, since } = request.intent;
    if (subscribe !== undefined) {
      const key = typeof message.subscription === "string" ? message.subscription : subscribe;
      this.#acknowledged(key, since, message);
      this.#held.set(key, true);
    } else if (unsubscribe !== undefined) {
      if (unsubscribe === null) {
        this.#bound.clear();
        this.#held.clear();
        this.#tracks.clear();
      } else {
        this.#bound.delete(unsubscribe);
        this.#held.delete(unsubscribe);
        this.#tracks.delete(unsubscribe);
      }
    }
    request.resolve(message);
  }

  /** Account a subscribe ack (`since`: what the subscribe carried), before the replay
   * right behind it is read. */
  #acknowledged(key, since, ack) {
    const position = ackPosition(ack);
    if (since !== undefined && ack.recovered === false) {
      const reason = position === null ? "unavailable" : position.epoch !== since.epoch ? "epoch" : "history";
      this.#emit("gap", { key, since, position, reason });
    }
    if (position === null) return; // a pattern, or no history to go on: keep what we had
    let track = this.#tracks.get(key);
    if (track !== undefined && track.epoch !== position.epoch) track = undefined;
    if (since !== undefined && ack.recovered === true) {
      if (track === undefined) this.#tracks.set(key, new Track(position.epoch, since.offset));
      else track.skipTo(since.offset);
    } else if (since !== undefined || track === undefined) {
      this.#tracks.set(key, new Track(position.epoch, position.offset));
    }
  }

  /** The server says a held key's history started over (Redis flushed or restarted): what
   * was published before the new epoch's messages cannot be vouched for, so it is a gap, and
   * counting starts again from the new position. */
  #newEpoch(message) {
    const key = message.subscription;
    const position = ackPosition(message);
    const track = typeof key === "string" ? this.#tracks.get(key) : undefined;
    if (position === null || track === undefined) return;
    if (track.epoch === position.epoch && track.offset === position.offset) return;
    const since = { epoch: track.epoch, offset: track.offset };
    this.#tracks.set(key, new Track(position.epoch, position.offset));
    this.#emit("gap", { key, since, position, reason: "epoch" });
  }

  #deliver(message) {
    const offsets = offsetsOf(message);
    const tracked = [];
    for (const [key, offset] of offsets) {
      const track = this.#tracks.get(key);
      if (track !== undefined) tracked.push([track, offset]);
    }
    const duplicate =
      tracked.length > 0 &&
      (tracked.some(([track, offset]) => track.delivered(offset)) ||
        tracked.every(([track, offset]) => track.seen(offset)));
    for (const [track, offset] of tracked) track.record(offset);
    if (!duplicate) this.#emit("message", message);
  }

  #sendCommand(call) {
    if (!call.sent && this.#live) {
      call.sent = true;
      this.#send(call.frame);
    }
  }

  #answer(message) {
    const call = this.#commands.get(message.id);
    if (call === undefined) return;
    this.#commands.delete(message.id);
    clearTimeout(call.timer);
    if (message.event === "error") {
      const payload = message.payload ?? {};
      call.reject(new GatewayError(String(payload.message), payload.code ?? null, call.frame.command));
    } else {
      call.resolve({ event: message.event, payload: message.payload });
    }
  }

  #scheduleRefresh() {
    clearTimeout(this.#timers.refresh);
    if (this.#expiresAt === null || typeof this.#options.getToken !== "function") return;
    const left = this.#expiresAt * 1000 - Date.now();
    // Ask refreshBefore seconds ahead, or halfway when less than that is left.
    const wait = Math.max(0, Math.min(left - this.#options.refreshBefore * 1000, left / 2));
    this.#timers.refresh = setTimeout(() => {
      this.refresh().catch((error) => {
        // A dropped connection refreshes by reconnecting: getToken() is asked then anyway.
        if (error.code === "disconnected" || error.code === "closed") return;
        this.#deliver({ type: "error", message: `refresh failed: ${error.message}`, code: error.code });
      });
    }, wait);
  }
}
