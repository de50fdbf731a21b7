// Opens the live page in Debian's headless Chromium and reports, as one JSON line, what a person
// would see: the connection status, the devices listed, and whether values changed without a
// reload. Usage: node live-page.js URL [seconds-to-wait-for-an-update]
"use strict";
const { chromium } = require("playwright-core");

(async () => {
  const [url, waitSeconds = "20"] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage();
    await page.goto(url);
    await page.waitForSelector("#devices tbody tr td .v", { timeout: 20000 });
    const values = () => page.$$eval("#devices tbody tr td:nth-child(4)", (cells) => cells.map((c) => c.textContent).join("|"));
    const before = await values();
    let updated = false;
    const deadline = Date.now() + Number(waitSeconds) * 1000;
    while (!updated && Date.now() < deadline) {
      await page.waitForTimeout(250);
      updated = (await values()) !== before;
    }
    const devices = await page.$$eval("#devices tbody tr", (rows) => rows.map((r) => r.dataset.device));
    const status = await page.textContent("#status");
    const alerts = await page.$$eval("#alerts li", (items) => items.map((li) => li.className));
    console.log(JSON.stringify({ status, devices, updated, alerts }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
