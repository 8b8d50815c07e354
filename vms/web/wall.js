// The wall (kiosk) view for duty officers: center tree with rates against targets, counters,
// dark and degraded cameras longest first, live tiles (1/4/9/16, cycling), alerts announced.
// Grids of 4-16 play each camera's sub stream (子码流) when it has one, a single tile the main stream.
import { api, live } from "./api.js";
import { t } from "./i18n.js";
import { LivePlayer } from "./live.js";
import { DistrictMap } from "./map.js";
import { blindList, followBlindSpots } from "./sites.js";
import { clock, duration, el, grade, pct, since, stateLabel } from "./util.js";

const GRIDS = [1, 4, 9, 16];
const MAX_POOL = 256; // cameras a wall cycles through, at most
const ALERTS_SHOWN = 8;

function settingsKey(name) {
  return `vms.wall.${name}`;
}

/** Per-wall settings: saved per wall name in this browser; the URL (#/wall?grid=9&cycle=20&cams=...) wins. */
function loadSettings(params) {
  const name = params.get("wall") || "default";
  const saved = JSON.parse(localStorage.getItem(settingsKey(name)) || "{}");
  // map: null shows the district map beside the tiles when the hub has one (sites or a boundary).
  const s = { name, grid: 4, cycle: 30, cams: [], sound: true, map: null, ...saved };
  if (params.has("map")) s.map = params.get("map") === "1";
  if (params.has("grid")) s.grid = Number(params.get("grid"));
  if (params.has("cycle")) s.cycle = Number(params.get("cycle"));
  if (params.has("cams")) s.cams = params.get("cams").split(",").filter(Boolean);
  if (!GRIDS.includes(s.grid)) s.grid = 4;
  return s;
}

function rateCell(kind, ratio, target) {
  return el("div", { class: `rate ${grade(ratio, target)}`, dataset: { rate: kind, value: ratio ?? "" } },
    el("span", { class: "rate-label" }, t(`rate.${kind}`)),
    el("span", { class: "rate-value" }, pct(ratio)),
    el("span", { class: "rate-target" }, `${t("rate.target")} ${pct(target)}`));
}

function centerNode(c) {
  const row = el("div", { class: `center level${c.level}`, dataset: { center: c.id } },
    el("div", { class: "center-name" },
      el("span", { class: "badge" }, t("wall.level", { n: c.level })), c.name,
      el("span", { class: "center-count" }, `${c.counts.online}/${c.counts.devices}`)),
    el("div", { class: "rates" },
      rateCell("online", c.online_ratio, c.targets.online),
      rateCell("upload", c.upload_ratio, c.targets.upload),
      rateCell("intact", c.intact_ratio, c.targets.intact)));
  return el("li", {}, row, c.children.length ? el("ul", {}, c.children.map(centerNode)) : null);
}

class Tile {
  constructor() {
    this.video = el("video", { muted: true, autoplay: true, playsinline: true });
    this.video.muted = true;
    this.name = el("span", {});
    this.streamTag = el("span", { class: "tile-stream" });
    this.label = el("div", { class: "tile-label" }, this.name, this.streamTag);
    this.overlay = el("div", { class: "tile-overlay" });
    this.node = el("div", { class: "tile" }, this.video, this.overlay, this.label);
    this.device = null;
    this.player = null;
    this.quality = null;
    this.status = "empty";
  }

  /** quality: "tile" (sub stream when the camera has one) or "full" (main stream). */
  show(device, quality = "tile") {
    const id = device ? device.id : null;
    if (id !== (this.device && this.device.id) || quality !== this.quality) {
      if (this.player) this.player.stop();
      this.player = id ? new LivePlayer(this.video, id, (st, mode, stream) => this._status(st, mode, stream), { quality }) : null;
      this.quality = quality;
      this._stream(null);
    }
    this.device = device;
    this.node.dataset.device = id || "";
    this.node.dataset.state = device ? device.state : "";
    this.name.textContent = device ? `${device.name || device.id} · ${device.id}` : "";
    if (!device) {
      this._overlay("empty", t("tile.empty"));
    } else if (device.state === "offline") {
      // Never a frozen last frame: stop the stream and say since when the camera is dark.
      this.player.stop();
      this.status = "offline";
      this.node.dataset.status = "offline";
      this._overlay("offline", t("tile.offline"), t("tile.since", { t: clock(device.since), d: duration(since(device.since)) }));
    } else {
      if (this.status === "offline" || this.status === "empty") this._overlay("connecting", t("tile.connecting"));
      this.player.start();
    }
  }

