// The hub's status page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core): a page on 127.0.0.1 opens a WebSocket to the hub with the browser's own
// API (which offers permessage-deflate: the hub agrees), subscribes and publishes, some
// publications large order books that cross compressed both ways and must come back
// intact; the status page must show the connection and the publications by itself, without
// a reload. Writes a screenshot. Then the JavaScript client (clients/js) runs in the page.
//
//   node status_page.mjs ws://127.0.0.1:PORT http://127.0.0.1:ADMIN_PORT [screenshot.png]
import { readFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [hubUrl, adminUrl, screenshot = "status-page.png"] = process.argv.slice(2);
if (!hubUrl || !adminUrl) {
  console.error("usage: node status_page.mjs HUB_WS_URL ADMIN_HTTP_URL [SCREENSHOT]");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 420 } });
  await page.goto(adminUrl, { waitUntil: "load" });

  // A browser client, speaking the protocol with the page's WebSocket API.
  const received = await page.evaluate(async (url) => {
    const ws = new WebSocket(url);
    window.hubClient = ws;
    const frames = [];
    ws.onmessage = (e) => frames.push(JSON.parse(e.data));
    await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
    const extensions = ws.extensions;
    const until = async (test) => { for (let i = 0; i < 200 && !frames.some(test); i++) await new Promise(r => setTimeout(r, 20)); };
    await until((f) => f.type === "Connected");
    ws.send(JSON.stringify({ type: "Subscribe", channels: ["prices:SOL-USDC"] }));
    await until((f) => f.type === "Subscribed");
    // Every sixth publication a 50-level order book (about 2 KB: compressed both ways).
    const data = (i) => i % 6 ? { price: 187 + i / 100 } : {
      price: 187 + i / 100,
      bids: Array.from({ length: 50 }, (_, l) => [187.42 - l / 100, 1.5 + ((l * 7 + i) % 13) / 4]),
      asks: Array.from({ length: 50 }, (_, l) => [187.43 + l / 100, 1.5 + ((l * 5 + i) % 11) / 4]),
    };
    for (let i = 1; i <= 30; i++) {
      ws.send(JSON.stringify({ type: "Publish", channel: "prices:SOL-USDC", data: data(i) }));
    }
    await until((f) => f.type === "Publication" && f.seq === 30);
    const publications = frames.filter((f) => f.type === "Publication");
    const intact = publications.every((f) => JSON.stringify(f.data) === JSON.stringify(data(f.seq)));
    return { seqs: publications.map((f) => f.seq), intact, extensions };
  }, hubUrl);
  const { seqs, intact, extensions } = received;
  if (seqs.length !== 30 || seqs.some((seq, i) => seq !== i + 1)) {
    throw new Error(`the browser client got publications ${JSON.stringify(seqs)}`);
  }
  if (!intact) throw new Error("a publication's data changed on the way");
  if (!extensions.includes("permessage-deflate")) {
    throw new Error(`the hub did not agree to compression: extensions ${JSON.stringify(extensions)}`);
  }
  console.log(`browser WebSocket extensions: ${extensions}`);

  // The page updates itself: wait for the numbers, no reload.
  await page.waitForFunction(() =>
    document.getElementById("connections").textContent === "1" &&
    document.getElementById("publications").textContent === "30" &&
    document.getElementById("channels").textContent === "1", null, { timeout: 10000 });
  const shown = await page.evaluate(() => Object.fromEntries(
    ["connections", "channels", "subscriptions", "publications", "slow", "rate"].map((id) => [id, document.getElementById(id).textContent])));
  console.log("status page shows", JSON.stringify(shown));
  await page.screenshot({ path: screenshot });
  console.log(`screenshot: ${screenshot}`);

  // The JavaScript client (clients/js/client.js, an ES module with no build step) in the
  // page: acknowledged publishing and a subscription, in the browser.
  const source = await readFile(new URL("../../clients/js/client.js", import.meta.url), "utf8");
  await page.addScriptTag({ type: "module", content: `${source}\nwindow.WsToolkit = { Client, HubError };` });
  await page.waitForFunction(() => window.WsToolkit !== undefined, null, { timeout: 10000 });
  const viaClient = await page.evaluate(async (url) => {
    const client = new window.WsToolkit.Client(url);
    await client.start();
    const iterator = client.subscribe("js:browser")[Symbol.asyncIterator]();
    await new Promise((r) => setTimeout(r, 200));
    const seqs = [];
    for (let n = 0; n < 3; n++) seqs.push(await client.publish("js:browser", { n }));
    const got = [];
    for (let n = 0; n < 3; n++) got.push((await iterator.next()).value);
    client.close();
    return { seqs, got };
  }, hubUrl);
  if (JSON.stringify(viaClient.seqs) !== "[1,2,3]" ||
      JSON.stringify(viaClient.got.map((p) => [p.seq, p.data.n])) !== "[[1,0],[2,1],[3,2]]") {
    throw new Error(`the JavaScript client in the browser got ${JSON.stringify(viaClient)}`);
  }
  console.log("the JavaScript client in the browser: 3 acknowledged, 3 received in order");
  console.log("1 passed, 0 failed");
} catch (e) {
  failed = true;
  console.error("status page test failed:", e.message);
  console.log("0 passed, 1 failed");
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
