// The camera view (ID decoded, live picture, uptime timeline, quality history, recordings) and the clip
// export form (police and admin only; the API refuses everyone else as well).
import { api, live, ApiError } from "./api.js";
import { t } from "./i18n.js";
import { LivePlayer } from "./live.js";
import { localInput, recordingsPanel } from "./recordings.js";
import { placementPanel } from "./sites.js";
import { clock, duration, el, grade, pct, saveBlob, stateLabel, svg } from "./util.js";

const PERIODS = ["24h", "7d", "30d"];
const STATE_COLORS = { online: "#2e9d4f", uploading: "#1f8a70", degraded: "#e0a106", offline: "#d23b3b", unknown: "#555" };
export const CLIP_ROLES = ["police", "admin"];
const ID_RE = /^\d{20}$/;

function timeline(hist) {
  const t0 = Date.parse(hist.from), t1 = Date.parse(hist.to), span = Math.max(1, t1 - t0);
  const x = (iso) => ((Date.parse(iso) - t0) / span) * 1000;
  const bars = hist.intervals.map((iv) => {
    const a = x(iv.from), b = iv.to ? x(iv.to) : 1000;
    return svg("rect", { x: a, y: 0, width: Math.max(0.5, b - a), height: 30, fill: STATE_COLORS[iv.state] || "#555", "data-state": iv.state },
      svg("title", {}, `${stateLabel(iv.state)} ${clock(iv.from)} – ${iv.to ? clock(iv.to) : "…"}`));
  });
  return svg("svg", { viewBox: "0 0 1000 30", preserveAspectRatio: "none", class: "timeline" },
    svg("rect", { x: 0, y: 0, width: 1000, height: 30, fill: STATE_COLORS.unknown }), ...bars);
}

function figures(f) {
  return el("div", { class: "figures" },
    ["online", "upload", "intact"].map((k) => el("div", { class: `rate ${grade(f[`${k}_rate`], 0.98)}`, dataset: { rate: k } },
      el("span", { class: "rate-label" }, t(`rate.${k}`)), el("span", { class: "rate-value" }, pct(f[`${k}_rate`])))));
}

/** Quality history as the analysis reports it: a table of its rows, whatever the fields. */
function qualityTable(q) {
  const rows = Array.isArray(q) ? q : Object.values(q).find((v) => Array.isArray(v)) || [];
  if (!rows.length) return el("p", { class: "muted" }, t("camera.noQuality"));
  const cols = Object.keys(rows[0]).filter((k) => typeof rows[0][k] !== "object").slice(0, 7);
  return el("table", { class: "list" },
    el("thead", {}, el("tr", {}, cols.map((c) => el("th", {}, c)))),
    el("tbody", {}, rows.slice(-100).reverse().map((r) => el("tr", {}, cols.map((c) => el("td", {}, r[c] ?? ""))))));
}

