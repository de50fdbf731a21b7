// An installer on a phone-sized screen registers a device in the dashboard: first with a bad
// latitude (refused, the field named), then rightly; prints its MQTT account as one JSON line,
// then waits for the commissioning checklist to turn all green as the device's messages arrive
// and prints what the page shows as a second line. Usage: node installer.js URL DEVICE SHOT.png
"use strict";
const { launch } = require("./chromium");

(async () => {
  const [url, device, screenshot] = process.argv.slice(2);
  const browser = await launch();
  try {
    const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    const page = await context.newPage();
    await page.goto(`${url}#installer`);
    await page.waitForSelector("#installer:not([hidden])", { timeout: 30000 });
    const fill = async (lat) => {
      await page.fill('#register [name="device_id"]', device);
      await page.selectOption('#register [name="kind"]', "air_quality");
      await page.fill('#register [name="name"]', "Trạm lắp mới");
      await page.fill('#register [name="lat"]', lat);
      await page.fill('#register [name="lon"]', "108.05");
      await page.fill('#register [name="commune"]', "Phường Tân Lập");
      await page.fill('#register [name="expected_interval_s"]', "1");
      await page.click("#register button");
    };
    await fill("200");
    await page.waitForSelector('#register-problems li[data-field="lat"]', { timeout: 15000 });
    const refused = await page.textContent('#register-problems li[data-field="lat"]');
    await fill("12.68");
    await page.waitForSelector("#credentials:not([hidden])", { timeout: 15000 });
    const text = (sel) => page.textContent(sel);
    const mqtt = {
      username: await text("#cred-username"), password: await text("#cred-password"),
      client_id: await text("#cred-client"), topic: await text("#cred-topic"),
    };
    console.log(JSON.stringify({ registered: mqtt, refused }));
    await page.waitForSelector('#verdict[data-verdict="ready"]', { timeout: 90000 });
    const items = await page.$$eval("#checklist li", (ls) => ls.map((l) => [l.dataset.item, l.dataset.status]));
    const raw = await text("#raw");
    const decoded = await page.$$eval("#decoded li", (ls) => ls.map((l) => l.textContent));
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log(JSON.stringify({ verdict: await text("#verdict"), items, raw, decoded, scroll_width: wide }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
