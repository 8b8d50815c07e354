// The hub's API: the token, authorised fetches, and the push stream (server-sent events).

const KEY = "vms.token";

export function getToken() {
  return sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || "";
}

export function setToken(token, remember) {
  clearToken();
  (remember ? localStorage : sessionStorage).setItem(KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

/** fetch() against the hub with the bearer token; JSON in and out unless raw is set. */
export async function api(path, { method = "GET", body, params, raw = false, signal } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== null && v !== undefined) url.searchParams.set(k, v);
  const headers = { Authorization: `Bearer ${getToken()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  if (!r.ok) {
    let detail = r.statusText;
    try {
      const j = await r.json();
      detail = typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail);
    } catch { /* not JSON */ }
    throw new ApiError(r.status, detail);
  }
  return raw ? r : r.json();
}

/**
 * The push stream, shared by all views. Keeps the latest snapshot state (center tree, counters,
 * problem list, active alerts) in bounded form and tells listeners what changed.
 * EventSource cannot send headers, so a short-lived ticket (fetched with the token in the header)
 * goes in the query string, never the token itself; a stream the hub closed (a restart, an expired
 * ticket) is opened again with a new ticket.
 */
export class Live extends EventTarget {
  constructor() {
    super();
    this.state = { centers: [], counts: {}, problems: { total: 0, devices: [] }, alerts: new Map(), active: 0, me: null };
    this.connected = false;
    this.lastEventAt = 0;
    this.es = null;
    this.gen = 0; // bumped by start(): a ticket fetched for an older start is not used
    this.retry = null;
  }

  async start() {
    this.stop();
    const gen = ++this.gen;
    let ticket;
    try {
      ticket = (await api("/api/v1/events/ticket", { method: "POST" })).ticket;
    } catch (e) {
      if (gen !== this.gen) return;
      if (e instanceof ApiError && e.status === 401) {
        this.dispatchEvent(new Event("unauthorised"));
        return;
      }
      this.retry = setTimeout(() => this.start(), 2000); // the hub is down: try again
      return;
    }
    if (gen !== this.gen) return;
    const es = new EventSource(`/api/v1/events?token=${encodeURIComponent(ticket)}`);
    this.es = es;
    const on = (kind, fn) => es.addEventListener(kind, (e) => {
      this.lastEventAt = performance.now();
      const d = JSON.parse(e.data);
      fn(d);
      this.dispatchEvent(new CustomEvent(kind, { detail: d }));
    });
    es.onopen = () => this._conn(true);
    es.onerror = () => {
      this._conn(false);
      // EventSource retries by itself with the same URL; once it gives up (its ticket refused), a new one.
      if (es.readyState === EventSource.CLOSED && this.es === es) this.retry = setTimeout(() => this.start(), 2000);
    };
    on("snapshot", (d) => {
      this.state.me = d.me;
      this._summary(d);
      this.state.alerts.clear();
      this._alerts(d);
    });
    on("summary", (d) => this._summary(d));
    on("alerts", (d) => this._alerts(d));
    on("devices", () => {});
    on("sites", () => {});
    on("resync", () => this.start());
    on("auth", () => { this.stop(); this.dispatchEvent(new Event("unauthorised")); });
  }

  stop() {
    this.gen += 1;
    clearTimeout(this.retry);
    if (this.es) this.es.close();
    this.es = null;
    this._conn(false);
  }

  _conn(ok) {
    if (ok === this.connected) return;
    this.connected = ok;
    this.dispatchEvent(new Event("connection"));
  }

  _summary(d) {
    this.state.centers = d.centers;
    this.state.counts = d.counts;
    this.state.problems = d.problems;
  }

  _alerts(d) {
    // Only active alerts are kept, and at most 200: memory stays flat over a shift.
    for (const a of d.alerts) {
      if (a.state === "resolved") this.state.alerts.delete(a.id);
      else this.state.alerts.set(a.id, a);
    }
    while (this.state.alerts.size > 200) this.state.alerts.delete(Math.min(...this.state.alerts.keys()));
    this.state.active = d.active;
  }
}

export const live = new Live();