  tickClock() {
    if (this.device && this.device.state === "offline") this.show(this.device, this.quality);
  }

  _stream(stream) {
    this.node.dataset.stream = stream || "";
    this.streamTag.textContent = stream ? ` · ${t(`tile.${stream}`)}` : "";
  }

  _status(st, mode, stream) {
    if (this.device && this.device.state === "offline") return;
    this.status = st;
    this.node.dataset.status = st;
    this.node.dataset.mode = mode || "";
    this._stream(st === "playing" ? stream : null);
    if (st === "playing") this._overlay(null);
    else this._overlay(st, t(st === "connecting" ? "tile.connecting" : "tile.unavailable"));
  }

  _overlay(kind, ...lines) {
    this.overlay.className = `tile-overlay ${kind || "hidden"}`;
    this.overlay.replaceChildren(...lines.map((l, i) => el("div", { class: i ? "small" : "big" }, l)));
  }

  stats() {
    const p = this.player;
    const q = this.video.getVideoPlaybackQuality(); // frames decoded and dropped, whatever shows them
    return { device: this.device && this.device.id, status: this.status, mode: p && p.mode, stream: p && p.stream,
      decoded: q.totalVideoFrames, dropped: q.droppedVideoFrames,
      frames: p ? p.frames : 0, mediaTime: p ? p.mediaTime : 0, width: this.video.videoWidth, height: this.video.videoHeight };
  }

  destroy() {
    if (this.player) this.player.stop();
  }
}

/** Short beeps with WebAudio; a wall browser is started with autoplay allowed (see README). */
function beep() {
  try {
    const ctx = beep.ctx || (beep.ctx = new AudioContext());
    if (ctx.state === "suspended") ctx.resume();
    for (const [at, f] of [[0, 880], [0.25, 660], [0.5, 880]]) {
      const o = ctx.createOscillator(), g = ctx.createGain();
      o.frequency.value = f;
      g.gain.value = 0.2;
      o.connect(g).connect(ctx.destination);
      o.start(ctx.currentTime + at);
      o.stop(ctx.currentTime + at + 0.18);
    }
    return ctx.state === "running";
  } catch {
    return false;
  }
}

