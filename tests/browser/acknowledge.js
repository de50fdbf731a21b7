// Two operators have the dashboard open. The first reaches the Acknowledge button of a firing
// alert of DEVICE with the keyboard alone (Tab, past other devices' alerts), presses Enter and
// gives a comment; the second session must see the alert turn acknowledged, by whom and why,
// without a reload. Prints one JSON line.
// Usage: node acknowledge.js URL DEVICE COMMENT
"use strict";
const { launch } = require("./chromium");

(async () => {
  const [url, device, comment] = process.argv.slice(2);
  const browser = await launch();
  try {
    const open = async () => {
      const page = await (await browser.newContext({ viewport: { width: 1400, height: 900 } })).newPage();
      await page.goto(url);
      await page.waitForSelector('#status[data-state="live"]', { timeout: 30000 });
      return page;
    };
    const [first, second] = [await open(), await open()];
    // Alert ids are rule:device:started_at:hash.
    const of = (id) => id && id.split(":")[1] === device;
    await first.waitForFunction(
      (device) => [...document.querySelectorAll("#alerts button[data-ack]")].some((b) => b.dataset.ack.split(":")[1] === device),
      device, { timeout: 60000 });
    first.on("dialog", (d) => d.accept(comment));
    let id = null;
    for (let i = 0; i < 120 && !of(id); i++) {
      await first.keyboard.press("Tab");
      id = await first.evaluate(() => document.activeElement && document.activeElement.dataset.ack || null);
    }
    if (!of(id)) throw new Error(`no Acknowledge button of ${device} is reachable with Tab`);
    await second.waitForSelector(`#alerts li[data-alert="${id}"]`, { timeout: 30000 });
    const before = await second.getAttribute(`#alerts li[data-alert="${id}"]`, "data-state");
    const answer = first.waitForResponse((r) => r.url().includes("/ack"), { timeout: 30000 });
    await first.keyboard.press("Enter");
    const acked = await answer;
    const status = acked.status();
    // The act goes through the stream that owns the device, then back over the bus to every
    // API and page: on a loaded machine that can take a while.
    await second
      .waitForSelector(`#alerts li[data-alert="${id}"][data-state="acknowledged"]`, { timeout: 90000 })
      .catch(async (e) => {
        const now = await second.getAttribute(`#alerts li[data-alert="${id}"]`, "data-state").catch(() => "gone");
        throw new Error(`the second session still shows ${id} as ${now} (the ack was answered ${status}): ${e.message}`);
      });
    const seen = await second.textContent(`#alerts li[data-alert="${id}"]`);
    const button = await second.$(`#alerts li[data-alert="${id}"] button[data-ack]`);
    console.log(JSON.stringify({ alert: id, before, status, seen, button_left: button !== null }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
