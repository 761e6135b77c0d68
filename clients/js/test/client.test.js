// The JavaScript client against the hub binary (WS_SERVER_BIN, or the workspace's
// target/release/ws-server): acknowledged publishing, a cut connection resumed with nothing
// missed or repeated, and a hub restart reported as `unrecovered` with the new epoch
// delivered from its start.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Client, HubError } from "../client.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const BINARY = process.env.WS_SERVER_BIN ?? path.join(ROOT, "target/release/ws-server");
const WAIT = 10000;

const freePort = () =>
  new Promise((resolve) => {
    const server = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });

async function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), WAIT);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

class Hub {
  async start(port) {
    this.port = port ?? (await freePort());
    this.url = `ws://127.0.0.1:${this.port}`;
    this.process = spawn(BINARY, [], {
      env: { ...process.env, WS_HOST: "127.0.0.1", WS_PORT: String(this.port), RUST_LOG: "error" },
      stdio: "ignore",
    });
    for (let i = 0; i < 200; i++) {
      const up = await new Promise((resolve) => {
        const socket = net.connect(this.port, "127.0.0.1", () => { socket.end(); resolve(true); });
        socket.on("error", () => resolve(false));
      });
      if (up) return this;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error("the hub did not start");
  }
  async stop() {
    const exited = new Promise((resolve) => this.process.once("exit", resolve));
    this.process.kill("SIGKILL");
    await exited;
  }
}

async function take(iterable, count) {
  const iterator = iterable[Symbol.asyncIterator]();
  const got = [];
  while (got.length < count) got.push((await within(iterator.next(), `publication ${got.length + 1}`)).value);
  return got;
}

const once = (client, event) => within(new Promise((resolve) => client.on(event, resolve)), event);

test("publications are acknowledged and reach subscribers", async () => {
  const hub = await new Hub().start();
  const reader = new Client(hub.url);
  const writer = new Client(hub.url);
  try {
    await Promise.all([reader.start(), writer.start()]);
    const prices = reader.subscribe("prices:SOL-USDC");
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(await writer.publish("prices:SOL-USDC", { price: 187.42 }), 1);
    assert.equal(await writer.publish("prices:SOL-USDC", { price: 187.43 }), 2);
    assert.deepEqual(await take(prices, 2), [
      { channel: "prices:SOL-USDC", seq: 1, data: { price: 187.42 } },
      { channel: "prices:SOL-USDC", seq: 2, data: { price: 187.43 } },
    ]);
    await assert.rejects(writer.publish("", {}), (error) => error instanceof HubError && error.code === "invalid_channel");
  } finally {
    reader.close();
    writer.close();
    await hub.stop();
  }
});

test("a cut connection resumes with nothing missed or repeated", async () => {
  const hub = await new Hub().start();
  const sockets = [];
  const relay = net.createServer((client) => {
    const upstream = net.connect(hub.port, "127.0.0.1");
    sockets.push(client, upstream);
    client.pipe(upstream).pipe(client);
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
  });
  await new Promise((resolve) => relay.listen(0, "127.0.0.1", resolve));
  const reader = new Client(`ws://127.0.0.1:${relay.address().port}`, { minBackoff: 50 });
  const writer = new Client(hub.url);
  try {
    await Promise.all([reader.start(), writer.start()]);
    const reconnected = new Promise((resolve) => reader.on("connected", (e) => e.reconnected && resolve(e)));
    const book = reader.subscribe("book");
    await new Promise((r) => setTimeout(r, 200));
    const got = take(book, 200);
    for (let n = 0; n < 200; n++) {
      await writer.publish("book", { n });
      if (n === 80) for (const socket of sockets.splice(0)) socket.destroy();
    }
    const publications = await got;
    assert.deepEqual(publications.map((p) => p.seq), Array.from({ length: 200 }, (_, i) => i + 1));
    assert.deepEqual(publications.map((p) => p.data.n), Array.from({ length: 200 }, (_, i) => i));
    await within(reconnected, "a reconnect");
  } finally {
    reader.close();
    writer.close();
    relay.close();
    await hub.stop();
  }
});

test("a hub restart is reported and the new epoch delivered", async () => {
  const hub = await new Hub().start();
  const reader = new Client(hub.url, { minBackoff: 50 });
  try {
    await reader.start();
    const trades = reader.subscribe("trades");
    await new Promise((r) => setTimeout(r, 200));
    const writer = new Client(hub.url);
    await writer.start();
    for (let n = 0; n < 3; n++) await writer.publish("trades", { n });
    writer.close();
    assert.deepEqual((await take(trades, 3)).map((p) => p.seq), [1, 2, 3]);

    const unrecovered = once(reader, "unrecovered");
    await hub.stop();
    await hub.start(hub.port);
    const event = await unrecovered;
    assert.equal(event.channel, "trades");
    assert.equal(event.seq, 0);
    const again = new Client(hub.url);
    await again.start();
    await again.publish("trades", { n: 100 });
    again.close();
    const [after] = await take(trades, 1);
    assert.deepEqual([after.seq, after.data], [1, { n: 100 }]);
  } finally {
    reader.close();
    await hub.stop();
  }
});
