// The reports view: availability per center for a window against its targets, a chart, the
// worst cameras, and the CSV the API produces; next to it retention compliance (30 days by
// regulation) and storage per center, with every device's footage and a CSV built here.
import { api } from "./api.js";
import { t } from "./i18n.js";
import { bytes, clock, duration, el, grade, pct, saveBlob, svg, toCsv } from "./util.js";

const PERIODS = ["24h", "7d", "30d"];
const KINDS = [["online", "#2e9d4f"], ["upload", "#2f7fd1"], ["intact", "#8a5cd1"]];

/** Grouped bars per center (online / upload / intact) with each center's targets as ticks. */
function chart(centers) {
  const w = 120, h = 160, pad = 24;
  const parts = [];
  centers.forEach((c, i) => {
    const x0 = pad + i * w;
    KINDS.forEach(([k, color], j) => {
      const r = c[`${k}_rate`] ?? 0, target = c[`target_${k}`];
      const x = x0 + 10 + j * 30, bh = r * h, ty = pad + h - target * h;
      parts.push(svg("rect", { x, y: pad + h - bh, width: 24, height: bh, fill: color },
        svg("title", {}, `${c.name} ${t(`rate.${k}`)} ${pct(c[`${k}_rate`])} (${t("rate.target")} ${pct(target)})`)));
      parts.push(svg("line", { x1: x - 2, x2: x + 26, y1: ty, y2: ty, stroke: "#fff", "stroke-width": 2, "stroke-dasharray": "3 2" }));
    });
    parts.push(svg("text", { x: x0 + 55, y: pad + h + 16, "text-anchor": "middle", fill: "currentColor", "font-size": 12 }, c.name));
  });
  const legend = KINDS.map(([k, color], j) => [
    svg("rect", { x: pad + j * 110, y: 4, width: 12, height: 12, fill: color }),
    svg("text", { x: pad + j * 110 + 16, y: 14, fill: "currentColor", "font-size": 12 }, t(`rate.${k}`))]);
  return svg("svg", { viewBox: `0 0 ${pad * 2 + centers.length * w} ${h + pad + 24}`, class: "chart", role: "img" },
    svg("line", { x1: pad, x2: pad + centers.length * w, y1: pad + h, y2: pad + h, stroke: "#888" }), ...parts, ...legend.flat());
}

const CSV_HEADER = ["center", "center_name", "device_id", "keep_days", "policy_source", "footage_days",
  "recorded_hours", "oldest", "meets_retention", "status", "bytes", "completeness"];

/** One row per device, under the smallest center that holds it, non-compliant first. */
export function deviceRows(comp, stor) {
  const size = new Map(comp.centers.map((c) => [c.center, c.devices]));
  const storage = new Map();
  for (const c of stor.centers) for (const d of c.devices) storage.set(d.device_id, d);
  const rows = new Map();
  for (const c of comp.centers) {
    for (const d of c.device_rows) {
      const had = rows.get(d.device_id);
      if (!had || size.get(c.center) < size.get(had.center)) rows.set(d.device_id, { ...d, center: c.center, center_name: c.name, storage: storage.get(d.device_id) });
    }
  }
  return [...rows.values()].sort((a, b) => (a.meets_retention - b.meets_retention) || (a.footage_days - b.footage_days) || a.device_id.localeCompare(b.device_id));
}

