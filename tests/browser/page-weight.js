// Measures the dashboard on a throttled connection: the bytes it loads and the time from
// navigation to its first live data. Usage: node page-weight.js URL [down-kbit/s] [rtt-ms]
// (default 1600 kbit/s down, 750 up, 150 ms: a slow 3G link). Prints one JSON line.
"use strict";
const { launch } = require("./chromium");

(async () => {
  const [url, down = "1600", rtt = "150"] = process.argv.slice(2);
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const cdp = await page.context().newCDPSession(page);
    await cdp.send("Network.enable");
    await cdp.send("Network.setCacheDisabled", { cacheDisabled: true });
    await cdp.send("Network.emulateNetworkConditions", {
      offline: false, latency: Number(rtt),
      downloadThroughput: (Number(down) * 1000) / 8, uploadThroughput: (750 * 1000) / 8,
    });
    let bytes = 0;
    const files = {};
    cdp.on("Network.loadingFinished", (e) => { bytes += e.encodedDataLength; });
    cdp.on("Network.responseReceived", (e) => { files[e.requestId] = new URL(e.response.url).pathname; });
    const start = Date.now();
    await page.goto(url);
    const loaded = Date.now() - start;
    await page.waitForFunction(() => Number(document.body.dataset.liveFrames || 0) > 0, null, { timeout: 120000 });
    const live = Date.now() - start;
    console.log(JSON.stringify({ down_kbit: Number(down), rtt_ms: Number(rtt), bytes, files: Object.keys(files).length, load_ms: loaded, first_live_ms: live }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
