// Discovered cameras for the admin: accept or reject what agents found by ONVIF discovery.
// Nothing is pushed for these, so the list reloads every few seconds while the page is open.
import { api } from "./api.js";
import { t } from "./i18n.js";
import { clock, el } from "./util.js";

const STATES = ["pending", "accepted", "rejected", ""];
const RELOAD_MS = 5000;

export function mountDiscovered(root, params) {
  const f = { state: params.get("state") ?? "pending" };
  const body = el("tbody");
  const status = el("p", { class: "status" });
  root.replaceChildren(el("div", { class: "page discovered-view" },
    el("h1", {}, t("disc.title")),
    el("p", { class: "hint" }, t("disc.hint")),
    el("div", { class: "filters" },
      el("label", {}, t("disc.state"), " ", el("select", { name: "state", onchange: (e) => { f.state = e.target.value; load(); } },
        STATES.map((s) => el("option", { value: s, selected: s === f.state }, t(`disc.${s || "all"}`)))))),
    status,
    el("table", { class: "list" },
      el("thead", {}, el("tr", {}, [t("camera.id"), t("disc.camera"), t("disc.address"), t("camera.serial"), t("camera.agent"),
        t("disc.source"), t("disc.firstSeen"), t("disc.state"), t("disc.decidedBy"), ""].map((h) => el("th", {}, h)))),
      body)));

  async function decide(c, action, input) {
    try {
      await api(`/api/v1/discovered/${c.device_id}/${action}`, { method: "POST", body: { comment: input.value } });
      await load(true);
    } catch (e) {
      status.textContent = t("common.error", { e: e.message });
    }
  }

  function row(c) {
    const comment = el("input", { type: "text", class: "comment", placeholder: t("alerts.comment"), maxlength: 2000 });
    return el("tr", { class: c.state, dataset: { device: c.device_id, state: c.state } },
      el("td", { class: "mono" }, c.device_id),
      el("td", {}, c.name || "—", c.location ? el("div", { class: "sub" }, c.location) : null),
      el("td", {}, c.address || "—", c.stream_uri ? el("div", { class: "sub mono" }, c.stream_uri) : null),
      el("td", {}, c.serial || "—"),
      el("td", {}, c.agent),
      el("td", {}, t(`disc.src.${c.source}`)),
      el("td", {}, clock(c.first_seen)),
      el("td", { class: "state" }, t(`disc.${c.state}`)),
      el("td", {}, c.decided_by ? `${c.decided_by} ${clock(c.decided_at)}${c.comment ? ` — ${c.comment}` : ""}` : ""),
      el("td", { class: "actions" }, comment,
        c.state !== "accepted" ? el("button", { class: "accept", onclick: () => decide(c, "accept", comment) }, t("disc.accept")) : null,
        c.state !== "rejected" ? el("button", { class: "reject", onclick: () => decide(c, "reject", comment) }, t("disc.reject")) : null));
  }

  let seq = 0;
  async function load(force = false) {
    const mine = ++seq;
    try {
      const r = await api("/api/v1/discovered", { params: { state: f.state, limit: 1000 } });
      if (mine !== seq) return;
      // Keep a comment being typed: the periodic refresh skips while a field in the list has the focus.
      if (!force && document.activeElement?.tagName === "INPUT" && body.contains(document.activeElement)) return;
      body.replaceChildren(...(r.cameras.length ? r.cameras.map(row) : [el("tr", {}, el("td", { colspan: 10 }, t("disc.none")))]));
      status.textContent = r.total > r.cameras.length ? t("disc.more", { n: r.total - r.cameras.length }) : "";
    } catch (e) {
      status.textContent = t("common.error", { e: e.message });
    }
  }

  load();
  const timer = setInterval(load, RELOAD_MS);
  return () => clearInterval(timer);
}
