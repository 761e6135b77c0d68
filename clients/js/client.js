// A resilient client for the ws-toolkit hub (the JSON protocol of docs/PROTOCOL.md), for
// browsers and Node >= 22 (their built-in WebSocket; Node 20.10+ with --experimental-websocket).
//
//   const client = new Client("ws://127.0.0.1:8080");
//   await client.start();
//   client.on("unrecovered", (e) => console.warn("take a fresh snapshot of", e.channel));
//   for await (const publication of client.subscribe("prices:SOL-USDC")) {
//     console.log(publication.seq, publication.data);
//   }
//
// It reconnects with jittered exponential backoff, resubscribes every channel with `since`
// (the last seq it delivered: nothing missed or delivered twice while the hub's history
// reaches back), sends unacknowledged publications again with an idempotency key, and
// reports `connected`, `disconnected`, `unrecovered`, `gap`, `error` and `state` events.

const END = Symbol("end");

/** The hub refused a publication; `code` is one of docs/PROTOCOL.md's error codes. */
export class HubError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "HubError";
    this.code = code;
  }
}

/** A bounded queue whose reader waits; a full queue makes the writer wait (backpressure). */
class Queue {
  constructor(capacity) {
    this.capacity = capacity;
    this.items = [];
    this.readers = [];
    this.writers = [];
  }
  async put(item) {
    while (this.items.length >= this.capacity && item !== END) {
      await new Promise((resolve) => this.writers.push(resolve));
    }
    const reader = this.readers.shift();
    if (reader) reader(item);
    else this.items.push(item);
  }
  async take() {
    if (this.items.length > 0) {
      const item = this.items.shift();
      this.writers.shift()?.();
      return item;
    }
    return new Promise((resolve) => this.readers.push(resolve));
  }
}

export class Client {
  /**
   * @param {string} url the hub, ws:// or wss://
   * @param {object} [options]
   */
  constructor(url, options = {}) {
    this.url = options.token ? withToken(url, options.token) : url;
    this.queueSize = options.queueSize ?? 10000;
    this.minBackoff = options.minBackoff ?? 100;
    this.maxBackoff = options.maxBackoff ?? 10000;
    this.connectTimeout = options.connectTimeout ?? 10000;
    this.state = "idle";
    this.positions = new Map(); // channel -> { epoch, seq, rewind }
    this.queues = new Map(); // channel -> [Queue]
    this.pending = new Map(); // id -> { channel, data, key, resolve, reject }
    this.nextId = 1;
    this.keyPrefix = Math.random().toString(36).slice(2, 12);
    this.listeners = new Map();
    this.ws = null;
    this.closed = false;
    this.everConnected = false;
    this.incoming = Promise.resolve();
  }

  /** Connects; resolves once the first connection is up, rejects if none is made within
   * `connectTimeout` (retrying with backoff meanwhile). */
  start() {
    this.first = {};
    const started = new Promise((resolve, reject) => Object.assign(this.first, { resolve, reject }));
    this.firstDeadline = Date.now() + this.connectTimeout;
    this.#connect(0);
    return started;
  }

  /** Closes; unacknowledged publications reject, subscriptions end. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.#setState("closed");
    clearTimeout(this.retry);
    clearTimeout(this.connectTimer);
    this.ws?.close(1000);
    this.#end(new Error("client closed"));
  }

  /** Listens to `connected`, `disconnected`, `unrecovered`, `gap`, `error` or `state`. */
  on(event, listener) {
    if (!this.listeners.has(event)) this.listeners.set(event, []);
    this.listeners.get(event).push(listener);
    return this;
  }

  /** The publications of `channels`, each once and in order, across reconnects. */
  subscribe(channels, { rewind } = {}) {
    const list = Array.isArray(channels) ? channels : [channels];
    const queue = new Queue(this.queueSize);
    const fresh = [];
    for (const channel of list) {
      if (!this.queues.has(channel)) this.queues.set(channel, []);
      this.queues.get(channel).push(queue);
      if (!this.positions.has(channel)) {
        this.positions.set(channel, { epoch: null, seq: 0, rewind });
        fresh.push(channel);
      }
    }
    if (fresh.length > 0 && this.ws?.readyState === 1 && this.state === "connected") {
      this.#sendSubscribe(fresh);
    }
    return {
      [Symbol.asyncIterator]() {
        return {
          async next() {
            const item = await queue.take();
            return item === END ? { done: true, value: undefined } : { done: false, value: item };
          },
        };
      },
    };
  }

  /** Publishes `data` (any JSON value); resolves to its seq once the hub has it. */
  publish(channel, data, { key } = {}) {
    if (this.closed) return Promise.reject(new Error("client closed"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const entry = { channel, data: JSON.stringify(data), key: key ?? `${this.keyPrefix}:${id}`, resolve, reject };
      this.pending.set(id, entry);
      if (this.state === "connected") this.#sendPublish(id, entry);
    });
  }

