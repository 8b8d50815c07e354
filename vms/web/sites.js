// Coverage of key places: the map view (figures per center and kind against the documents' targets,
// the blind spots longest first, the district map), a site's page, the blind-spot list the wall shows,
// and a camera's position (an admin places it by clicking the map).
import { api, live } from "./api.js";
import { t } from "./i18n.js";
import { DistrictMap } from "./map.js";
import { clock, duration, el, grade, pct, saveBlob, since, stateLabel } from "./util.js";

const PERIODS = ["24h", "7d", "30d"];

/** The blind spots (uncovered now, longest first) as a list; ``render(payload)`` redraws it. */
export function blindList(limit = 30) {
  const list = el("ol", { class: "blind-spots" });
  let last = { total: 0, sites: [] };
  const render = (b = last) => {
    last = b;
    if (!b.sites.length) {
      list.replaceChildren(el("li", { class: "none" }, t("map.noBlind")));
      return;
    }
    list.replaceChildren(...b.sites.slice(0, limit).map((s) => el("li", { class: s.key ? "key" : "", dataset: { site: s.id } },
      el("a", { href: `#/site/${encodeURIComponent(s.id)}` }, s.name),
      el("span", { class: "kind" }, t(`site.${s.kind}`)),
      el("span", { class: "since" }, t("map.since", { t: clock(s.since), d: duration(since(s.since)) }),
        s.working === null ? "" : ` · ${t("map.working", { n: s.working, m: s.min_cameras })}`))),
    ...(b.total > limit ? [el("li", { class: "more" }, t("wall.more", { n: b.total - limit }))] : []));
  };
  render();
  return { node: list, render };
}

/** Keeps a blind-spot list current: fetched now and on a new snapshot, pushed on every change. */
export function followBlindSpots(render) {
  const load = () => api("/api/v1/coverage/blind-spots").then(render).catch(() => {});
  const onSites = (e) => render(e.detail.blind_spots);
  live.addEventListener("sites", onSites);
  live.addEventListener("snapshot", load);
  load();
  const tick = setInterval(() => render(), 1000); // durations grow
  return () => {
    live.removeEventListener("sites", onSites);
    live.removeEventListener("snapshot", load);
    clearInterval(tick);
  };
}

