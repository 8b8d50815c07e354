// The alerts view for maintenance: filter, acknowledge and resolve with a comment.
import { api, live } from "./api.js";
import { t } from "./i18n.js";
import { clock, duration, el } from "./util.js";

const STATES = ["active", "open", "acknowledged", "resolved", ""];
const KINDS = ["", "device_offline", "device_degraded", "agent_offline", "site_offline", "spool_dropped", "storage_low",
  "receiver_down", "site_uncovered", "device_alarm"];

function flatCenters(nodes, out = []) {
  for (const c of nodes) {
    out.push(c);
    flatCenters(c.children, out);
  }
  return out;
}

export function mountAlerts(root, params, me) {
  const canAct = ["maintenance", "admin"].includes(me.role);
  const f = { state: params.get("state") ?? "active", center: params.get("center") || "", kind: params.get("kind") || "" };
  const body = el("tbody");
  const status = el("p", { class: "status" });
  const centerSel = el("select", { name: "center", onchange: (e) => { f.center = e.target.value; load(); } });
  const fillCenters = () => centerSel.replaceChildren(el("option", { value: "" }, t("alerts.all")),
    ...flatCenters(live.state.centers).map((c) => el("option", { value: c.id, selected: c.id === f.center }, c.name)));
  fillCenters();
  root.replaceChildren(el("div", { class: "page alerts-view" },
    el("h1", {}, t("alerts.title")),
    el("div", { class: "filters" },
      el("label", {}, t("alerts.state"), " ", el("select", { name: "state", onchange: (e) => { f.state = e.target.value; load(); } },
        STATES.map((s) => el("option", { value: s, selected: s === f.state }, t(`alerts.${s || "all"}`))))),
      el("label", {}, t("alerts.center"), " ", centerSel),
      el("label", {}, t("alerts.kind"), " ", el("select", { name: "kind", onchange: (e) => { f.kind = e.target.value; load(); } },
        KINDS.map((k) => el("option", { value: k, selected: k === f.kind }, k ? t(`kind.${k}`) : t("alerts.all")))))),
    status,
    el("table", { class: "list" },
      el("thead", {}, el("tr", {}, ["#", t("alerts.kind"), t("alerts.what"), t("alerts.state"), t("alerts.since"), t("alerts.by"), ""]
        .map((h) => el("th", {}, h)))),
      body)));

  async function act(a, action, input) {
    try {
      await api(`/api/v1/alerts/${a.id}/${action}`, { method: "POST", body: { comment: input.value } });
      await load();
    } catch (e) {
      status.textContent = t("common.error", { e: e.message });
    }
  }

  function row(a) {
    const comment = el("input", { type: "text", class: "comment", placeholder: t("alerts.comment"), maxlength: 2000 });
    const actions = canAct && a.state !== "resolved" ? el("td", { class: "actions" }, comment,
      a.state === "open" ? el("button", { class: "ack", onclick: () => act(a, "ack", comment) }, t("alerts.ack")) : null,
      el("button", { class: "resolve", onclick: () => act(a, "resolve", comment) }, t("alerts.resolve"))) : el("td");
    const snap = a.detail && (a.detail.snapshot_url || a.detail.snapshot);
    return el("tr", { class: a.state, dataset: { alert: a.id, state: a.state } },
      el("td", {}, a.id),
      el("td", {}, t(`kind.${a.kind}`)),
      el("td", {}, a.device_id ? el("a", { href: `#/camera/${a.device_id}` }, a.title) : a.title,
        snap ? el("div", {}, el("a", { href: snap, target: "_blank" }, t("alerts.snapshot"))) : null),
      el("td", { class: "state" }, t(`alerts.${a.state}`)),
      el("td", {}, `${clock(a.since)} (${duration(((a.resolved_at ? Date.parse(a.resolved_at) : Date.now()) - Date.parse(a.since)) / 1000)})`),
      el("td", {}, a.resolved_by || a.acknowledged_by || ""),
      actions);
  }

  let seq = 0;
  async function load() {
    const mine = ++seq;
    try {
      const r = await api("/api/v1/alerts", { params: { state: f.state, center: f.center, kind: f.kind, limit: 200 } });
      if (mine !== seq) return;
      body.replaceChildren(...(r.alerts.length ? r.alerts.map(row) : [el("tr", {}, el("td", { colspan: 7 }, t("alerts.none")))]));
      status.textContent = "";
    } catch (e) {
      status.textContent = t("common.error", { e: e.message });
    }
  }

  // Pushed alert changes: reload the list with the current filters (one request per change burst).
  let pending = null;
  const onAlerts = () => {
    clearTimeout(pending);
    pending = setTimeout(load, 200);
  };
  const onSnapshot = () => { fillCenters(); onAlerts(); };
  live.addEventListener("alerts", onAlerts);
  live.addEventListener("snapshot", onSnapshot);
  load();
  return () => {
    clearTimeout(pending);
    live.removeEventListener("alerts", onAlerts);
    live.removeEventListener("snapshot", onSnapshot);
  };
}
