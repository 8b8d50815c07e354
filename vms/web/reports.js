// The reports view: availability per center for a window against its targets, a chart, the
// worst cameras, and the CSV the API produces.
import { api } from "./api.js";
import { t } from "./i18n.js";
import { duration, el, grade, pct, saveBlob, svg } from "./util.js";

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

export function mountReports(root, params) {
  let period = params.get("period") || "30d";
  const out = el("div", {}, t("common.loading"));
  const sel = el("select", { name: "period", onchange: (e) => { period = e.target.value; load(); } },
    PERIODS.map((p) => el("option", { value: p, selected: p === period }, p)));
  const csv = el("button", { class: "csv", onclick: async () => {
    const r = await api("/api/v1/reports/availability", { params: { period, format: "csv" }, raw: true });
    saveBlob(await r.blob(), `availability_${period}.csv`);
  } }, t("reports.csv"));
  root.replaceChildren(el("div", { class: "page reports-view" },
    el("h1", {}, t("reports.title")),
    el("div", { class: "filters" }, el("label", {}, t("reports.period"), " ", sel), csv),
    out));

  const rateTd = (r, target) => el("td", { class: `rate-cell ${grade(r, target)}` }, pct(r));
  async function load() {
    try {
      const rep = await api("/api/v1/reports/availability", { params: { period, limit: 20 } });
      out.replaceChildren(
        el("p", { class: "muted" }, `${rep.from} — ${rep.to}`),
        chart(rep.centers),
        el("table", { class: "list", dataset: { table: "centers" } },
          el("thead", {}, el("tr", {}, [t("reports.center"), t("reports.devices"), t("reports.monitored"),
            t("rate.online"), t("rate.upload"), t("rate.intact")].map((h) => el("th", {}, h)))),
          el("tbody", {}, rep.centers.map((c) => el("tr", { dataset: { center: c.center } },
            el("td", {}, `${"· ".repeat(c.level - 1)}${c.name}`), el("td", {}, c.devices), el("td", {}, duration(c.monitored_s)),
            rateTd(c.online_rate, c.target_online), rateTd(c.upload_rate, c.target_upload), rateTd(c.intact_rate, c.target_intact))))),
        el("h2", {}, t("reports.worst")),
        el("table", { class: "list", dataset: { table: "devices" } },
          el("thead", {}, el("tr", {}, [t("camera.id"), "", t("reports.monitored"), t("rate.online"), t("rate.upload"), t("rate.intact")]
            .map((h) => el("th", {}, h)))),
          el("tbody", {}, rep.devices.map((d) => el("tr", {},
            el("td", {}, el("a", { href: `#/camera/${d.device_id}` }, d.device_id)), el("td", {}, d.name),
            el("td", {}, duration(d.monitored_s)), rateTd(d.online_rate, 0.98), rateTd(d.upload_rate, 1), rateTd(d.intact_rate, 0.98))))));
    } catch (e) {
      out.textContent = t("common.error", { e: e.message });
    }
  }
  load();
  return () => {};
}
