// Opens the dashboard in Debian's headless Chromium, as an IOC operator would, and reports as one
// JSON line what a person would see: the connection status, the map's device markers, the
// summary tiles, the markers' colours and the legend, whether live data arrived without a reload, the labels before and after the
// language switch, and axe-core's accessibility violations. Saves a screenshot.
// Usage: node dashboard.js URL SCREENSHOT.png [seconds-to-wait]
"use strict";
const path = require("path");
const { launch } = require("./chromium");

(async () => {
  const [url, screenshot, waitSeconds = "30"] = process.argv.slice(2);
  const wait = Number(waitSeconds) * 1000;
  const browser = await launch();
  try {
    const context = await browser.newContext({ viewport: { width: 1600, height: 1000 } });
    const page = await context.newPage();
    const blocked = [];
    page.on("console", (m) => {
      if (/Content Security Policy|Refused to/.test(m.text())) blocked.push(m.text());
    });
    const outside = [];
    page.on("request", (r) => {
      const u = new URL(r.url());
      if (!["127.0.0.1", "localhost"].includes(u.hostname) && u.protocol !== "data:") outside.push(r.url());
    });
    await page.goto(url);
    await page.waitForSelector('#status[data-state="live"]', { timeout: wait });
    await page.waitForSelector("path.device-marker", { timeout: wait });
    const frames = () => page.evaluate(() => Number(document.body.dataset.liveFrames || 0));
    const first = await frames();
    const deadline = Date.now() + wait;
    let updated = false;
    while (!updated && Date.now() < deadline) {
      await page.waitForTimeout(250);
      updated = (await frames()) > first;
    }
    await page.waitForTimeout(500);
    const markers = await page.$$eval("path.device-marker", (ps) => ps.map((p) => p.getAttribute("data-device")));
    // Each marker's colour, and the levels the legend names.
    const fills = await page.$$eval("path.device-marker", (ps) => Object.fromEntries(ps.map((p) => [p.getAttribute("data-device"), p.getAttribute("fill")])));
    const legend = await page.$$eval("#legend li", (ls) => ls.map((l) => l.textContent));
    const tiles = await page.$$eval(".tile", (ts) => Object.fromEntries(ts.map((t) => [t.id, t.querySelector(".big").textContent])));
    const outline = await page.$$eval("#map path:not(.device-marker)", (ps) => ps.length);
    const status = await page.textContent("#status");
    const label = () => page.textContent("#tile-aqi h2");
    const before = { lang: await page.getAttribute("html", "lang"), aqi: await label() };
    await page.waitForSelector("body[data-quality-loaded]", { timeout: wait });
    await page.screenshot({ path: screenshot, fullPage: true });
    // A marker's popup: its latest values, and its data quality this hour.
    await page.$eval("path.device-marker", (p) => p.dispatchEvent(new MouseEvent("click", { bubbles: true })));
    const popup = await page
      .waitForSelector(".leaflet-popup-content .popup", { timeout: 5000 })
      .then((e) => e.textContent(), () => null);
    const quality = await page.$$eval("#quality tbody tr", (rows) => rows.length);
    await page.selectOption("#lang", "en");
    const after = { lang: await page.getAttribute("html", "lang"), aqi: await label(), status: await page.textContent("#status") };

    // Accessibility, in a second context that lets axe's script in (the page's own policy
    // would refuse it, as it should).
    const audit = await browser.newContext({ bypassCSP: true, viewport: { width: 1600, height: 1000 } });
    const checked = await audit.newPage();
    await checked.goto(url);
    await checked.waitForSelector("path.device-marker", { timeout: wait });
    await checked.addScriptTag({ path: path.join(__dirname, "node_modules/axe-core/axe.min.js") });
    const violations = await checked.evaluate(async () => {
      const r = await window.axe.run(document, { resultTypes: ["violations"] });
      return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help }));
    });
    console.log(JSON.stringify({ status, markers, fills, legend, tiles, outline, updated, before, after, popup, quality, violations, blocked, outside }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
