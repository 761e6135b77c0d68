// Types of client.js: a resilient client for the ws-toolkit hub.

/** A publication of a subscribed channel, delivered once, in seq order. */
export interface Publication<T = unknown> {
  channel: string;
  seq: number;
  data: T;
}

export interface ClientOptions {
  /** A JWT for hubs that require one (sent as `?token=`). */
  token?: string;
  /** Bound of each subscription's queue; a full queue stops the reading (backpressure). Default 10000. */
  queueSize?: number;
  /** First reconnect delay in ms, doubled per failed attempt, jittered (default 100). */
  minBackoff?: number;
  /** Largest reconnect delay in ms (default 10000). */
  maxBackoff?: number;
  /** Limit for the first connection and each connection's greeting, in ms (default 10000). */
  connectTimeout?: number;
}

export type State = "idle" | "connecting" | "connected" | "reconnecting" | "failed" | "closed";

export interface Events {
  connected: { connectionId: number; reconnected: boolean };
  disconnected: { reason: string };
  /** The hub could not replay what was missed (history too short, or a restart: a new epoch); delivery goes on after `seq`: take a fresh snapshot. */
  unrecovered: { channel: string; epoch: string; seq: number };
  /** Publications `expected` to `received - 1` did not arrive (dropped by the hub for a slow reader). */
  gap: { channel: string; expected: number; received: number };
  /** An Error from the hub that answers no publication. */
  error: HubError;
  state: State;
}

/** The hub refused a publication; `code` is one of the protocol's error codes. */
export class HubError extends Error {
  code: string;
}

export class Client {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  readonly state: State;
  /** Resolves once the first connection is up; rejects if none is made within connectTimeout. */
  start(): Promise<void>;
  /** Closes; unacknowledged publications reject, subscriptions end. */
  close(): void;
  on<E extends keyof Events>(event: E, listener: (value: Events[E]) => void): this;
  /** The publications of `channels`, each once and in order, across reconnects. */
  subscribe<T = unknown>(channels: string | string[], options?: { rewind?: number }): AsyncIterable<Publication<T>>;
  /** Publishes `data`; resolves to its seq once the hub has it (sent again after a reconnect, idempotently). */
  publish(channel: string, data: unknown, options?: { key?: string }): Promise<number>;
}