  #emit(event, value) {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        listener(value);
      } catch (error) {
        console.error("ws-toolkit listener failed", error);
      }
    }
  }

  #setState(state) {
    if (this.state !== state) {
      this.state = state;
      this.#emit("state", state);
    }
  }

  #connect(attempt) {
    if (this.closed) return;
    this.#setState(this.everConnected ? "reconnecting" : "connecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    let opened = false;
    const timer = setTimeout(() => ws.close(), this.connectTimeout);
    this.connectTimer = timer;
    ws.onmessage = (event) => {
      // One frame at a time, in order, even when a subscriber's queue makes us wait.
      this.incoming = this.incoming.then(() => this.#onFrame(JSON.parse(event.data), () => {
        clearTimeout(timer);
        opened = true;
      }));
    };
    ws.onclose = (event) => {
      clearTimeout(timer);
      if (this.ws === ws) this.ws = null;
      if (this.closed) return;
      const reason = `closed ${event.code}${event.reason ? ` (${event.reason})` : ""}`;
      if (!this.everConnected && Date.now() > this.firstDeadline) {
        this.#setState("failed");
        this.first?.reject(new Error(`cannot connect to ${this.url}: ${reason}`));
        return;
      }
      if (this.everConnected) this.#emit("disconnected", { reason });
      const next = opened ? 0 : attempt + 1;
      const delay = Math.min(this.maxBackoff, this.minBackoff * 2 ** Math.max(0, next - 1));
      this.retry = setTimeout(() => this.#connect(next), delay * (0.5 + Math.random() / 2));
    };
    ws.onerror = () => {}; // onclose follows with the code
  }

  async #onFrame(message, up) {
    switch (message.type) {
      case "Connected": {
        up();
        if (this.positions.size > 0) this.#sendSubscribe([...this.positions.keys()]);
        for (const [id, entry] of [...this.pending].sort((a, b) => a[0] - b[0])) this.#sendPublish(id, entry);
        this.#setState("connected");
        this.#emit("connected", { connectionId: message.connection_id, reconnected: this.everConnected });
        this.everConnected = true;
        this.first?.resolve();
        break;
      }
      case "Subscribed":
        for (const [channel, position] of Object.entries(message.positions ?? {})) this.#onPosition(channel, position);
        break;
      case "Publication":
        await this.#onPublication(message.channel, message.seq, message.data);
        break;
      case "Published":
        for (let offset = 0; offset < (message.count ?? 1); offset++) {
          const entry = this.pending.get(message.id + offset);
          this.pending.delete(message.id + offset);
          entry?.resolve(message.seq + offset);
        }
        break;
      case "Error": {
        const entry = message.id !== undefined ? this.pending.get(message.id) : undefined;
        if (entry) {
          this.pending.delete(message.id);
          entry.reject(new HubError(message.code, message.message));
        } else {
          this.#emit("error", new HubError(message.code, message.message));
        }
        break;
      }
      case "Ping":
        this.ws?.send('{"type":"Pong"}');
        break;
      default:
        break;
    }
  }

  #onPosition(channel, position) {
    const mine = this.positions.get(channel);
    if (!mine) return;
    const after = position.replay_from !== undefined ? position.replay_from - 1 : position.seq;
    if (mine.epoch === null) {
      mine.epoch = position.epoch;
      mine.seq = after;
    } else if (position.recovered === false) {
      this.#emit("unrecovered", { channel, epoch: position.epoch, seq: after });
      mine.epoch = position.epoch;
      mine.seq = after;
    }
  }

  async #onPublication(channel, seq, data) {
    const mine = this.positions.get(channel);
    if (!mine || seq <= mine.seq) return; // a copy of what was delivered
    if (seq > mine.seq + 1 && mine.epoch !== null) {
      this.#emit("gap", { channel, expected: mine.seq + 1, received: seq });
    }
    mine.seq = seq;
    for (const queue of this.queues.get(channel) ?? []) await queue.put({ channel, seq, data });
  }

  #sendSubscribe(channels) {
    const frame = { type: "Subscribe", channels };
    const since = {};
    let rewind = 0;
    for (const channel of channels) {
      const p = this.positions.get(channel);
      if (p.epoch !== null) since[channel] = { epoch: p.epoch, seq: p.seq };
      else if (p.rewind) rewind = Math.max(rewind, p.rewind);
    }
    if (Object.keys(since).length > 0) frame.since = since;
    if (rewind > 0) frame.rewind = rewind;
    this.ws?.send(JSON.stringify(frame));
  }

  #sendPublish(id, entry) {
    this.ws?.send(`{"type":"Publish","channel":${JSON.stringify(entry.channel)},"data":${entry.data},"id":${id},"key":${JSON.stringify(entry.key)}}`);
  }

  #end(error) {
    for (const entry of this.pending.values()) entry.reject(error);
    this.pending.clear();
    for (const queues of this.queues.values()) for (const queue of queues) queue.put(END);
    this.first?.reject(error);
  }
}

function withToken(url, token) {
  const parsed = new URL(url);
  parsed.searchParams.set("token", token);
  return parsed.toString();
}
