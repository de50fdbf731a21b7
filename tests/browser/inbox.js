// The environment officer's alert inbox in Debian's headless Chromium: the station's open
// alerts, one alert's transitions, a resolve without a comment refused on the page, then
// resolved with a comment; the row turns resolved live, its transitions show who resolved it and
// why, and the "resolved" filter lists it. Prints one JSON line.
// Usage: node inbox.js URL STATION COMMENT
"use strict";
const { launch } = require("./chromium");

(async () => {
  const [url, station, comment] = process.argv.slice(2);
  const browser = await launch();
  try {
    const page = await (await browser.newContext({ viewport: { width: 1400, height: 1100 } })).newPage();
    await page.goto(`${url}#environment`);
    await page.waitForSelector('#status[data-state="live"]', { timeout: 30000 });
    await page.waitForSelector(`#env-station option[value="${station}"]`, { state: "attached", timeout: 30000 });
    await page.selectOption("#env-station", station);
    await page.check("#inbox-this-station");
    const row = `#inbox tbody tr[data-device="${station}"]`;
    const firing = await page.waitForSelector(`${row}[data-state="firing"]`, { timeout: 60000 });
    const id = await firing.getAttribute("data-alert");
    const listed = await page.$$eval("#inbox tbody tr[data-alert]", (rs) => rs.map((r) => ({ id: r.dataset.alert, device: r.dataset.device, state: r.dataset.state })));
    const sel = `${row}[data-alert="${id}"]`;

    await page.click(`button[data-details="${id}"]`);
    await page.waitForSelector(`tr[data-detail="${id}"] li[data-transition="fired"]`, { timeout: 30000 });
    const before = await page.$$eval(`tr[data-detail="${id}"] li`, (ls) => ls.map((l) => l.dataset.transition));

    await page.click(`button[data-inbox-resolve="${id}"]`);
    const refused = (await page.textContent("#inbox-message")).trim();

    await page.fill(`input[data-comment="${id}"]`, comment);
    const answer = page.waitForResponse((r) => r.url().includes("/resolve"), { timeout: 30000 });
    await page.click(`button[data-inbox-resolve="${id}"]`);
    const status = (await answer).status();
    // The act goes through the stream that owns the device and back over the bus.
    await page.waitForSelector(`${sel}[data-state="resolved"]`, { timeout: 90000 });
    await page.waitForSelector(`tr[data-detail="${id}"] li[data-transition="resolved"]`, { timeout: 30000 });
    const after = await page.$$eval(`tr[data-detail="${id}"] li`, (ls) => ls.map((l) => ({ kind: l.dataset.transition, text: l.textContent })));
    const buttons = await page.$$(`${sel} button[data-inbox-resolve], ${sel} button[data-inbox-ack]`);

    const reloaded = page.waitForResponse((r) => r.url().includes("/api/v1/alerts?") && r.url().includes("state=resolved"), { timeout: 30000 });
    await page.selectOption("#inbox-state", "resolved");
    await reloaded;
    await page.waitForFunction((id) => {
      const rows = [...document.querySelectorAll("#inbox tbody tr[data-alert]")];
      return rows.some((r) => r.dataset.alert === id) && rows.every((r) => r.dataset.state === "resolved");
    }, id, { timeout: 30000 });
    const resolvedFilter = await page.$$eval("#inbox tbody tr[data-alert]", (rs) => rs.map((r) => r.dataset.state));
    console.log(JSON.stringify({ alert: id, listed, before, refused, status, after, buttons_left: buttons.length, resolved_filter: resolvedFilter }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
