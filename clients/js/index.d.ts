// Types of the trio_gateway browser and Node client (index.js). See docs/CLIENTS.md.

/** Where a client stands on one subscription key: the log's epoch and the last offset. */
export interface Position {
  epoch: string;
  offset: number;
}

/** A server frame, exactly as sent (`type` first; command answers have `event` instead). */
export type Frame = { [field: string]: unknown };

/** The server's answer to a subscribe. */
export interface Subscribed {
  key: string;
  /** The key's position when the server answered; null for a pattern (live only). */
  position: Position | null;
  /** Only for a resume: true when everything missed was replayed after the ack. */
  recovered: boolean | null;
}

/** A subscription whose missed messages could not be replayed: refetch its state. Also
 * reported while connected when the server's history of the key started over (Redis
 * flushed or restarted; reason "epoch"), before the new epoch's messages. */
export interface Gap {
  key: string;
  /** Where the client was. */
  since: Position;
  /** The new starting point. */
  position: Position | null;
  /** "history" (older than the history kept), "epoch" (the server's history started over,
   * found on a resume or announced while connected), "unavailable" (the server could not
   * reach its history: the broker is down). */
  reason: "history" | "epoch" | "unavailable";
}

/** Why the client stopped for good (4001, or `reconnect: false`). */
export interface Closed {
  code: number | null;
  reason: string;
}

export type State = "connecting" | "connected" | "reconnecting" | "closed";

export interface ConnectOptions {
  /** An API key, a JWT or a token the backend's connect hook judges. Sent in `identify`, never in the URL. */
  token?: string;
  /** Called for every connection and before a JWT's `expires_at` (then sent as `refresh`). */
  getToken?: () => string | Promise<string>;
  /** Keys to hold: "all", "workspace:<id>", "session:<id>", a topic or a pattern ("chat.*"). */
  subscriptions?: string[];
  /** key -> position to resume from on connect (e.g. saved `client.positions`). */
  resume?: Record<string, Position>;
  /** Every application frame, once: messages, events, updates, session.state, presence,
   * typing, user.message, session.expired, and errors the server sent unprompted. */
  onMessage?: (message: Frame) => void;
  onGap?: (gap: Gap) => void;
  onState?: (state: State) => void;
  onReady?: (ready: Frame) => void;
  onClose?: (closed: Closed) => void;
  /** false: stop at the first disconnect instead of reconnecting. Default true. */
  reconnect?: boolean;
  /** Milliseconds; the delay before retry n is uniform in [0, min(max, initial * 2**n)]. */
  backoffInitial?: number; // 500
  backoffMax?: number; // 30000
  /** Milliseconds for the socket, the greeting and `ready`. Default 10000. */
  connectTimeout?: number;
  /** Milliseconds past the server's heartbeat interval without a frame: the connection is dead. Default 10000. */
  heartbeatGrace?: number;
  /** Milliseconds a command may take before its promise rejects with code "timeout". Default
   * 15000, past the server's own `command_timeout` (10 s), which answers "timeout" first. */
  commandTimeout?: number;
  /** Seconds before a token's `expires_at` at which `getToken()` is asked for a fresh one. Default 30. */
  refreshBefore?: number;
  /** A WebSocket constructor, where there is no global one. */
  WebSocket?: unknown;
}

/** A failed request: `code` is the server's (`forbidden`, `timeout`, `unknown_command`, ...),
 * or the client's own: "disconnected" (the connection dropped while it was under way; only
 * subscribes and unsubscribes are asked again), "closed", "unauthorized" (the client stopped). */
export declare class GatewayError extends Error {
  code: string | null;
  command: string | null;
}

export declare class GatewayClient {
  readonly state: State;
  /** The server's id for the current connection; null between connections. */
  readonly clientId: string | null;
  readonly userId: string | null;
  /** Held keys. */
  readonly subscriptions: string[];
  /** Where each held key (but patterns) stands: save it to resume in a later page load. */
  readonly positions: Record<string, Position>;
  /** Resolves once connected with every subscription restored; rejects if the client stops first. */
  ready(): Promise<void>;
  subscribe(key: string, options?: { since?: Position }): Promise<Subscribed>;
  unsubscribe(key?: string): Promise<void>;
  publish(topic: string, data: unknown): Promise<{ topic: string; offset: number }>;
  /** Resolves with the answer `{event, payload}` matched by id; rejects with a GatewayError. */
  command(name: string, payload?: unknown, options?: { timeout?: number }): Promise<{ event: string; payload: unknown }>;
  setPresence(status: "online" | "idle" | "dnd" | "invisible"): Promise<void>;
  presence(topic: string): Promise<Frame>;
  typing(topic: string, state?: "start" | "stop"): Promise<void>;
  /** Sends `refresh` with a new token now (getToken() when none is given). */
  refresh(token?: string): Promise<{ expires_at: number | null }>;
  on(event: "message" | "ready", handler: (frame: Frame) => void): () => void;
  on(event: "gap", handler: (gap: Gap) => void): () => void;
  on(event: "state", handler: (state: State) => void): () => void;
  on(event: "close", handler: (closed: Closed) => void): () => void;
  /** Closes with 1000 and stops reconnecting; resolves when the socket is closed. */
  close(): Promise<void>;
}

export declare function connect(url: string, options?: ConnectOptions): GatewayClient;