function coverageTable(rep) {
  const rows = [];
  for (const c of rep.centers) {
    rows.push(el("tr", { class: "center-row", dataset: { center: c.center } },
      el("th", { colspan: 2 }, `${"· ".repeat(c.level - 1)}${c.name}`),
      el("td", {}, `${c.covered}/${c.sites}`), el("td", { class: "rate-cell" }, pct(c.rate)), el("td"), el("td")));
    for (const k of c.kinds) {
      rows.push(el("tr", { dataset: { center: c.center, kind: k.kind, rate: k.rate ?? "", covered: k.covered, sites: k.sites } },
        el("td", {}), el("td", {}, t(`site.${k.kind}`)),
        el("td", { class: "covered" }, `${k.covered}/${k.sites}`),
        el("td", { class: `rate-cell ${grade(k.rate, k.target)}` }, pct(k.rate)),
        el("td", {}, pct(k.target)),
        el("td", { class: "uncovered" }, k.uncovered.map((s) => el("a", { href: `#/site/${encodeURIComponent(s.id)}`, title: clock(s.since) }, s.name))
          .flatMap((a, i) => (i ? [", ", a] : [a])))));
    }
  }
  return el("table", { class: "list coverage", dataset: { table: "coverage" } },
    el("thead", {}, el("tr", {}, ["", t("map.kind"), t("map.covered"), t("map.rate"), t("map.target"), t("map.blind")].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

export function mountMap(root, params) {
  let period = params.get("period") || "30d";
  const figures = el("div", { class: "coverage-figures" }, t("common.loading"));
  const blind = blindList(50);
  const box = el("div", { class: "map-box big", dataset: { map: "district" } });
  const sel = el("select", { name: "period", onchange: (e) => { period = e.target.value; load(); } },
    PERIODS.map((p) => el("option", { value: p, selected: p === period }, p)));
  const csv = el("button", { class: "csv-coverage", onclick: async () => {
    const r = await api("/api/v1/coverage", { params: { period, format: "csv" }, raw: true });
    saveBlob(await r.blob(), `coverage_${period}.csv`);
  } }, t("map.csv"));
  root.replaceChildren(el("div", { class: "map-view" },
    el("section", { class: "map-side" },
      el("h1", {}, t("map.title")),
      el("div", { class: "filters" }, el("label", {}, t("reports.period"), " ", sel), csv),
      figures,
      el("h2", {}, t("map.blind")), blind.node),
    box));
  let last = null;
  async function load() {
    try {
      last = await api("/api/v1/coverage", { params: { period } });
      figures.replaceChildren(el("p", { class: "muted" }, `${clock(last.from)} — ${clock(last.to)}`), coverageTable(last));
      figures.dataset.loaded = "1";
    } catch (e) {
      figures.replaceChildren(el("p", { class: "bad-text" }, t("common.error", { e: e.message })));
    }
  }
  const map = new DistrictMap(box, { cluster: params.get("cluster") !== "0" });
  map.load().catch((e) => box.replaceChildren(el("p", { class: "bad-text" }, t("common.error", { e: e.message }))));
  const stop = followBlindSpots(blind.render);
  const onSites = () => { clearTimeout(reload); reload = setTimeout(load, 500); };
  let reload = null;
  live.addEventListener("sites", onSites);
  load();
  window.vmsMap = map;
  window.vmsCoverage = () => last;
  return () => {
    stop();
    clearTimeout(reload);
    live.removeEventListener("sites", onSites);
    map.destroy();
    delete window.vmsMap;
    delete window.vmsCoverage;
  };
}

export function mountSite(root, siteId) {
  const details = el("div", { class: "details" }, t("common.loading"));
  const cams = el("div", {});
  const box = el("div", { class: "map-box", dataset: { map: "site" } });
  root.replaceChildren(el("div", { class: "page site-view", dataset: { site: siteId } },
    el("h1", {}, t("map.site"), " ", siteId),
    el("div", { class: "camera-top" }, box, details),
    el("h2", {}, t("map.cameras")), cams));
  async function load() {
    try {
      const s = await api(`/api/v1/sites/${encodeURIComponent(siteId)}`);
      const row = (k, v) => el("tr", {}, el("th", {}, t(k)), el("td", {}, v ?? "—"));
      details.replaceChildren(el("table", { class: "kv" },
        row("map.site", s.name), row("map.kind", t(`site.${s.kind}`)), row("map.center", s.center),
        el("tr", {}, el("th", {}, t("map.state")), el("td", { class: s.covered ? "state-online" : "state-offline", dataset: { covered: s.covered ? "1" : "0" } },
          s.covered ? t("map.coveredNow") : `${t("map.uncoveredNow")} · ${t("map.since", { t: clock(s.since), d: duration(s.for_s) })}`)),
        row("map.min", `${t("map.working", { n: s.working, m: s.min_cameras })}`),
        row("map.target", pct(s.target)), row("map.radius", s.geometry.type === "Point" ? s.radius_m : "—")));
      if (!s.cameras.length) {
        cams.replaceChildren(el("p", { class: "bad-text" }, t("map.noCameras")));
        return;
      }
      const devs = await api("/api/v1/devices", { params: { limit: 10000 } });
      const by = new Map(devs.devices.map((d) => [d.id, d]));
      cams.replaceChildren(el("table", { class: "list" }, el("tbody", {}, s.cameras.map((id) => {
        const d = by.get(id) || { state: "unknown", name: "" };
        return el("tr", { dataset: { device: id } }, el("td", {}, el("a", { href: `#/camera/${id}` }, id)), el("td", {}, d.name),
          el("td", { class: `state-${d.state}` }, stateLabel(d.state)));
      }))));
    } catch (e) {
      details.textContent = t("common.error", { e: e.message });
    }
  }
  const map = new DistrictMap(box, { focus: { site: siteId } });
  map.load().catch(() => {});
  const onChange = () => load();
  live.addEventListener("sites", onChange);
  live.addEventListener("devices", onChange);
  load();
  return () => {
    live.removeEventListener("sites", onChange);
    live.removeEventListener("devices", onChange);
    map.destroy();
  };
}

/** A camera's position and the sites it covers, on a small map; an admin places it by clicking. */
export function placementPanel(deviceId, me) {
  const info = el("div", { class: "placement" });
  const box = el("div", { class: "map-box small", dataset: { map: "camera" } });
  const node = el("div", { class: "camera-place" }, box, info);
  let map = null;
  async function load() {
    try {
      const p = await api(`/api/v1/devices/${deviceId}/place`);
      const pick = me.role === "admin" ? el("button", { class: "place", onclick: () => {
        map.setPicking(true);
        pick.textContent = t("map.pick");
      } }, t("map.place")) : null;
      const unplace = me.role === "admin" && p.sources.admin ? el("button", { class: "unplace", onclick: async () => {
        await api(`/api/v1/devices/${deviceId}/place`, { method: "DELETE" });
        load();
      } }, t("map.unplace")) : null;
      info.dataset.source = p.source || "";
      info.replaceChildren(el("table", { class: "kv" },
        el("tr", {}, el("th", {}, t("map.position")), el("td", {}, p.lon === null ? t("map.notPlaced") : `${p.lon.toFixed(6)}, ${p.lat.toFixed(6)}`)),
        el("tr", {}, el("th", {}, t("map.source")), el("td", {}, p.source ? t(`map.src.${p.source}`) : "—")),
        el("tr", {}, el("th", {}, t("map.sites")), el("td", {}, p.sites.length ? p.sites.map((s) => el("a", { href: `#/site/${encodeURIComponent(s)}` }, s))
          .flatMap((a, i) => (i ? [", ", a] : [a])) : "—"))), pick, " ", unplace);
    } catch (e) {
      info.textContent = t("common.error", { e: e.message });
    }
  }
  map = new DistrictMap(box, { focus: { camera: deviceId }, onPick: async (ll) => {
    map.setPicking(false);
    try {
      await api(`/api/v1/devices/${deviceId}/place`, { method: "PUT", body: { lon: ll.lng, lat: ll.lat } });
    } catch (e) {
      info.append(el("p", { class: "bad-text" }, t("common.error", { e: e.message })));
      return;
    }
    load();
  } });
  map.load().catch(() => {});
  load();
  return { node, destroy: () => map.destroy() };
}