/** The clip export form; only rendered for roles that may export. */
export function clipForm(me, deviceId = "") {
  if (!CLIP_ROLES.includes(me.role)) {
    return el("p", { class: "forbidden", dataset: { forbidden: "clip" } }, t("clip.forbidden", { role: me.role }));
  }
  const now = new Date();
  const result = el("p", { class: "clip-result" });
  const field = (key, input) => el("label", {}, el("span", {}, t(key)), input);
  const dev = el("input", { name: "device", required: true, pattern: "\\d{20}", value: deviceId, size: 22 });
  const start = el("input", { name: "start", type: "datetime-local", step: 1, required: true, value: localInput(new Date(now - 10 * 60000)) });
  const end = el("input", { name: "end", type: "datetime-local", step: 1, required: true, value: localInput(new Date(now - 5 * 60000)) });
  const reason = el("textarea", { name: "reason", required: true, minlength: 4, maxlength: 2000, rows: 2 });
  const caseNo = el("input", { name: "case", maxlength: 100 });
  const button = el("button", { type: "submit" }, t("clip.submit"));
  const form = el("form", { class: "clip-form", dataset: { form: "clip" } },
    field("clip.device", dev), field("clip.start", start), field("clip.end", end),
    field("clip.reason", reason), field("clip.case", caseNo), button, result);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    button.disabled = true;
    result.textContent = t("common.loading");
    try {
      const params = { start: new Date(start.value).toISOString(), end: new Date(end.value).toISOString(), reason: reason.value, case: caseNo.value };
      const r = await api(`/api/v1/devices/${dev.value}/clip.mp4`, { params, raw: true });
      const blob = await r.blob();
      const digest = [...new Uint8Array(await crypto.subtle.digest("SHA-256", await blob.arrayBuffer()))]
        .map((b) => b.toString(16).padStart(2, "0")).join("");
      saveBlob(blob, `${dev.value}_${params.start.replace(/[:.]/g, "")}.mp4`);
      result.textContent = t("clip.done", { n: blob.size, sha: digest });
    } catch (err) {
      result.textContent = t("clip.failed", { e: err instanceof ApiError ? err.detail : err.message });
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

export function mountClip(root, deviceId, me) {
  root.replaceChildren(el("div", { class: "page" }, el("h1", {}, t("clip.title")), clipForm(me, deviceId)));
  return () => {};
}

export function mountCamera(root, deviceId, me, params = new URLSearchParams()) {
  if (!deviceId || !ID_RE.test(deviceId)) {
    const input = el("input", { placeholder: t("camera.search"), pattern: "\\d{20}", size: 24, value: deviceId || "" });
    root.replaceChildren(el("div", { class: "page" }, el("h1", {}, t("nav.camera")),
      el("form", { onsubmit: (e) => { e.preventDefault(); location.hash = `#/camera/${input.value.trim()}`; } },
        input, " ", el("button", {}, t("camera.open")))));
    return () => {};
  }
  const video = el("video", { muted: true, autoplay: true, playsinline: true, controls: true });
  video.muted = true;
  const overlay = el("div", { class: "tile-overlay connecting" }, el("div", { class: "big" }, t("tile.connecting")));
  const player = new LivePlayer(video, deviceId, (st) => {
    overlay.className = `tile-overlay ${st === "playing" ? "hidden" : st}`;
    overlay.replaceChildren(el("div", { class: "big" }, t(st === "connecting" ? "tile.connecting" : "tile.unavailable")));
  });
  const details = el("div", { class: "details" }, t("common.loading"));
  const tl = el("div", { class: "timeline-box" });
  const quality = el("div", {}, t("common.loading"));
  let period = "24h";
  const periodBtns = el("div", { class: "periods" }, PERIODS.map((p) => el("button", {
    class: p === period ? "on" : "", dataset: { period: p },
    onclick: (e) => { period = p; [...e.target.parentNode.children].forEach((b) => b.classList.toggle("on", b === e.target)); loadHistory(); },
  }, p)));
  const clip = CLIP_ROLES.includes(me.role) ? clipForm(me, deviceId) : null;
  // A clicked recording fills the export form (whole seconds, widened outwards) and brings it into view.
  const pick = clip ? (a, b) => {
    clip.elements.namedItem("start").value = localInput(new Date(Math.floor(a / 1000) * 1000));
    clip.elements.namedItem("end").value = localInput(new Date(Math.ceil(b / 1000) * 1000));
    clip.dataset.picked = `${new Date(a).toISOString()}/${new Date(b).toISOString()}`;
    clip.scrollIntoView({ block: "nearest" });
    clip.elements.namedItem("reason").focus({ preventScroll: true });
  } : null;
  const recordings = recordingsPanel(deviceId, me, params, pick);
  const place = placementPanel(deviceId, me);
  const refresh = setInterval(() => recordings.refresh?.(), 60_000);
  root.replaceChildren(el("div", { class: "page camera-view", dataset: { device: deviceId } },
    el("h1", {}, t("nav.camera"), " ", deviceId),
    el("div", { class: "camera-top" },
      el("div", { class: "tile big-tile" }, video, overlay),
      details),
    el("h2", {}, t("camera.timeline")), periodBtns, tl,
    el("h2", {}, t("map.position")), place.node,
    el("h2", {}, t("camera.quality")), quality,
    el("h2", {}, t("rec.title")), recordings,
    clip ? [el("h2", {}, t("clip.title")), clip] : null));

  function renderDetails(d) {
    const f = d.id_fields || {};
    const row = (k, v) => el("tr", {}, el("th", {}, t(k)), el("td", {}, v ?? "—"));
    details.replaceChildren(el("table", { class: "kv" },
      row("camera.id", d.id),
      el("tr", {}, el("th", {}, t("alerts.state")), el("td", { class: `state-${d.state}`, dataset: { state: d.state } },
        `${stateLabel(d.state)} · ${clock(d.since)} (${duration((Date.now() - Date.parse(d.since || Date())) / 1000)})`)),
      row("camera.civil", `${f.civil_code || ""} ${f.province_name || ""}`),
      row("camera.industry", `${f.industry} ${f.industry_name || ""}`),
      row("camera.type", `${f.type} ${f.type_name || ""}`),
      row("camera.network", `${f.network} ${f.network_name || ""}`),
      row("camera.serial", f.serial),
      row("camera.agent", d.agent),
      row("camera.lastSeen", clock(d.last_seen)),
      row("camera.fps", d.fps ? d.fps.toFixed(1) : "—"),
      row("camera.bitrate", d.bitrate_bps ? `${(d.bitrate_bps / 1e6).toFixed(2)} Mbit/s` : "—")),
    d.name ? el("p", {}, d.name, d.location ? ` · ${d.location}` : "") : null);
    if (d.state === "offline") player.stop();
    else player.start();
  }

  async function loadDetails() {
    try {
      renderDetails(await api(`/api/v1/devices/${deviceId}`));
    } catch (e) {
      details.textContent = t("common.error", { e: e.message });
    }
  }

  async function loadHistory() {
    try {
      const h = await api(`/api/v1/devices/${deviceId}/history`, { params: { period } });
      tl.replaceChildren(timeline(h), figures(h.figures));
    } catch (e) {
      tl.textContent = t("common.error", { e: e.message });
    }
  }

  async function loadQuality() {
    try {
      quality.replaceChildren(qualityTable(await api(`/api/v1/devices/${deviceId}/quality`)));
    } catch (e) {
      quality.replaceChildren(el("p", { class: "muted" }, e.status === 404 ? t("camera.noQuality") : t("common.error", { e: e.message })));
    }
  }

  const onDevices = (e) => {
    if (e.detail.devices.some((d) => d.id === deviceId)) {
      loadDetails();
      loadHistory();
    }
  };
  live.addEventListener("devices", onDevices);
  loadDetails();
  loadHistory();
  loadQuality();
  return () => {
    player.stop();
    place.destroy();
    clearInterval(refresh);
    live.removeEventListener("devices", onDevices);
  };
}
