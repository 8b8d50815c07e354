// The district map (Leaflet, vendored): the boundary and the sites drawn as vectors from GeoJSON,
// cameras at their positions coloured by state and clustered when many; a click on a camera opens
// its page (live video), on a site its page. Tiles come only from the center's own tile server when
// the config names one (never a public service); when it does not answer, the vectors still show.
import * as L from "./vendor/leaflet/leaflet-src.esm.js";
import { api, live } from "./api.js";
import { t } from "./i18n.js";
import { stateLabel } from "./util.js";

export const STATE_COLORS = { online: "#2fbf5b", uploading: "#2fbf5b", degraded: "#f2b01e", offline: "#ff4d4d",
  unknown: "#8b949e", retired: "#555d66" };
const WORST = ["offline", "degraded", "unknown", "retired", "online", "uploading"];
const CELL = 44; // px: cameras closer than this on the screen are drawn as one cluster

function worst(states) {
  return WORST.find((s) => states.includes(s)) || "unknown";
}

function siteStyle(p) {
  if (p.covered) return { color: "#4aa3ff", weight: 1.5, fillColor: "#4aa3ff", fillOpacity: 0.12, dashArray: null };
  const c = p.key ? STATE_COLORS.offline : STATE_COLORS.degraded;
  return { color: c, weight: 2, fillColor: c, fillOpacity: 0.3, dashArray: "5 4" };
}

/** A map of the district in ``container``: ``await new DistrictMap(el, opts).load()``. */
export class DistrictMap {
  constructor(container, { cluster = true, focus = null, onPick = null } = {}) {
    this.container = container;
    this.clusterOn = cluster;
    this.focus = focus; // {camera: id} or {site: id}
    this.onPick = onPick;
    this.cams = new Map();
    this.siteLayers = new Map();
    this.tileErrors = 0;
    this.frame = 0;
    this.timers = [];
    this.listeners = [];
    this.shownGroups = [];
  }

  async load() {
    const [view, sites, cams] = await Promise.all([api("/api/v1/map"), api("/api/v1/sites.geojson"),
      api("/api/v1/map/cameras")]);
    this.view = view;
    const map = L.map(this.container, { minZoom: view.min_zoom, maxZoom: view.max_zoom, zoomSnap: 0.5,
      renderer: this.clusterOn ? L.svg() : L.canvas() });
    this.map = map;
    map.attributionControl.setPrefix("Leaflet");
    // A view first: Leaflet adds layers (and makes their elements) only once the map has one.
    if (view.bounds) map.fitBounds(L.latLngBounds(view.bounds), { padding: [10, 10] });
    else map.setView([0, 0], 2);
    this.container.dataset.tiles = view.tile_url ? "on" : "off";
    if (view.tile_url) {
      const tiles = L.tileLayer(view.tile_url, { attribution: view.attribution, minZoom: view.min_zoom, maxZoom: view.max_zoom });
      tiles.on("tileerror", () => { this.tileErrors += 1; this.container.dataset.tileErrors = this.tileErrors; });
      tiles.addTo(map);
    }
    if (view.boundary) {
      this.boundary = L.geoJSON(view.boundary, { interactive: false,
        style: { color: "#9ecbff", weight: 2.5, fillColor: "#1b2a3a", fillOpacity: 0.35 } }).addTo(map);
      this.boundary.eachLayer((l) => {
        l.getElement()?.setAttribute("data-boundary", l.feature?.properties?.name || "");
        if (l.feature?.properties?.name) l.bindTooltip(l.feature.properties.name, { permanent: false, sticky: true });
      });
    }
    this.sitesLayer = L.layerGroup().addTo(map);
    this.camLayer = L.layerGroup().addTo(map);
    this._sites(sites);
    this._cameras(cams.cameras);
    this._focus();
    map.on("moveend zoomend", () => this.render());
    if (this.onPick) map.on("click", (e) => this.picking && this.onPick(e.latlng));
    this.render();
    const on = (kind, fn) => { live.addEventListener(kind, fn); this.listeners.push([kind, fn]); };
    on("devices", (e) => {
      let touched = false;
      for (const d of e.detail.devices) {
        const c = this.cams.get(d.id);
        if (c && c.state !== d.state) { c.state = d.state; touched = true; }
      }
      if (touched) this.schedule();
    });
    on("sites", (e) => this.reload(e.detail.layout));
    on("snapshot", () => this.reload(true));
    this.container.dataset.ready = "1";
    return this;
  }

  _focus() {
    const f = this.focus;
    if (!f) return;
    if (f.site && this.siteLayers.has(f.site)) {
      const l = this.siteLayers.get(f.site);
      this.map.fitBounds(l.getBounds(), { maxZoom: 17, padding: [40, 40] });
    } else if (f.camera && this.cams.has(f.camera)) {
      const c = this.cams.get(f.camera);
      this.map.setView([c.lat, c.lon], Math.min(17, this.view.max_zoom));
    }
  }

  /** Sites and (after an edit of the layout) cameras again, once per burst of changes. */
  reload(layout) {
    this.layoutDirty = this.layoutDirty || layout;
    clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(async () => {
      const both = this.layoutDirty;
      this.layoutDirty = false;
      try {
        const [sites, cams] = await Promise.all([api("/api/v1/sites.geojson"), both ? api("/api/v1/map/cameras") : null]);
        this._sites(sites);
        if (cams) this._cameras(cams.cameras);
        this.render();
      } catch { /* the next change tries again */ }
    }, 300);
  }