/** The compliance per center with its storage, and the table of devices, from the two API views. */
function retention(comp, stor) {
  const storage = new Map(stor.centers.map((c) => [c.center, c]));
  const windowLabel = stor.window_s % 86400 === 0 ? t("ret.days", { n: stor.window_s / 86400 }) : duration(stor.window_s);
  const avg = (devs) => {
    const v = devs.map((d) => d.completeness).filter((x) => x !== null && x !== undefined);
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
  };
  const share = (r) => el("td", { class: `rate-cell ${grade(r, 1)}` },
    el("span", { class: "meter" }, el("span", { style: `width:${Math.round((r ?? 0) * 100)}%` })), " ", pct(r));
  const centers = el("table", { class: "list", dataset: { table: "compliance" } },
    el("thead", {}, el("tr", {}, [t("reports.center"), t("ret.meeting"), t("ret.ratio"), t("ret.stored"), t("ret.hours"),
      t("ret.completeness", { d: windowLabel })].map((h) => el("th", {}, h)))),
    el("tbody", {}, comp.centers.map((c) => {
      const st = storage.get(c.center) || { bytes: null, hours: null, devices: [] };
      const done = avg(st.devices);
      return el("tr", { class: c.meeting_retention < c.devices ? "noncompliant" : "", dataset: { center: c.center } },
        el("td", {}, c.name), el("td", { class: "meeting" }, `${c.meeting_retention} / ${c.devices}`), share(c.ratio),
        el("td", { class: "stored" }, bytes(st.bytes)), el("td", {}, st.hours === null ? "—" : duration(st.hours * 3600)),
        el("td", { class: `rate-cell ${grade(done, 0.98)}` }, pct(done)));
    })));
  const rows = deviceRows(comp, stor);
  const devices = el("table", { class: "list", dataset: { table: "retention" } },
    el("thead", {}, el("tr", {}, [t("camera.id"), t("reports.center"), t("ret.keep"), t("ret.source"), t("ret.footage"),
      t("ret.hours"), t("ret.oldest"), t("ret.stored"), t("ret.completeness", { d: windowLabel }), t("ret.status")].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((d) => el("tr", { class: d.meets_retention ? "compliant" : "noncompliant",
      dataset: { device: d.device_id, status: d.status } },
    el("td", {}, el("a", { href: `#/camera/${d.device_id}` }, d.device_id)), el("td", {}, d.center_name),
    el("td", { class: d.keep_days < comp.regulation_days ? "bad-text" : "" }, d.keep_days), el("td", {}, d.policy_source),
    el("td", {}, d.footage_days.toFixed(3)), el("td", {}, duration(d.recorded_hours * 3600)), el("td", {}, clock(d.oldest)),
    el("td", {}, bytes(d.storage?.bytes)), el("td", {}, pct(d.storage?.completeness)),
    el("td", { class: "status" }, t(`ret.s.${d.status}`))))));
  return { centers, devices, rows };
}

export function mountReports(root, params) {
  let period = params.get("period") || "30d";
  const out = el("div", {}, t("common.loading"));
  const retBox = el("div", { class: "retention" }, t("common.loading"));
  const retDevices = el("div", {});
  let last = null; // the compliance and storage views last loaded, for the CSV
  const retCsv = el("button", { class: "csv-compliance", disabled: true, onclick: () => {
    if (!last) return;
    const rows = deviceRows(last.comp, last.stor).map((d) => [d.center, d.center_name, d.device_id, d.keep_days,
      d.policy_source, d.footage_days, d.recorded_hours, d.oldest, d.meets_retention, d.status, d.storage?.bytes ?? "",
      d.storage?.completeness ?? ""]);
    saveBlob(new Blob([toCsv(CSV_HEADER, rows)], { type: "text/csv" }), `retention_compliance_${last.comp.at.slice(0, 10)}.csv`);
  } }, t("ret.csv"));
  const sel = el("select", { name: "period", onchange: (e) => { period = e.target.value; load(); } },
    PERIODS.map((p) => el("option", { value: p, selected: p === period }, p)));
  const csv = el("button", { class: "csv", onclick: async () => {
    const r = await api("/api/v1/reports/availability", { params: { period, format: "csv" }, raw: true });
    saveBlob(await r.blob(), `availability_${period}.csv`);
  } }, t("reports.csv"));
  root.replaceChildren(el("div", { class: "page reports-view" },
    el("h1", {}, t("reports.title")),
    el("div", { class: "filters" }, el("label", {}, t("reports.period"), " ", sel), csv, retCsv),
    out, retDevices));

  async function loadRetention() {
    try {
      const [comp, stor] = await Promise.all([api("/api/v1/storage/compliance"), api("/api/v1/storage")]);
      last = { comp, stor };
      const r = retention(comp, stor);
      retBox.replaceChildren(el("h2", {}, t("ret.title", { d: comp.regulation_days })),
        el("p", { class: "muted" }, t("ret.asOf", { t: clock(comp.at) }), " · ", t("ret.free", { b: bytes(stor.free_bytes) })),
        r.centers);
      retDevices.replaceChildren(el("h2", {}, t("ret.devices")), r.devices);
      retCsv.disabled = false;
    } catch (e) {
      retBox.replaceChildren(el("p", { class: "bad-text" }, t("common.error", { e: e.message })));
    }
  }

  const rateTd = (r, target) => el("td", { class: `rate-cell ${grade(r, target)}` }, pct(r));
  async function load() {
    try {
      const rep = await api("/api/v1/reports/availability", { params: { period, limit: 20 } });
      out.replaceChildren(
        el("p", { class: "muted" }, `${rep.from} — ${rep.to}`),
        chart(rep.centers),
        el("div", { class: "report-grid" }, el("div", {}, el("h2", {}, t("reports.availability")),
        el("table", { class: "list", dataset: { table: "centers" } },
          el("thead", {}, el("tr", {}, [t("reports.center"), t("reports.devices"), t("reports.monitored"),
            t("rate.online"), t("rate.upload"), t("rate.intact")].map((h) => el("th", {}, h)))),
          el("tbody", {}, rep.centers.map((c) => el("tr", { dataset: { center: c.center } },
            el("td", {}, `${"· ".repeat(c.level - 1)}${c.name}`), el("td", {}, c.devices), el("td", {}, duration(c.monitored_s)),
            rateTd(c.online_rate, c.target_online), rateTd(c.upload_rate, c.target_upload), rateTd(c.intact_rate, c.target_intact)))))),
        retBox),
        el("h2", {}, t("reports.worst")),
        el("table", { class: "list", dataset: { table: "devices" } },
          el("thead", {}, el("tr", {}, [t("camera.id"), "", t("reports.monitored"), t("rate.online"), t("rate.upload"), t("rate.intact")]
            .map((h) => el("th", {}, h)))),
          el("tbody", {}, rep.devices.map((d) => el("tr", {},
            el("td", {}, el("a", { href: `#/camera/${d.device_id}` }, d.device_id)), el("td", {}, d.name),
            el("td", {}, duration(d.monitored_s)), rateTd(d.online_rate, 0.98), rateTd(d.upload_rate, 1), rateTd(d.intact_rate, 0.98))))));
    } catch (e) {
      out.replaceChildren(el("p", { class: "bad-text" }, t("common.error", { e: e.message })), retBox);
    }
  }
  load();
  loadRetention();
  return () => {};
}
