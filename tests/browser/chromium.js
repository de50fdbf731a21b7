// Debian's Chromium, headless, as every browser check here launches it: never a downloaded
// browser (CHROMIUM names another binary), and nothing that talks to the network on its own.
"use strict";
const { chromium } = require("playwright-core");

exports.launch = () =>
  chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
