// Type-checked (not run) by scripts/js-client-test.sh with `tsc --strict --noEmit`: the
// README's example and each event against client.d.ts, so the declarations stay usable.
import { Client, HubError, type Publication, type State } from "../client.js";

interface Price {
  price: number;
}

async function readme(): Promise<void> {
  const client = new Client("ws://127.0.0.1:8080", { token: "jwt", maxBackoff: 5000 });
  await client.start();
  client.on("unrecovered", (e) => console.warn("take a fresh snapshot of", e.channel, e.epoch, e.seq));
  client.on("gap", (e) => console.warn(e.channel, e.expected, e.received));
  client.on("connected", (e) => console.log(e.connectionId, e.reconnected));
  client.on("disconnected", (e) => console.log(e.reason));
  client.on("error", (e: HubError) => console.log(e.code, e.message));
  client.on("state", (state: State) => console.log(state));
  const seq: number = await client.publish("prices:SOL-USDC", { price: 187.42 }, { key: "k-1" });
  for await (const publication of client.subscribe<Price>("prices:SOL-USDC", { rewind: 1 })) {
    const p: Publication<Price> = publication;
    console.log(seq, p.seq, p.channel, p.data.price.toFixed(2));
  }
  client.close();
}

void readme;
