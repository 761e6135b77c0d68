// The hub's status page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core): a page on 127.0.0.1 opens a WebSocket to the hub with the browser's own
// API, subscribes and publishes; the status page must show the connection and the
// publications by itself, without a reload. Writes a screenshot.
//
//   node status_page.mjs ws://127.0.0.1:PORT http://127.0.0.1:ADMIN_PORT [screenshot.png]
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
    const until = async (test) => { for (let i = 0; i < 200 && !frames.some(test); i++) await new Promise(r => setTimeout(r, 20)); };
    await until((f) => f.type === "Connected");
    ws.send(JSON.stringify({ type: "Subscribe", channels: ["prices:SOL-USDC"] }));
    await until((f) => f.type === "Subscribed");
    for (let i = 1; i <= 30; i++) {
      ws.send(JSON.stringify({ type: "Publish", channel: "prices:SOL-USDC", data: { price: 187 + i / 100 } }));
    }
    await until((f) => f.type === "Publication" && f.seq === 30);
    return frames.filter((f) => f.type === "Publication").map((f) => f.seq);
  }, hubUrl);
  if (received.length !== 30 || received.some((seq, i) => seq !== i + 1)) {
    throw new Error(`the browser client got publications ${JSON.stringify(received)}`);
  }

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
  console.log("1 passed, 0 failed");
} catch (e) {
  failed = true;
  console.error("status page test failed:", e.message);
  console.log("0 passed, 1 failed");
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
