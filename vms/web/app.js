// The shell: login by token, header with navigation by role, language switch, hash router.
import { api, clearToken, getToken, live, setToken } from "./api.js";
import { mountAlerts } from "./alerts.js";
import { mountCamera, mountClip } from "./camera.js";
import { mountDiscovered } from "./discovered.js";
import { lang, setLang, t } from "./i18n.js";
import { mountReports } from "./reports.js";
import { mountMap, mountSite } from "./sites.js";
import { el } from "./util.js";
import { mountWall } from "./wall.js";

const root = document.getElementById("view");
const nav = document.getElementById("nav");
const conn = document.getElementById("conn");
const clockEl = document.getElementById("clock");
let me = null;
let unmount = () => {};

/** "#/camera/ID?x=1" → {view: "camera", arg: "ID", params} */
function route() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const [view, ...rest] = path.split("/");
  return { view: view || "", arg: rest.join("/"), params: new URLSearchParams(query || "") };
}

function renderNav() {
  const { view } = route();
  document.title = t("app.title");
  document.getElementById("title").textContent = t("app.title");
  const links = me ? me.views.map((v) => el("a", { href: `#/${v}`, class: v === view ? "on" : "", dataset: { nav: v } }, t(`nav.${v}`))) : [];
  nav.replaceChildren(...links,
    el("button", { class: "lang", dataset: { lang: lang() === "zh" ? "en" : "zh" }, onclick: () => { setLang(lang() === "zh" ? "en" : "zh"); show(); } },
      lang() === "zh" ? "EN" : "中文"),
    me ? el("button", { class: "logout", onclick: logout }, `${t("nav.logout")} (${me.name})`) : null);
  conn.textContent = me ? (live.connected ? t("conn.live") : t("conn.lost")) : "";
  conn.className = live.connected ? "conn ok" : "conn lost";
}

function logout() {
  clearToken();
  live.stop();
  me = null;
  location.hash = "#/login";
}

function loginView() {
  const input = el("input", { type: "password", name: "token", autocomplete: "off", size: 48, required: true });
  const remember = el("input", { type: "checkbox", name: "remember" });
  const msg = el("p", { class: "status" });
  root.replaceChildren(el("form", { class: "login", onsubmit: async (e) => {
    e.preventDefault();
    setToken(input.value.trim(), remember.checked);
    if (await loadSession()) location.hash = "#/";
    else msg.textContent = t("login.bad");
  } },
  el("h1", {}, t("login.title")),
  el("label", {}, t("login.token"), el("br"), input),
  el("label", {}, remember, " ", t("login.remember")),
  el("button", { type: "submit" }, t("login.submit")), msg));
  input.focus();
}

async function loadSession() {
  if (!getToken()) return false;
  try {
    me = await api("/api/v1/session");
  } catch {
    clearToken();
    me = null;
    return false;
  }
  live.start();
  return true;
}

function show() {
  unmount();
  unmount = () => {};
  const { view, arg, params } = route();
  document.body.classList.toggle("kiosk", params.get("kiosk") === "1");
  renderNav();
  if (!me || view === "login") return loginView();
  if (!view) {
    location.hash = `#/${me.views[0]}`;
    return;
  }
  if (!me.views.includes(view === "site" ? "map" : view)) { // a site's page belongs to the map view
    root.replaceChildren(el("p", { class: "forbidden", dataset: { forbidden: view } }, view === "clip"
      ? t("clip.forbidden", { role: me.role }) : t("common.forbidden")));
    return;
  }
  const mounts = {
    wall: () => mountWall(root, params),
    alerts: () => mountAlerts(root, params, me),
    camera: () => mountCamera(root, arg, me, params),
    clip: () => mountClip(root, arg, me),
    reports: () => mountReports(root, params),
    discovered: () => mountDiscovered(root, params),
    map: () => mountMap(root, params),
    site: () => mountSite(root, decodeURIComponent(arg)),
  };
  unmount = mounts[view]();
}

live.addEventListener("connection", renderNav);
live.addEventListener("unauthorised", logout);
window.addEventListener("hashchange", show);
setInterval(() => {
  const d = new Date();
  clockEl.textContent = d.toLocaleString(lang() === "zh" ? "zh-CN" : "en-GB", { hour12: false });
}, 1000);
setLang(lang());
loadSession().then(show);
