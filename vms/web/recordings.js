// The camera's recordings for a window: a bar of recorded spans with the gaps left dark, motion
// and picture-quality markers, legal holds, and a list of the gaps. The search route is for the
// police and admin roles only (the API refuses everyone else), so other roles get a note instead.
// Clicking a recorded span fills the clip export form's start and end.
import { api } from "./api.js";
import { t } from "./i18n.js";
import { clock, duration, el, pct, svg } from "./util.js";

export const RECORDING_ROLES = ["police", "admin"];
export const WINDOWS = { "1h": 3600, "24h": 86400, "7d": 7 * 86400 };
/** A segment is marked as motion when at least this share of the picture changed. */
export const MOTION_MIN = 0.02;
/** The clip route serves at most an hour; longer spans pre-fill the hour around the click. */
const CLIP_MAX_S = 3600;
const GAPS_LISTED = 50;

/** Date as the value of an <input type=datetime-local> (local time, to the second). */
export function localInput(d) {
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** The recorded spans of [t0, t1] (ms): what the API's gap list leaves. */
export function spansOf(rec) {
  const t0 = Date.parse(rec.start), t1 = Date.parse(rec.end);
  const spans = [];
  let cursor = t0;
  for (const g of rec.gaps) {
    const a = Date.parse(g.start), b = Date.parse(g.end);
    if (a > cursor) spans.push([cursor, a]);
    cursor = Math.max(cursor, b);
  }
  if (t1 > cursor) spans.push([cursor, t1]);
  return spans;
}

/** Consecutive motion segments merged into runs, so a busy day stays a handful of marks. */
function motionRuns(segments) {
  const runs = [];
  for (const s of segments) {
    if (s.motion === null || s.motion < MOTION_MIN) continue;
    const a = Date.parse(s.start), b = Date.parse(s.end), last = runs[runs.length - 1];
    if (last && a - last[1] <= 1000) {
      last[1] = Math.max(last[1], b);
      last[2] = Math.max(last[2], s.motion);
    } else runs.push([a, b, s.motion]);
  }
  return runs;
}

const isoSec = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");

/**
 * The recordings panel. onPick(startMs, endMs) is called when a span is clicked (for roles
 * that may export clips). params may carry from/to (RFC 3339) or rec (1h, 24h, 7d).
 */
export function recordingsPanel(deviceId, me, params, onPick) {
  if (!RECORDING_ROLES.includes(me.role)) {
    return el("p", { class: "muted", dataset: { recordings: "forbidden" } }, t("rec.forbidden", { role: me.role }));
  }
  // A "+08:00" in a link's query arrives as a space.
  const at = (k) => Date.parse((params.get(k) || "").replace(/ /g, "+"));
  let win = at("to") > at("from")
    ? { from: at("from"), to: at("to") }
    : { last: WINDOWS[params.get("rec")] ? params.get("rec") : "1h" };
  const from = el("input", { type: "datetime-local", step: 1, name: "rec-from" });
  const to = el("input", { type: "datetime-local", step: 1, name: "rec-to" });
  const out = el("div", { class: "rec-out" }, t("common.loading"));
  const buttons = Object.keys(WINDOWS).map((w) => el("button", { type: "button", dataset: { window: w }, onclick: () => { win = { last: w }; load(); } }, t(`rec.last.${w}`)));
  const form = el("form", { class: "rec-window", onsubmit: (e) => {
    e.preventDefault();
    const a = new Date(from.value).getTime(), b = new Date(to.value).getTime();
    if (!(b > a)) {
      out.replaceChildren(el("p", { class: "bad-text" }, t("rec.badWindow")));
      return;
    }
    win = { from: a, to: b };
    load();
  } }, ...buttons, el("label", {}, t("rec.from"), " ", from), el("label", {}, t("rec.to"), " ", to),
  el("button", { type: "submit", class: "rec-show" }, t("rec.show")));
  const panel = el("div", { class: "recordings", dataset: { recordings: "loading" } }, form, out);
  let seq = 0;

  async function load() {
    const now = Date.now();
    const [a, b] = win.last ? [now - WINDOWS[win.last] * 1000, now] : [win.from, win.to];
    buttons.forEach((x) => x.classList.toggle("on", x.dataset.window === win.last));
    from.value = localInput(new Date(a));
    to.value = localInput(new Date(b));
    const mine = ++seq;
    panel.dataset.recordings = "loading";
    try {
      const rec = await api(`/api/v1/devices/${deviceId}/recordings`,
        { params: { start: isoSec(a), end: isoSec(b), min_motion: MOTION_MIN, limit: 20000 } });
      if (mine !== seq) return;
      out.replaceChildren(...render(rec).filter(Boolean));
      panel.dataset.recordings = "ready";
    } catch (e) {
      if (mine !== seq) return;
      out.replaceChildren(el("p", { class: "bad-text" }, t("common.error", { e: e.message })));
      panel.dataset.recordings = "error";
    }
  }

  function render(rec) {
    const t0 = Date.parse(rec.start), t1 = Date.parse(rec.end), span = Math.max(1, t1 - t0);
    const x = (ms) => ((Math.min(Math.max(ms, t0), t1) - t0) / span) * 1000;
    const w = (a, b) => Math.max(1.5, x(b) - x(a));
    const spans = spansOf(rec);
    const runs = motionRuns(rec.segments);
    const pick = (e, a, b) => {
      if (!onPick) return;
      const box = e.currentTarget.ownerSVGElement.getBoundingClientRect();
      const at = t0 + ((e.clientX - box.left) / box.width) * span;
      if (b - a <= CLIP_MAX_S * 1000) onPick(a, b);
      else {
        const s = Math.min(Math.max(at - (CLIP_MAX_S * 500), a), b - CLIP_MAX_S * 1000);
        onPick(s, s + CLIP_MAX_S * 1000);
      }
    };
    const bar = svg("svg", { viewBox: "0 0 1000 56", preserveAspectRatio: "none", class: "rec-bar", role: "img" },
      svg("rect", { x: 0, y: 10, width: 1000, height: 24, class: "rec-gap" }),
      (rec.elsewhere || []).map((g) => {
        const a = Date.parse(g.start), b = Date.parse(g.end);
        const r = svg("rect", { x: x(a), y: 10, width: w(a, b), height: 24, class: "rec-elsewhere",
          "data-start": g.start, "data-end": g.end },
        svg("title", {}, `${t("rec.elsewhere")} ${clock(a)} – ${clock(b)} (${duration(g.seconds)})`));
        r.addEventListener("click", (e) => pick(e, a, b));
        return r;
      }),
      spans.map(([a, b]) => {
        const r = svg("rect", { x: x(a), y: 10, width: w(a, b), height: 24, class: "rec-span",
          "data-start": new Date(a).toISOString(), "data-end": new Date(b).toISOString() },
        svg("title", {}, `${t("rec.recorded")} ${clock(a)} – ${clock(b)} (${duration((b - a) / 1000)})`));
        r.addEventListener("click", (e) => pick(e, a, b));
        return r;
      }),
      runs.map(([a, b, m]) => svg("rect", { x: x(a), y: 0, width: w(a, b), height: 8, class: "rec-motion" },
        svg("title", {}, `${t("rec.motion")} ${clock(a)} – ${clock(b)} (${pct(m)})`))),
      rec.quality_events.map((q) => svg("rect", { x: x(Date.parse(q.at)) - 1, y: 36, width: 2.5, height: 10,
        class: `rec-quality ${q.state}`, "data-check": q.check },
      svg("title", {}, `${clock(q.at)} ${q.check} ${t(`rec.q.${q.state}`)}${q.value === null ? "" : ` (${q.value})`}`))),
      rec.holds.map((h) => svg("rect", { x: x(Date.parse(h.start)), y: 48, width: w(Date.parse(h.start), Date.parse(h.end)), height: 8, class: "rec-hold" },
        svg("title", {}, `${t("rec.hold")} ${h.case_number}: ${clock(h.start)} – ${clock(h.end)}`))));
    const mid = new Date((t0 + t1) / 2);
    const axis = el("div", { class: "rec-axis" }, el("span", {}, clock(rec.start)), el("span", {}, clock(mid)), el("span", {}, clock(rec.end)));
    const legend = el("div", { class: "rec-legend" },
      el("span", { class: "key span" }, t("rec.recorded")), el("span", { class: "key gap" }, t("rec.gap")),
      el("span", { class: "key motion" }, t("rec.motion")), el("span", { class: "key quality" }, t("rec.quality")),
      el("span", { class: "key hold" }, t("rec.hold")),
      rec.elsewhere && rec.elsewhere.length ? el("span", { class: "key elsewhere" }, t("rec.elsewhere")) : null,
      onPick ? el("span", { class: "muted" }, t("rec.clickHint")) : null);
    const windowS = (t1 - t0) / 1000;
    const summary = el("p", { class: "rec-summary", dataset: {
      start: rec.start, end: rec.end, segments: rec.segments_total, spans: spans.length, gaps: rec.gaps.length,
      motion: rec.segments.length, quality: rec.quality_events.length, holds: rec.holds.length,
    } }, t("rec.summary", {
      n: rec.segments_total, rec: duration(rec.recorded_s), pct: pct(rec.recorded_s / windowS),
      g: rec.gaps.length, m: rec.segments.length, q: rec.quality_events.length,
    }), rec.truncated ? ` ${t("rec.truncated")}` : "", rec.elsewhere_note ? ` ${rec.elsewhere_note}` : "");
    const gaps = [...rec.gaps].sort((p, q) => q.seconds - p.seconds).slice(0, GAPS_LISTED);
    const gapList = gaps.length ? el("details", { class: "rec-gaps" },
      el("summary", {}, t("rec.gapList", { n: rec.gaps.length })),
      el("table", { class: "list" }, el("thead", {}, el("tr", {}, [t("clip.start"), t("clip.end"), t("rec.length")].map((h) => el("th", {}, h)))),
        el("tbody", {}, gaps.map((g) => el("tr", { class: "gap" }, el("td", {}, clock(g.start)), el("td", {}, clock(g.end)), el("td", {}, duration(g.seconds))))))) : null;
    const holds = rec.holds.length ? el("ul", { class: "rec-holds" }, rec.holds.map((h) => el("li", { dataset: { hold: h.id } },
      `${t("rec.hold")} ${h.case_number} · ${clock(h.start)} – ${clock(h.end)} · ${h.created_by}${h.reason ? ` · ${h.reason}` : ""}`))) : null;
    return [summary, bar, axis, legend, holds, gapList];
  }

  load();
  panel.refresh = () => { if (win.last) load(); };
  return panel;
}
