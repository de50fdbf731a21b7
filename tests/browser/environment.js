// The environment officer's view of one station in Debian's headless Chromium: its AQI with the
// band's name and health advice, its QCVN exceedances, the chart of its hourly means over the last 7 days and the
// CSV of what the chart shows, the station's 1-hour limit drawn on it, its PM2.5 forecast with its band; the language switch; axe-core. Prints one JSON line; saves a
// screenshot. Usage: node environment.js URL STATION SCREENSHOT.png
"use strict";
const fs = require("fs");
const path = require("path");
const { launch } = require("./chromium");

(async () => {
  const [url, station, screenshot] = process.argv.slice(2);
  const browser = await launch();
  try {
    const open = async (context) => {
      const page = await context.newPage();
      await page.goto(`${url}#environment`);
      await page.waitForSelector("#environment:not([hidden])", { timeout: 30000 });
      await page.waitForSelector(`#env-station option[value="${station}"]`, { state: "attached", timeout: 30000 });
      await page.selectOption("#env-range", "7d");
      await page.selectOption("#env-station", station);
      await page.waitForFunction(() => Number(document.querySelector("#chart").dataset.points || 0) > 0, null, { timeout: 30000 });
      return page;
    };
    const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1400, height: 1100 } });
    const page = await open(context);
    await page.waitForTimeout(300);
    const text = (sel) => page.$eval(sel, (e) => e.textContent.trim()).catch(() => null);
    const seen = {
      aqi_1h: await text("#env-aqi-1h .big"),
      band_1h: await text("#env-aqi-1h .band"),
      advice_general_1h: await text('#env-aqi-1h [data-advice="general"]'),
      advice_sensitive_1h: await text('#env-aqi-1h [data-advice="sensitive"]'),
      aqi_1d: await text("#env-aqi-1d .big"),
      band_1d: await text("#env-aqi-1d .band"),
      exceedances: await page.$$eval("#env-exceedances tbody tr[data-status]", (rs) => rs.map((r) => [...r.cells].map((c) => c.textContent))),
      metric: await page.inputValue("#env-metric"),
      points: await page.$eval("#chart", (c) => Number(c.dataset.points)),
      limit: await page.$eval("#chart", (c) => c.dataset.limit || ""),
      forecast: await page.$eval("#chart", (c) => Number(c.dataset.forecast || 0)),
      legend: await page.$$eval("#chart .u-legend th", (ts) => ts.map((t) => t.textContent.trim())),
      canvas: await page.$$eval("#chart canvas", (cs) => cs.length),
    };
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#env-csv")]);
    const csv = fs.readFileSync(await download.path(), "utf8").trim().split("\n");
    seen.csv_header = csv[0];
    seen.csv_rows = csv.length - 1;
    seen.csv_name = download.suggestedFilename();
    await page.screenshot({ path: screenshot, fullPage: true });
    await page.selectOption("#lang", "en");
    seen.heading_en = await text("#env-exceedances h2");

    const audit = await browser.newContext({ bypassCSP: true, viewport: { width: 1400, height: 1100 } });
    const checked = await open(audit);
    await checked.addScriptTag({ path: path.join(__dirname, "node_modules/axe-core/axe.min.js") });
    seen.violations = await checked.evaluate(async () => {
      const r = await window.axe.run(document, { resultTypes: ["violations"] });
      return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help }));
    });
    console.log(JSON.stringify(seen));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
