// The IOC dashboard's operator view: the province map with live markers, summary tiles and the
// alert feed, fed by the REST API and the live websocket (snapshot, then live; resumed with its
// last position after a network blip, without a reload). No inline script: the page runs under
// a strict Content-Security-Policy.
"use strict";
(function () {
  const WORDS = window.IOC_I18N;
  const ZONE = "Asia/Ho_Chi_Minh";
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  };

  const state = {
    token: "",
    lang: localStorage.getItem("ioc.lang") || "vi",
    devices: new Map(), // device_id -> {device_id, kind, lat, lon, status, online}
    latest: new Map(), // device_id -> Map(key -> {value, unit})
    aqi: new Map(), // device_id -> {aqi, band}
    traffic: new Map(), // traffic counter's device_id -> its latest 5-minute window
    bands: [], // Decision 1459's bands with their health advice (/api/v1/aqi/bands)
    alerts: new Map(), // alert_id -> alert (open ones)
    statuses: new Map(), // device_id -> status
    quality: new Map(), // device_id -> this hour's quality record (/api/v1/quality)
    epoch: null,
    positions: {}, // stream -> [[p, o, i], ...]
    socket: null,
    retry: 0,
  };

  const t = (key) => (WORDS[state.lang] && WORDS[state.lang][key]) || WORDS.vi[key] || key;
  const number = (v, digits = 1) =>
    new Intl.NumberFormat(state.lang === "vi" ? "vi-VN" : "en-GB", { maximumFractionDigits: digits }).format(v);
  const time = (iso) =>
    new Intl.DateTimeFormat(state.lang === "vi" ? "vi-VN" : "en-GB", {
      timeZone: ZONE, dateStyle: "short", timeStyle: "short",
    }).format(new Date(iso));

  function applyLanguage() {
    document.documentElement.lang = state.lang;
    $("#lang").value = state.lang;
    for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
    setStatus($("#status").dataset.state);
    render();
    if (view === "environment" && !$("#environment").hidden) {
      loadEnvironment().catch(() => {});
      renderInbox().catch(() => {});
    }
  }

  function setStatus(s) {
    const status = $("#status");
    status.dataset.state = s;
    status.dataset.i18n = s;
    status.textContent = t(s);
  }

  async function api(path, options = {}) {
    const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
    const r = await fetch(path, Object.assign({}, options, { headers }));
    if (r.status === 401) {
      signOut(t("bad_token"));
      throw new Error("unauthorized");
    }
    return r;
  }

  // Sign-in: a token from ?token= (then taken out of the address bar) or the session's storage.
  function signOut(message) {
    sessionStorage.removeItem("ioc.token");
    if (state.socket) state.socket.close();
    $("#operator").hidden = true;
    $("#environment").hidden = true;
    $("#installer").hidden = true;
    $("#views").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
  }

  async function signIn(token) {
    state.token = token;
    const r = await api("/api/v1/me");
    if (!r.ok) return;
    const me = await r.json();
    sessionStorage.setItem("ioc.token", token);
    $("#login").hidden = true;
    $("#views").hidden = false;
    state.bands = await api("/api/v1/aqi/bands").then((r) => r.json()).then((b) => b.bands || [], () => []);
    const asked = location.hash.replace("#", "");
    showView(VIEWS.includes(asked) ? asked : VIEWS.includes(me.view) ? me.view : "operator");
    await start();
  }

  // The map: the province's outline always, the configured tiles only if there are any.
  let map = null;
  const markers = new Map();
  function makeMap() {
    if (map) return;
    map = L.map("map", { zoomControl: true, attributionControl: true });
    map.attributionControl.setPrefix("Leaflet");
    const tiles = document.body.dataset.tiles;
    if (tiles) L.tileLayer(tiles, { maxZoom: 18 }).addTo(map);
    map.setView([12.9, 108.5], 8);
    fetch("/assets/province.geojson")
      .then((r) => r.json())
      .then((outline) => {
        const layer = L.geoJSON(outline, {
          style: { color: "#123c69", weight: 2, fillColor: "#123c69", fillOpacity: 0.05 },
          interactive: false,
        }).addTo(map);
        const source = outline.features && outline.features[0] && outline.features[0].properties;
        if (source && source.source) map.attributionControl.addAttribution(source.source);
        if (layer.getBounds().isValid()) map.fitBounds(layer.getBounds(), { padding: [10, 10] });
      })
      .catch(() => {});
  }

  const BAND_NONE = { level: 0, colour: "#9aa5b1" };
  // Congestion levels, green to red as the AQI bands run.
  const LEVELS = ["free", "moderate", "heavy", "jammed"];
  const LEVEL_COLOURS = { free: "#1f9d55", moderate: "#f2c200", heavy: "#ff7e00", jammed: "#b3261e" };
  // What a marker shows: air stations by their hourly AQI band, wastewater stations by whether
  // a water alert is open, the others by being online.
  function look(d) {
    if (d.kind === "air_quality") {
      const a = state.aqi.get(d.device_id);
      const band = (a && a.band) || BAND_NONE;
      const name = a && a.band ? `${a.aqi} · ${a.band[state.lang] || a.band.vi}` : t("no_band");
      return { colour: band.colour, label: name };
    }
    if (d.kind === "wastewater") {
      const open = [...state.alerts.values()].some((x) => x.device_id === d.device_id && x.category === "water");
      return open ? { colour: "#b3261e", label: t("water_alert") } : { colour: "#1f9d55", label: t("water_ok") };
    }
    if (d.kind === "traffic_counter") {
      // Counters by their latest 5 minutes' congestion level, the level named beside it; a
      // counter that stopped reporting shows as offline, not as its last level.
      if (!d.online) return { colour: "#9aa5b1", label: t("offline") };
      const w = state.traffic.get(d.device_id);
      if (!w || !w.level) return { colour: BAND_NONE.colour, label: t("no_level") };
      const parts = [t(`level_${w.level}`)];
      if (w.speed_kmh != null) parts.push(`${number(w.speed_kmh)} km/h`);
      if (w.flow_vph != null) parts.push(`${number(w.flow_vph, 0)} ${t("vehicles_h")}`);
      return { colour: LEVEL_COLOURS[w.level], label: parts.join(" · ") };
    }
    if (d.kind === "traffic_camera" && d.online && d.violations_1h != null) {
      // Cameras by their violations in the last hour: none, some, many.
      const n = d.violations_1h;
      const colour = n === 0 ? "#1f9d55" : n < 20 ? "#ff7e00" : "#b3261e";
      // An instance that began counting less than an hour ago says since when.
      const partial = state.violationsSince > Date.now() - HOUR + 60000;
      return { colour, label: partial
        ? `${number(n, 0)} ${t("violations_since")} ${time(new Date(state.violationsSince).toISOString())}`
        : `${number(n, 0)} ${t("violations_1h")}` };
    }
    return d.online ? { colour: "#2b6cb0", label: t("online") } : { colour: "#9aa5b1", label: t("offline") };
  }

  function popup(d) {
    const box = el("div", { class: "popup" });
    box.append(el("strong", { text: `${d.name || d.device_id} (${d.device_id})` }));
    const dl = el("dl");
    const add = (k, v) => dl.append(el("dt", { text: k }), el("dd", { text: v }));
    add(t(d.kind), `${t(state.statuses.get(d.device_id) || d.status)} · ${d.online ? t("online") : t("offline")}`);
    if (d.road_segment) add(t("road_segment"), d.road_segment);
    add("", look(d).label);
    const values = state.latest.get(d.device_id);
    add(t("latest"), values && values.size
      ? [...values].map(([k, v]) => `${k} ${number(v.value)} ${v.unit || ""}`.trim()).join(", ")
      : t("no_values"));
    const open = [...state.alerts.values()].filter((a) => a.device_id === d.device_id);
    if (open.length) add(t("open_alerts"), open.map((a) => a.message).join("; "));
    const q = state.quality.get(d.device_id);
    if (q) add(t("data_quality"), scoreText(q.scores));
    box.append(dl);
    return box;
  }

  // Data quality ("đúng, đủ, sạch, sống") of this hour so far: per device for the popups, per
  // commune for the table (worst first), read again every minute.
  const SCORES = ["correct", "complete", "clean", "live"];
  const scoreText = (s) => SCORES.map((k) => `${t(`score_${k}`)} ${s[k] == null ? "–" : number(s[k])}`).join(" · ");
  async function loadQuality() {
    const from = new Date(Math.floor(Date.now() / HOUR) * HOUR).toISOString();
    const read = async (by) => {
      const r = await api(`/api/v1/quality?by=${by}&from=${encodeURIComponent(from)}`);
      return r.ok ? (await r.json()).quality : [];
    };
    state.quality = new Map((await read("device")).map((q) => [q.device_id, q]));
    const communes = await read("commune");
    const worst = (q) => Math.min(...SCORES.map((k) => (q.scores[k] == null ? 100 : q.scores[k])));
    communes.sort((a, b) => worst(a) - worst(b));
    const body = $("#quality tbody");
    body.replaceChildren();
    if (!communes.length) body.append(el("tr", {}, el("td", { colspan: "6", text: t("no_data") })));
    for (const q of communes) {
      const tr = el("tr", { "data-commune": q.commune }, el("td", { text: q.commune }), el("td", { text: number(q.devices, 0) }));
      for (const k of SCORES) {
        const v = q.scores[k];
        tr.append(el("td", { class: v != null && v < 80 ? "low" : "", text: v == null ? "–" : number(v) }));
      }
      body.append(tr);
    }
    document.body.dataset.qualityLoaded = "1";
  }

  function renderMarkers() {
    if (!map) return;
    for (const d of state.devices.values()) {
      if (!Number.isFinite(d.lat) || !Number.isFinite(d.lon)) continue;
      const { colour, label } = look(d);
      let m = markers.get(d.device_id);
      if (!m) {
        m = L.circleMarker([d.lat, d.lon], {
          radius: 9, weight: 2, color: "#1d2430", fillOpacity: 0.9, className: "device-marker",
        });
        m.bindPopup(() => popup(state.devices.get(d.device_id)));
        m.addTo(map);
        markers.set(d.device_id, m);
      }
      m.setStyle({ fillColor: colour });
      m.bindTooltip(`${d.device_id}: ${label}`);
      const path = m.getElement && m.getElement();
      if (path) path.setAttribute("data-device", d.device_id);
    }
    const legend = $("#legend");
    legend.replaceChildren();
    const seen = new Map();
    for (const a of state.aqi.values()) if (a.band) seen.set(a.band.level, a.band);
    for (const band of [...seen.values()].sort((x, y) => x.level - y.level)) {
      const sw = el("span", { class: "swatch" });
      sw.style.background = band.colour;
      legend.append(el("li", {}, sw, band[state.lang] || band.vi));
    }
    const levels = new Set([...state.traffic.values()].map((w) => w.level));
    for (const level of LEVELS.filter((l) => levels.has(l))) {
      const sw = el("span", { class: "swatch" });
      sw.style.background = LEVEL_COLOURS[level];
      legend.append(el("li", { "data-level": level }, sw, t(`level_${level}`)));
    }
  }

  function renderTiles() {
    const devices = [...state.devices.values()];
    const stations = devices.filter((d) => d.kind === "air_quality" || d.kind === "wastewater");
    const reporting = stations.filter((d) => d.online).length;
    const tile = (id, big, small) => {
      $(`#${id} .big`).textContent = big;
      $(`#${id} .small`).textContent = small;
    };
    tile("tile-reporting", `${reporting}/${stations.length}`, `${t("air_quality")}, ${t("wastewater")}`);
    let top = null;
    for (const [id, a] of state.aqi) if (a.aqi != null && (!top || a.aqi > top.aqi)) top = Object.assign({ id }, a);
    tile("tile-aqi", top ? String(top.aqi) : "–",
      top ? `${top.band ? top.band[state.lang] || top.band.vi : ""} · ${top.id}` : t("no_aqi"));
    const open = [...state.alerts.values()];
    const by = (s) => open.filter((a) => a.severity === s).length;
    tile("tile-alerts", String(open.length),
      ["critical", "major", "minor", "warning"].map((s) => `${t(s)} ${by(s)}`).join(" · "));
    const offline = devices.filter((d) => !d.online);
    tile("tile-offline", String(offline.length), `${t("of")} ${devices.length}`);
    const counts = {};
    for (const d of devices) {
      const s = state.statuses.get(d.device_id) || d.status;
      counts[s] = (counts[s] || 0) + 1;
    }
    tile("tile-status", String(counts.active || 0),
      Object.entries(counts).map(([s, n]) => `${t(s)} ${n}`).join(" · "));
  }

  function renderAlerts() {
    const list = $("#alerts");
    // Live updates redraw the feed: keep the keyboard's place on an Acknowledge button.
    const focused = document.activeElement && document.activeElement.dataset.ack;
    list.replaceChildren();
    const open = [...state.alerts.values()].sort((a, b) => (a.fired_at < b.fired_at ? 1 : -1));
    if (!open.length) list.append(el("li", { class: "none", text: t("no_alerts") }));
    for (const a of open) {
      const li = el("li", { "data-alert": a.alert_id, "data-severity": a.severity, "data-state": a.state });
      li.append(el("div", { class: "state", text: `${t(a.severity)} · ${t(a.state)}` }));
      li.append(el("div", { text: a.message }));
      li.append(el("div", { class: "meta", text: `${a.device_id} · ${time(a.fired_at)}` }));
      if (a.acknowledged) {
        li.append(el("div", { class: "meta", text: `${t("acknowledged_by")} ${a.acknowledged.by}${a.acknowledged.comment ? `: ${a.acknowledged.comment}` : ""}` }));
      } else if (a.state === "firing") {
        const b = el("button", { type: "button", "data-ack": a.alert_id, text: t("acknowledge") });
        b.addEventListener("click", () => acknowledge(a.alert_id));
        li.append(b);
      }
      list.append(li);
    }
    if (focused) {
      const again = list.querySelector(`button[data-ack="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  function render() {
    if ($("#operator").hidden) return;
    renderTiles();
    renderMarkers();
    renderAlerts();
  }

  // Views: the operator's and the environment officer's, one shown at a time.
  const VIEWS = ["operator", "environment", "installer"];
  let view = "operator";
  function showView(name) {
    view = name;
    for (const v of VIEWS) $(`#${v}`).hidden = v !== name;
    for (const b of document.querySelectorAll("#views button")) {
      b.setAttribute("aria-pressed", String(b.dataset.view === name));
    }
    if (name === "operator") {
      if (map) map.invalidateSize();
      render();
    } else if (name === "environment") {
      fillStations();
      loadEnvironment().catch(() => {});
      loadInbox().catch(() => {});
    }
  }

  // The installer's view: register a device (the API's checks, every problem at once), its
  // MQTT account shown this once, then its commissioning checklist turning green live as its
  // first messages arrive, with the raw message and what the decoder made of it.
  async function register(event) {
    event.preventDefault();
    const body = {};
    for (const [k, v] of new FormData($("#register"))) {
      if (v === "") continue;
      body[k] = ["lat", "lon", "expected_interval_s"].includes(k) && !Number.isNaN(Number(v)) ? Number(v) : v;
    }
    const r = await api("/api/v1/devices", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const out = await r.json().catch(() => ({}));
    const problems = $("#register-problems");
    problems.replaceChildren();
    if (!r.ok) {
      const list = out.problems && out.problems.length ? out.problems : [{ field: "", message: out.message || r.statusText }];
      for (const p of list) {
        problems.append(el("li", { "data-field": p.field, text: p.field ? `${t(p.field)} (${p.field}): ${p.message}` : p.message }));
      }
      return;
    }
    if (out.mqtt && out.mqtt.password) {
      $("#cred-username").textContent = out.mqtt.username;
      $("#cred-password").textContent = out.mqtt.password;
      $("#cred-client").textContent = out.mqtt.client_id;
      $("#cred-topic").textContent = out.mqtt.topic;
      $("#credentials").hidden = false;
    }
    $("#register").reset();
    watch(out.device_id);
  }

  let watching = null;
  function watch(id) {
    if (watching) watching.close();
    $("#watched").textContent = id;
    $("#commissioning").hidden = false;
    $("#raw").textContent = t("no_message");
    $("#decoded").replaceChildren();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/devices/${encodeURIComponent(id)}/live?token=${encodeURIComponent(state.token)}`);
    watching = ws;
    let again = null;
    const recheck = () => {
      clearTimeout(again);
      again = setTimeout(async () => {
        const r = await api(`/api/v1/devices/${encodeURIComponent(id)}/commissioning`);
        if (r.ok && watching === ws) showChecklist(await r.json());
      }, 300);
    };
    const poll = setInterval(() => (watching === ws ? recheck() : clearInterval(poll)), 3000);
    ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.stream === "checklist") showChecklist(frame.data);
      else if (frame.stream === "device") { showMessage(frame.data); recheck(); }
      else if (frame.stream === "readings") recheck();
    };
  }

  function showChecklist(list) {
    const verdict = $("#verdict");
    verdict.dataset.verdict = list.verdict;
    verdict.textContent = t(list.verdict);
    $("#checklist").replaceChildren(...list.items.map((i) =>
      el("li", { "data-item": i.item, "data-status": i.status, text: `${t(i.item)} — ${t(i.status)}: ${(state.lang === "vi" && i.evidence_vi) || i.evidence}` })));
  }

  function showMessage(m) {
    $("#raw").textContent = m.raw_text != null ? m.raw_text : m.withheld || `base64: ${m.raw_base64 || ""}`;
    $("#decoded").replaceChildren(
      ...m.readings.map((r) => el("li", { "data-quality": r.quality, text: `${r.metric}${r.channel ? ` (${r.channel})` : ""} = ${number(r.value, 3)} ${r.unit} · ${r.quality}${r.quality_reason ? ` (${r.quality_reason})` : ""}` })),
      ...m.rejections.map((x) => el("li", { class: "rejected", text: `${t("rejected")}: ${x.code || ""} ${x.reason || ""}`.trim() })));
  }

  // The environment officer's view of one station: its hourly and daily AQI with the band as
  // Decision 1459 names and colours it, its QCVN exceedances, and a chart of its hourly means.
  const HOUR = 3600000;
  function fillStations() {
    const select = $("#env-station");
    const stations = [...state.devices.values()]
      .filter((d) => d.kind === "air_quality" || d.kind === "wastewater")
      .sort((a, b) => a.device_id.localeCompare(b.device_id));
    const current = select.value;
    select.replaceChildren(...stations.map((d) =>
      el("option", { value: d.device_id, text: `${d.device_id}${d.name ? ` · ${d.name}` : ""}` })));
    if (stations.some((d) => d.device_id === current)) select.value = current;
  }

  function rangeFrom() {
    return Date.now() - ($("#env-range").value === "7d" ? 7 * 24 : 24) * HOUR;
  }

  function limitText(limit) {
    if (!limit) return "";
    if (limit.max != null) return `≤ ${number(limit.max)}`;
    return `${number(limit.low)}–${number(limit.high)}`;
  }

  function showAqi(id, rows) {
    const card = $(id);
    const latest = rows.filter((r) => r.aqi != null).sort((a, b) => (a.window_start < b.window_start ? 1 : -1))[0];
    card.querySelector(".big").textContent = latest ? String(latest.aqi) : "–";
    const band = card.querySelector(".band");
    band.replaceChildren();
    if (latest && latest.band) {
      const sw = el("span", { class: "swatch" });
      sw.style.background = latest.band.colour;
      band.append(sw, latest.band[state.lang] || latest.band.vi);
    }
    card.querySelector(".small").textContent = latest
      ? `${t("dominant")}: ${latest.dominant || "–"} · ${time(latest.window_end)}`
      : t("no_aqi");
    // The band's health advice, for the public and for sensitive groups.
    const advice = card.querySelector(".advice");
    advice.replaceChildren();
    const known = latest && latest.band && state.bands.find((b) => b.level === latest.band.level);
    if (known) {
      for (const who of ["general", "sensitive"]) {
        advice.append(el("dt", { text: t(`advice_${who}`) }),
          el("dd", { "data-advice": who, text: known.advice[who][state.lang] || known.advice[who].vi }));
      }
    }
  }

  let chart = null;
  let windows = [];
  let limits = { regulation: "", limits: [] };
  // The air station's latest PM2.5 forecast (none for other stations).
  let forecast = [];
  // Loads overlap when the officer switches station quickly: only the latest may draw.
  let environmentLoad = 0;
  async function loadEnvironment() {
    const id = $("#env-station").value;
    if (!id) return;
    const mine = ++environmentLoad;
    const stale = () => mine !== environmentLoad;
    const from = rangeFrom();
    const q = (path) => api(`${path}${path.includes("?") ? "&" : "?"}device_id=${encodeURIComponent(id)}&from=${from}`).then((r) => r.json());
    const d = state.devices.get(id);
    $("#env-aqi").hidden = !d || d.kind !== "air_quality";
    forecast = [];
    if (d && d.kind === "air_quality") {
      const [hourly, daily, ahead] = await Promise.all([
        q("/api/v1/aqi?resolution=1h"),
        api(`/api/v1/aqi?resolution=1d&device_id=${encodeURIComponent(id)}&from=${Date.now() - 8 * 24 * HOUR}`).then((r) => r.json()),
        api(`/api/v1/forecast?device_id=${encodeURIComponent(id)}`).then((r) => r.json())
          .catch(() => ({ forecasts: [] })),
      ]);
      if (stale()) return;
      forecast = ahead.forecasts || [];
      showAqi("#env-aqi-1h", hourly.aqi || []);
      showAqi("#env-aqi-1d", daily.aqi || []);
    }
    const exceedances = (await q("/api/v1/exceedances")).exceedances || [];
    if (stale()) return;
    const body = $("#env-exceedances tbody");
    body.replaceChildren();
    if (!exceedances.length) body.append(el("tr", {}, el("td", { colspan: "8", text: t("no_exceedances") })));
    for (const e of exceedances.sort((a, b) => (a.window_start < b.window_start ? 1 : -1))) {
      body.append(el("tr", { "data-status": e.status },
        el("td", { text: e.metric }), el("td", { text: e.regulation }), el("td", { text: e.period }),
        el("td", { text: `${limitText(e.limit)} ${e.unit}` }), el("td", { text: `${number(e.value)} ${e.unit}` }),
        el("td", { text: `× ${number(e.multiple, 2)}` }), el("td", { text: time(e.window_start) }),
        el("td", { text: t(e.status) })));
    }
    const [means, held] = await Promise.all([
      q("/api/v1/aggregates?resolution=1h"),
      api(`/api/v1/devices/${encodeURIComponent(id)}/limits`).then((r) => r.json())
        .catch(() => ({ regulation: "", limits: [] })),
    ]);
    if (stale()) return;
    windows = means.aggregates || [];
    limits = held;
    const metrics = [...new Set(windows.map((w) => w.metric))].sort();
    const pick = $("#env-metric");
    const chosen = metrics.includes(pick.value) ? pick.value : metrics[0];
    pick.replaceChildren(...metrics.map((m) => el("option", { value: m, text: m })));
    if (chosen) pick.value = chosen;
    drawChart();
  }

  function tick(ms) {
    return new Intl.DateTimeFormat(state.lang === "vi" ? "vi-VN" : "en-GB", {
      timeZone: ZONE, day: "2-digit", month: "2-digit", hour: "2-digit", minute: "2-digit",
    }).format(new Date(ms));
  }

  function drawChart() {
    const metric = $("#env-metric").value;
    const rows = windows.filter((w) => w.metric === metric)
      .sort((a, b) => (a.window_start < b.window_start ? -1 : 1));
    const box = $("#chart");
    if (chart) { chart.destroy(); chart = null; }
    box.replaceChildren();
    box.dataset.points = String(rows.length);
    if (!rows.length) { box.append(el("p", { text: t("no_data") })); return; }
    // PM2.5's forecast hours after the observed ones, with their band; joined to the last
    // observed hour when that hour is the forecast's origin (an origin can be older: an hour
    // with too little capture makes no forecast, and the two answers can cross an hour).
    const lastEnd = Date.parse(rows[rows.length - 1].window_end);
    const ahead = metric === "pm25" ? forecast.filter((f) => Date.parse(f.target) > lastEnd) : [];
    const join = ahead.length > 0 && Date.parse(ahead[0].origin) === lastEnd;
    const observed = rows.length;
    const xs = rows.map((w) => Date.parse(w.window_start) / 1000)
      .concat(ahead.map((f) => Date.parse(f.target) / 1000 - HOUR / 1000));
    box.dataset.forecast = String(ahead.length);
    const pad = (values) => values.concat(ahead.map(() => null));
    const joined = (pick) => rows.map((w, i) => (join && i === observed - 1 ? w.mean : null)).concat(ahead.map(pick));
    const unit = rows[0].unit;
    // The station's 1-hour limit for the metric, drawn as a line (two for a band, as pH's).
    const limit = (limits.limits || []).find((l) => l.metric === metric && l.period === "1h" &&
      (!l.channel || l.channel === rows[0].channel));
    const lines = [];
    if (limit && limit.limit.max != null) lines.push(["≤", limit.limit.max]);
    if (limit && limit.limit.low != null) lines.push(["≥", limit.limit.low], ["≤", limit.limit.high]);
    box.dataset.limit = lines.map((l) => l[1]).join(",");
    chart = new uPlot({
      width: Math.max(300, box.clientWidth || 800), height: 300,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), ZONE),
      // Ticks in the chosen language's format and the province's time zone.
      axes: [
        { space: 90, values: (u, splits) => splits.map((ts) => tick(ts * 1000)) },
        { values: (u, splits) => splits.map((v) => number(v)) },
      ],
      series: [
        { label: state.lang === "vi" ? "Thời gian" : "Time", value: (u, ts) => (ts == null ? "–" : tick(ts * 1000)) },
        { label: `${metric} (${unit})`, stroke: "#123c69", width: 2, value: (u, v) => (v == null ? "–" : number(v)) },
        { label: "min", stroke: "#9aa5b1", dash: [4, 4] },
        { label: "max", stroke: "#b3261e", dash: [4, 4] },
        ...lines.map(([sign, v]) => ({
          label: `${limits.regulation} ${t("limit").toLowerCase()} ${sign} ${number(v)}`,
          stroke: "#7e0023", width: 2, dash: [10, 5], points: { show: false }, value: () => number(v),
        })),
        ...(ahead.length ? [
          { label: t("forecast"), stroke: "#c75000", width: 2, dash: [2, 3], value: (u, v) => (v == null ? "–" : number(v)) },
          { label: `${t("forecast_band")} ↓`, stroke: "#f0a868", value: (u, v) => (v == null ? "–" : number(v)) },
          { label: `${t("forecast_band")} ↑`, stroke: "#f0a868", value: (u, v) => (v == null ? "–" : number(v)) },
        ] : []),
      ],
      // The band between the forecast's low and high lines.
      bands: ahead.length ? [{ series: [5 + lines.length + 1, 5 + lines.length], fill: "rgba(199, 80, 0, 0.15)" }] : [],
    }, [xs, pad(rows.map((w) => w.mean)), pad(rows.map((w) => w.min)), pad(rows.map((w) => w.max)),
      ...lines.map(([, v]) => xs.map(() => v)),
      ...(ahead.length ? [joined((f) => f.pm25), joined((f) => f.pm25_low), joined((f) => f.pm25_high)] : [])], box);
  }

  async function downloadCsv() {
    const id = $("#env-station").value;
    const metric = $("#env-metric").value;
    if (!id || !metric) return;
    const r = await api(`/api/v1/aggregates?resolution=1h&format=csv&device_id=${encodeURIComponent(id)}&metric=${encodeURIComponent(metric)}&from=${rangeFrom()}`);
    const a = el("a", { href: URL.createObjectURL(await r.blob()), download: `${id}-${metric}-1h.csv` });
    document.body.append(a);
    a.click();
    a.remove();
  }

  async function acknowledge(id) {
    const comment = window.prompt(t("comment_prompt"), "") || "";
    const r = await api(`/api/v1/alerts/${encodeURIComponent(id)}/ack`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ comment }),
    });
    const body = await r.json().catch(() => ({}));
    if (body.alert) onAlert(body.alert);
    else if (!r.ok && body.message) window.alert(body.message);
  }

  function onAlert(a) {
    if (a.state === "resolved") state.alerts.delete(a.alert_id);
    else state.alerts.set(a.alert_id, a);
    onInboxAlert(a);
  }

  // The environment officer's alert inbox: filters, acknowledge or resolve with a comment, and
  // each alert's transitions. Rows stay put when their alert changes state under the officer's
  // eyes (the row shows the new state); a reload of the filter drops what no longer matches.
  const inbox = new Map(); // alert_id -> alert
  const opened = new Set(); // alert ids whose transitions are shown
  function inboxQuery() {
    const q = new URLSearchParams();
    const add = (k, v) => { if (v) q.set(k, v); };
    add("state", $("#inbox-state").value);
    add("severity", $("#inbox-severity").value);
    add("category", $("#inbox-category").value);
    if ($("#inbox-this-station").checked) add("device_id", $("#env-station").value);
    q.set("from", String(Date.now() - 30 * 24 * HOUR));
    q.set("limit", "200");
    return q;
  }

  function inboxWants(a) {
    const q = inboxQuery();
    const within = (k, v) => !q.get(k) || q.get(k).split(",").includes(v);
    return within("state", a.state) && within("severity", a.severity) && within("category", a.category) &&
      within("device_id", a.device_id);
  }

  let inboxLoad = 0;
  async function loadInbox() {
    const mine = ++inboxLoad;
    const r = await api(`/api/v1/alerts?${inboxQuery()}`);
    if (!r.ok) return;
    const alerts = (await r.json()).alerts || [];
    if (mine !== inboxLoad) return; // a newer filter's answer draws instead
    const live = new Map(inbox);
    inbox.clear();
    for (const a of alerts) {
      // A live update that came while the list was being read stays.
      const seen = live.get(a.alert_id);
      inbox.set(a.alert_id, seen && (RANK[seen.state] ?? 0) > (RANK[a.state] ?? 0) ? seen : a);
    }
    await renderInbox();
  }

  // An alert only moves on (firing, acknowledged, resolved): an answer that arrives late never
  // takes a row back.
  const RANK = { firing: 0, acknowledged: 1, resolved: 2 };
  function newer(a) {
    const had = inbox.get(a.alert_id);
    return !had || (RANK[a.state] ?? 0) >= (RANK[had.state] ?? 0);
  }

  let inboxPending = false;
  function onInboxAlert(a) {
    if ($("#environment").hidden) return;
    if ((inbox.has(a.alert_id) || inboxWants(a)) && newer(a)) {
      inbox.set(a.alert_id, a);
      // A snapshot brings many at once: draw once for them.
      if (!inboxPending) {
        inboxPending = true;
        setTimeout(() => { inboxPending = false; renderInbox().catch(() => {}); }, 250);
      }
    }
  }

  function reasonText(r) {
    return r ? t(`reason_${r}`) : "";
  }

  // Each shown alert's transitions, read again only when its state moves (a redraw for another
  // alert's update reads nothing). Kept only once they include the transition to that state.
  const transitionsRead = new Map(); // alert_id -> { state, lang, cell }
  const REACHED_BY = { firing: "fired", acknowledged: "acknowledged", resolved: "resolved" };
  async function transitionsOf(a) {
    const had = transitionsRead.get(a.alert_id);
    if (had && had.state === a.state && had.lang === state.lang) return had.cell;
    const cell = await readTransitions(a.alert_id);
    if (cell.querySelector(`li[data-transition="${REACHED_BY[a.state]}"]`)) {
      transitionsRead.set(a.alert_id, { state: a.state, lang: state.lang, cell });
    }
    return cell;
  }

  async function readTransitions(id) {
    const r = await api(`/api/v1/alerts/${encodeURIComponent(id)}`);
    if (!r.ok) return el("td", { colspan: "6", text: t("no_data") });
    const detail = await r.json();
    const list = el("ol", { class: "transitions" });
    for (const x of detail.transitions || []) {
      const parts = [`${time(x.at)} · ${t(`transition_${x.transition}`)}`];
      if (x.by) parts.push(`${t("by")} ${x.by}`);
      if (x.comment) parts.push(`“${x.comment}”`);
      if (x.reason) parts.push(`${t("reason")}: ${reasonText(x.reason)}`);
      list.append(el("li", { "data-transition": x.transition, text: parts.join(" · ") }));
    }
    return el("td", { colspan: "6" }, list);
  }

  let inboxRendering = Promise.resolve();
  function renderInbox() {
    inboxRendering = inboxRendering.then(drawInbox, drawInbox);
    return inboxRendering;
  }

  async function drawInbox() {
    const body = $("#inbox tbody");
    const rows = [...inbox.values()].sort((a, b) => (a.fired_at < b.fired_at ? 1 : -1));
    const out = [];
    if (!rows.length) out.push(el("tr", {}, el("td", { colspan: "6", text: t("no_inbox") })));
    for (const a of rows) {
      const device = state.devices.get(a.device_id);
      const tr = el("tr", { "data-alert": a.alert_id, "data-device": a.device_id, "data-state": a.state, "data-severity": a.severity },
        el("td", { text: t(a.severity) }),
        el("td", { class: "state", text: t(a.state) }),
        el("td", { text: device && device.name ? `${device.name} (${a.device_id})` : a.device_id }),
        el("td", { text: a.message }),
        el("td", { text: time(a.fired_at) }));
      const actions = el("td", { class: "actions" });
      if (a.state !== "resolved") {
        const comment = el("input", { type: "text", "aria-label": `${t("comment")} ${a.alert_id}`, placeholder: t("comment"), maxlength: "2000", "data-comment": a.alert_id });
        actions.append(comment);
        if (a.state === "firing") {
          const ack = el("button", { type: "button", "data-inbox-ack": a.alert_id, text: t("acknowledge") });
          ack.addEventListener("click", () => act(a.alert_id, "ack", comment.value).catch(() => {}));
          actions.append(ack);
        }
        const resolve = el("button", { type: "button", "data-inbox-resolve": a.alert_id, text: t("resolve") });
        resolve.addEventListener("click", () => act(a.alert_id, "resolve", comment.value).catch(() => {}));
        actions.append(resolve);
      }
      const more = el("button", { type: "button", "data-details": a.alert_id, "aria-expanded": String(opened.has(a.alert_id)),
        text: opened.has(a.alert_id) ? t("hide_details") : t("details") });
      more.addEventListener("click", () => {
        if (opened.has(a.alert_id)) {
          opened.delete(a.alert_id);
          transitionsRead.delete(a.alert_id);
        } else {
          opened.add(a.alert_id);
        }
        renderInbox().catch(() => {});
      });
      actions.append(more);
      tr.append(actions);
      out.push(tr);
      if (opened.has(a.alert_id)) out.push(el("tr", { class: "detail", "data-detail": a.alert_id }, await transitionsOf(a)));
    }
    // Keep what the officer is typing: a comment survives a redraw.
    const typed = new Map([...body.querySelectorAll("input[data-comment]")].map((i) => [i.dataset.comment, i.value]));
    const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.comment : null;
    body.replaceChildren(...out);
    for (const i of body.querySelectorAll("input[data-comment]")) {
      if (typed.has(i.dataset.comment)) i.value = typed.get(i.dataset.comment);
      if (focused && i.dataset.comment === focused) i.focus();
    }
  }

  // Acknowledge or resolve from the inbox: the answer says what happened (200 the new state,
  // 409 who was first, 202 not yet answered, 4xx why not).
  async function act(id, action, comment) {
    const say = $("#inbox-message");
    if (action === "resolve" && !comment.trim()) {
      say.textContent = t("comment_needed");
      return;
    }
    const r = await api(`/api/v1/alerts/${encodeURIComponent(id)}/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ comment }),
    });
    const body = await r.json().catch(() => ({}));
    if (body.alert) {
      say.textContent = `${id}: ${t(body.alert.state)}`;
      onAlert(body.alert);
      if (newer(body.alert)) inbox.set(id, body.alert);
    } else if (r.status === 202) {
      say.textContent = t("pending_reply");
    } else {
      say.textContent = body.message || String(r.status);
    }
    await renderInbox();
  }

  // The fleet (positions, online) from the map route; online is a matter of time, so it is
  // read again every 30 s.
  async function loadFleet() {
    const r = await api("/api/v1/map");
    if (!r.ok) return;
    const { fields, devices, violations_since: since } = await r.json();
    state.violationsSince = since ? Date.parse(since) : 0;
    const listed = await (await api("/api/v1/devices")).json();
    const details = new Map(listed.devices.map((d) => [d.device_id, d]));
    for (const row of devices) {
      const d = Object.fromEntries(fields.map((f, i) => [f, row[i]]));
      const shown = details.get(d.device_id) || {};
      d.name = shown.name;
      d.road_segment = shown.road_segment;
      if (d.congestion && !state.traffic.has(d.device_id)) state.traffic.set(d.device_id, { level: d.congestion });
      state.devices.set(d.device_id, d);
      if (!state.latest.has(d.device_id)) {
        state.latest.set(d.device_id, new Map(Object.entries(d.latest || {}).map(([k, v]) => [k, { value: v }])));
      }
    }
    render();
    if (view === "environment") {
      const had = $("#env-station").value;
      fillStations();
      if (!had) loadEnvironment().catch(() => {});
    }
  }

  const SUBSCRIPTIONS = [
    { stream: "readings", max_rate: 1 },
    { stream: "aqi", resolution: "1h" },
    { stream: "alerts" },
    { stream: "status" },
    { stream: "traffic", resolution: "5m" },
  ];

  function onData(frame) {
    const d = frame.data;
    switch (frame.stream) {
      case "readings": {
        const key = d.channel ? `${d.channel}/${d.metric}` : d.metric;
        if (!state.latest.has(d.device_id)) state.latest.set(d.device_id, new Map());
        state.latest.get(d.device_id).set(key, { value: d.value, unit: d.unit });
        break;
      }
      case "aqi":
        state.aqi.set(d.device_id, { aqi: d.aqi, band: d.band });
        break;
      case "alerts":
        onAlert(d);
        break;
      case "status":
        state.statuses.set(d.device_id, d.status);
        break;
      case "traffic":
        if (d.record === "flow") {
          const had = state.traffic.get(d.device_id);
          if (!had || !had.window_start || had.window_start <= d.window_start) state.traffic.set(d.device_id, d);
        }
        break;
    }
  }

  function remember(stream, pos) {
    const list = (state.positions[stream] = (state.positions[stream] || []).filter((p) => p[0] !== pos[0]));
    list.push(pos);
  }

  let renderPending = false;
  function renderSoon() {
    if (renderPending) return;
    renderPending = true;
    setTimeout(() => { renderPending = false; render(); }, 250);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/ws?token=${encodeURIComponent(state.token)}`);
    state.socket = ws;
    ws.onopen = () => {
      for (const s of SUBSCRIPTIONS) {
        const request = Object.assign({ op: "subscribe" }, s);
        if (state.epoch && state.positions[s.stream]) {
          request.recover = { epoch: state.epoch, position: state.positions[s.stream] };
        }
        ws.send(JSON.stringify(request));
      }
    };
    ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (!frame.op) {
        // How many live frames came, for whoever watches the page (the browser test does).
        document.body.dataset.liveFrames = String(Number(document.body.dataset.liveFrames || 0) + 1);
        onData(frame);
        remember(frame.stream, frame.pos);
        renderSoon();
        return;
      }
      if (frame.op === "subscribed") {
        state.epoch = frame.epoch;
        state.positions[frame.stream] = frame.position;
        if (!frame.recovered && frame.stream === "alerts") {
          state.alerts.clear();
          // What changed while the page was away is not in a fresh snapshot: read it again.
          if (!$("#environment").hidden) loadInbox().catch(() => {});
        }
        for (const f of frame.snapshot || frame.missed || []) onData(f);
        state.retry = 0;
        setStatus("live");
        renderSoon();
      } else if (frame.op === "position") {
        state.positions[frame.stream] = frame.position;
      } else if (frame.op === "reset") {
        delete state.positions[frame.stream];
      } else if (frame.op === "closed" && /revoked/.test(frame.reason || "")) {
        signOut(frame.reason);
      }
    };
    ws.onclose = () => {
      if ($("#views").hidden) return;
      setStatus("reconnecting");
      const wait = Math.min(10000, 500 * 2 ** state.retry++);
      setTimeout(connect, wait);
    };
  }

  let started = false;
  async function start() {
    if (started) return;
    started = true;
    makeMap();
    await loadFleet();
    setInterval(() => loadFleet().catch(() => {}), 30000);
    loadQuality().catch(() => {});
    setInterval(() => loadQuality().catch(() => {}), 60000);
    connect();
  }

  document.addEventListener("DOMContentLoaded", () => {
    applyLanguage();
    $("#lang").addEventListener("change", (e) => {
      state.lang = e.target.value;
      localStorage.setItem("ioc.lang", state.lang);
      applyLanguage();
    });
    for (const b of document.querySelectorAll("#views button")) {
      b.addEventListener("click", () => {
        history.replaceState(null, "", `${location.pathname}${location.search}#${b.dataset.view}`);
        showView(b.dataset.view);
      });
    }
    $("#env-station").addEventListener("change", () => {
      loadEnvironment().catch(() => {});
      if ($("#inbox-this-station").checked) loadInbox().catch(() => {});
    });
    $("#env-range").addEventListener("change", () => loadEnvironment().catch(() => {}));
    $("#env-metric").addEventListener("change", drawChart);
    for (const f of ["#inbox-state", "#inbox-severity", "#inbox-category", "#inbox-this-station"]) {
      $(f).addEventListener("change", () => loadInbox().catch(() => {}));
    }
    $("#env-csv").addEventListener("click", () => downloadCsv().catch(() => {}));
    $("#register").addEventListener("submit", (e) => register(e).catch(() => {}));
    $("#watch-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const id = $("#watch-id").value.trim();
      if (id) watch(id);
    });
    for (const b of document.querySelectorAll("button.copy")) {
      b.addEventListener("click", () => {
        const text = $(`#${b.dataset.copy}`).textContent;
        if (navigator.clipboard) navigator.clipboard.writeText(text).then(() => { b.textContent = t("copied"); }, () => {});
      });
    }
    $("#login").addEventListener("submit", (e) => {
      e.preventDefault();
      signIn($("#token").value).catch(() => {});
    });
    const params = new URLSearchParams(location.search);
    const given = params.get("token");
    if (given) {
      params.delete("token");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
    }
    const token = given || sessionStorage.getItem("ioc.token");
    if (token) signIn(token).catch(() => {});
    else signOut();
  });
})();