export function mountWall(root, params) {
  const s = loadSettings(params);
  const save = () => localStorage.setItem(settingsKey(s.name), JSON.stringify({ grid: s.grid, cycle: s.cycle, cams: s.cams, sound: s.sound, map: s.map }));
  const tree = el("ul", { class: "tree" });
  const counters = el("div", { class: "counters" });
  const problems = el("ol", { class: "problems" });
  const alertList = el("ol", { class: "wall-alerts" });
  const banner = el("div", { class: "banner hidden", role: "alert" });
  const grid = el("div", { class: "grid" });
  const blind = blindList(100);
  const mapBox = el("div", { class: "map-box wall-map hidden", dataset: { map: "wall" } });
  const wallMain = el("div", { class: "wall-main" }, grid, mapBox);
  let map = null;
  const mapToggle = el("input", { type: "checkbox", onchange: (e) => { s.map = e.target.checked; save(); showMap(s.map); } });
  const page = el("span", { class: "page" });
  const controls = el("div", { class: "wall-controls" },
    el("label", {}, t("wall.grid"), " ", el("select", { onchange: (e) => { s.grid = Number(e.target.value); save(); layout(); } },
      GRIDS.map((n) => el("option", { value: n, selected: n === s.grid }, String(n))))),
    el("label", {}, t("wall.cycle"), " ", el("input", { type: "number", min: 0, max: 3600, value: s.cycle, class: "num",
      onchange: (e) => { s.cycle = Math.max(0, Number(e.target.value) || 0); save(); } })),
    el("label", {}, el("input", { type: "checkbox", checked: s.sound, onchange: (e) => { s.sound = e.target.checked; save(); } }), " ", t("wall.sound")),
    el("label", {}, mapToggle, " ", t("nav.map")),
    page);
  root.replaceChildren(el("div", { class: "wall" },
    banner,
    el("section", { class: "side" },
      counters,
      el("h2", {}, t("wall.tree")), tree,
      el("h2", {}, t("wall.problems")), problems,
      el("h2", {}, t("map.blind")), blind.node,
      el("h2", {}, t("count.alerts")), alertList),
    el("section", { class: "main" }, wallMain, controls)));

  // -- the district map and its blind spots -----------------------------------------------------
  function showMap(on) {
    mapToggle.checked = on;
    mapBox.classList.toggle("hidden", !on);
    wallMain.classList.toggle("with-map", on);
    if (on && !map) {
      map = new DistrictMap(mapBox);
      map.load().catch(() => {});
    } else if (!on && map) {
      map.destroy();
      map = null;
    }
  }
  const stopBlind = followBlindSpots(blind.render);
  if (s.map !== null) showMap(s.map);
  else api("/api/v1/map").then((v) => showMap(v.bounds !== null)).catch(() => {});

  // -- tiles ---------------------------------------------------------------------------------
  const devices = new Map(); // the cameras this wall may show (bounded by MAX_POOL)
  let pool = [];
  let tiles = [];
  let offset = 0;
  let lastCycle = Date.now();

  async function loadDevices() {
    const r = await api("/api/v1/devices", { params: { limit: 10000 } });
    const all = new Map(r.devices.map((d) => [d.id, d]));
    pool = (s.cams.length ? s.cams.filter((id) => all.has(id)) : [...all.keys()].sort()).slice(0, MAX_POOL);
    devices.clear();
    for (const id of pool) devices.set(id, all.get(id));
    fillTiles();
  }

  function layout() {
    const side = Math.sqrt(s.grid);
    grid.style.gridTemplateColumns = `repeat(${side}, 1fr)`;
    grid.style.gridTemplateRows = `repeat(${side}, 1fr)`;
    while (tiles.length > s.grid) tiles.pop().destroy();
    while (tiles.length < s.grid) tiles.push(new Tile());
    grid.replaceChildren(...tiles.map((x) => x.node));
    fillTiles();
  }

  function fillTiles() {
    if (offset >= pool.length) offset = 0;
    const quality = s.grid > 1 ? "tile" : "full";
    tiles.forEach((tile, i) => tile.show(i < pool.length ? devices.get(pool[(offset + i) % pool.length]) : null, quality));
    const pages = Math.max(1, Math.ceil(pool.length / s.grid));
    page.textContent = pool.length > s.grid ? `${Math.floor(offset / s.grid) + 1}/${pages}` : "";
  }

  // -- side panel ----------------------------------------------------------------------------
  function renderSummary() {
    const st = live.state;
    tree.replaceChildren(...st.centers.map(centerNode));
    const c = st.counts;
    const counter = (key, n, cls) => el("div", { class: `counter ${cls}`, dataset: { count: key } },
      el("span", { class: "n" }, n ?? 0), el("span", { class: "k" }, t(`count.${key}`)));
    counters.replaceChildren(
      counter("devices", c.devices, ""),
      counter("online", (c.online || 0) + (c.uploading || 0), "good"),
      counter("offline", c.offline, c.offline ? "bad" : ""),
      counter("degraded", c.degraded, c.degraded ? "warn" : ""),
      counter("alerts", st.active, st.active ? "bad" : ""));
    renderProblems();
  }

  function renderProblems() {
    const p = live.state.problems;
    if (!p.devices.length) {
      problems.replaceChildren(el("li", { class: "none" }, t("wall.none")));
      return;
    }
    problems.replaceChildren(...p.devices.slice(0, 30).map((d) => el("li", { class: d.state, dataset: { device: d.id } },
      el("a", { href: `#/camera/${d.id}` }, d.name ? `${d.name} · ${d.id}` : d.id),
      el("span", { class: "state" }, stateLabel(d.state)),
      el("span", { class: "since" }, `${clock(d.since)} · ${duration(since(d.since))}`))),
      ...(p.total > 30 ? [el("li", { class: "more" }, t("wall.more", { n: p.total - 30 }))] : []));
  }

  function renderAlerts() {
    const list = [...live.state.alerts.values()].sort((a, b) => b.id - a.id).slice(0, ALERTS_SHOWN);
    alertList.replaceChildren(...list.map((a) => el("li", { class: a.state, dataset: { alert: a.id } },
      el("span", { class: "kind" }, t(`kind.${a.kind}`)), " ", a.title,
      el("span", { class: "since" }, clock(a.since)))));
  }

  // -- alerts announced ----------------------------------------------------------------------
  let maxSeen = null;
  let reloadTimer = null;
  let bannerTimer = null;
  const announced = [];
  const latencies = [];
  function announce(alerts) {
    const fresh = alerts.filter((a) => a.state === "open" && maxSeen !== null && a.id > maxSeen);
    for (const a of alerts) maxSeen = Math.max(maxSeen ?? 0, a.id);
    if (!fresh.length) return;
    const a = fresh[0];
    announced.push({ id: a.id, at: Date.now(), sound: s.sound && beep() });
    if (announced.length > 50) announced.shift();
    banner.replaceChildren(el("strong", {}, t("wall.newAlert")), " ", t(`kind.${a.kind}`), " · ", a.title,
      fresh.length > 1 ? ` (+${fresh.length - 1})` : "");
    banner.dataset.alert = a.id;
    banner.className = "banner flash";
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(() => { banner.className = "banner hidden"; }, 20000);
  }
  banner.addEventListener("click", () => { banner.className = "banner hidden"; });

  // -- push events ---------------------------------------------------------------------------
  const handlers = {
    snapshot: () => {
      renderSummary();
      renderAlerts();
      if (maxSeen === null) maxSeen = Math.max(0, ...live.state.alerts.keys());
      loadDevices().catch(() => {});
    },
    summary: () => renderSummary(),
    devices: (e) => {
      let touched = false, unseen = false;
      for (const d of e.detail.devices) {
        if (devices.has(d.id)) {
          devices.set(d.id, d);
          touched = true;
        } else unseen = true;
      }
      if (touched) fillTiles();
      if (e.detail.at) {
        // From the hub's tick to the next painted frame of the wall, for the bench.
        requestAnimationFrame(() => {
          latencies.push(Date.now() / 1000 - e.detail.at);
          if (latencies.length > 200) latencies.shift();
        });
      }
      // A camera this wall has not seen (new, or unlisted): refresh the pool, once per burst.
      if (unseen && !s.cams.length && pool.length < MAX_POOL) {
        clearTimeout(reloadTimer);
        reloadTimer = setTimeout(() => loadDevices().catch(() => {}), 500);
      }
    },
    alerts: (e) => {
      renderSummary();
      renderAlerts();
      announce(e.detail.alerts);
    },
  };
  for (const [k, fn] of Object.entries(handlers)) live.addEventListener(k, fn);
  if (live.state.me) handlers.snapshot();

  const timer = setInterval(() => {
    renderProblems();
    for (const tile of tiles) tile.tickClock();
    if (s.cycle > 0 && pool.length > s.grid && Date.now() - lastCycle >= s.cycle * 1000) {
      lastCycle = Date.now();
      offset = (offset + s.grid) % pool.length;
      fillTiles();
    }
  }, 1000);

  layout();
  window.vmsWall = {
    stats: () => tiles.map((x) => x.stats()),
    rtc: () => Promise.all(tiles.map((x) => (x.player ? x.player.rtcStats() : null))),
    announced: () => announced.slice(),
    latencies: () => latencies.slice(),
    settings: () => ({ ...s }),
    map: () => map,
  };
  return () => {
    clearInterval(timer);
    clearTimeout(bannerTimer);
    clearTimeout(reloadTimer);
    stopBlind();
    if (map) map.destroy();
    for (const [k, fn] of Object.entries(handlers)) live.removeEventListener(k, fn);
    for (const tile of tiles) tile.destroy();
    delete window.vmsWall;
  };
}