  _sites(fc) {
    this.sitesLayer.clearLayers();
    this.siteLayers.clear();
    L.geoJSON(fc, {
      pointToLayer: (f, latlng) => L.circle(latlng, { radius: f.properties.radius_m || 50 }),
      style: (f) => siteStyle(f.properties),
      onEachFeature: (f, layer) => {
        const p = f.properties;
        this.siteLayers.set(p.id, layer);
        layer.bindTooltip(`${p.name} · ${t(`site.${p.kind}`)} · ${p.covered ? t("map.coveredNow") : t("map.uncoveredNow")}`);
        layer.on("click", (e) => this._open(e, `#/site/${encodeURIComponent(p.id)}`));
        layer.feature = f;
        this.sitesLayer.addLayer(layer);
        const node = layer.getElement();
        if (node) Object.assign(node.dataset, { site: p.id, covered: p.covered ? "1" : "0", kind: p.kind });
      },
    });
  }

  _cameras(list) {
    this.cams = new Map(list.map((c) => [c.id, { ...c }]));
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
  }

  /** Cameras in view, merged per screen cell into clusters (or each on its own without clustering). */
  render() {
    const map = this.map;
    if (!map) return;
    const view = map.getBounds().pad(0.25), z = map.getZoom();
    const cells = new Map();
    for (const c of this.cams.values()) {
      if (!view.contains([c.lat, c.lon])) continue;
      const p = map.project([c.lat, c.lon], z);
      const key = this.clusterOn ? `${Math.floor(p.x / CELL)}:${Math.floor(p.y / CELL)}` : c.id;
      const g = cells.get(key);
      if (g) g.push(c);
      else cells.set(key, [c]);
    }
    this.camLayer.clearLayers();
    this.shownGroups = [];
    for (const g of cells.values()) {
      const state = worst(g.map((c) => c.state));
      this.shownGroups.push({ ids: g.map((c) => c.id), state, color: STATE_COLORS[state] });
      if (g.length === 1) this._single(g[0]);
      else this._cluster(g, state);
    }
    this.container.dataset.shown = this.shownGroups.length;
  }

  _single(c) {
    const m = L.circleMarker([c.lat, c.lon], { radius: 7, color: "#0d1117", weight: 2, fillColor: STATE_COLORS[c.state] || STATE_COLORS.unknown,
      fillOpacity: 1 });
    m.bindTooltip(`${c.name || c.id} · ${stateLabel(c.state)}`);
    m.on("click", (e) => this._open(e, `#/camera/${c.id}`));
    this.camLayer.addLayer(m);
    const node = m.getElement();
    if (node) Object.assign(node.dataset, { device: c.id, state: c.state });
  }

  _cluster(g, state) {
    const lat = g.reduce((a, c) => a + c.lat, 0) / g.length, lon = g.reduce((a, c) => a + c.lon, 0) / g.length;
    const size = g.length < 10 ? 30 : g.length < 100 ? 36 : 44;
    const icon = L.divIcon({ className: `cam-cluster ${state}`, iconSize: [size, size], html: `<span>${g.length}</span>` });
    const m = L.marker([lat, lon], { icon, title: t("map.clusters", { n: g.length }) });
    m.on("click", () => {
      const b = L.latLngBounds(g.map((c) => [c.lat, c.lon]));
      if (this.map.getZoom() < this.map.getMaxZoom() && b.getNorthEast().distanceTo(b.getSouthWest()) > 1) {
        this.map.fitBounds(b, { padding: [40, 40], maxZoom: this.map.getMaxZoom() });
      } else {
        const links = g.map((c) => `<a href="#/camera/${c.id}" data-device="${c.id}">${(c.name || c.id).replace(/[<&"]/g, "")}</a> · ${stateLabel(c.state)}`);
        L.popup().setLatLng([lat, lon]).setContent(links.join("<br>")).openOn(this.map);
      }
    });
    this.camLayer.addLayer(m);
    const node = m.getElement();
    if (node) Object.assign(node.dataset, { count: g.length, state, devices: g.length <= 50 ? g.map((c) => c.id).join(",") : "" });
  }

  /** What a camera looks like on the map now: its state and colour, alone or in a cluster (tests, bench). */
  cameraView(id) {
    const g = this.shownGroups.find((x) => x.ids.includes(id));
    return g ? { state: g.state, color: g.color, clustered: g.ids.length > 1, count: g.ids.length } : null;
  }

  /** A click on a site or camera opens its page, or, while an admin picks a position, picks it. */
  _open(e, hash) {
    if (this.picking) this.onPick(e.latlng);
    else location.hash = hash;
  }

  setPicking(on) {
    this.picking = on;
    this.container.classList.toggle("picking", on);
  }

  destroy() {
    for (const [k, fn] of this.listeners) live.removeEventListener(k, fn);
    clearTimeout(this.reloadTimer);
    if (this.frame) cancelAnimationFrame(this.frame);
    if (this.map) this.map.remove();
    this.map = null;
  }
}
