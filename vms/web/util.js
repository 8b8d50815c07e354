// Small DOM and formatting helpers shared by the views.
import { t, lang } from "./i18n.js";

/** Create an element: el("div", {class: "x", onclick: fn}, child, "text", ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const c of children.flat()) if (c) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

/** A ratio (0..1 or null) as "97.5%" or "—". */
export function pct(r) {
  return r === null || r === undefined ? "—" : `${(r * 100).toFixed(1)}%`;
}

/** good (meets target), warn (within 2 points), bad; "none" when unknown. */
export function grade(r, target) {
  if (r === null || r === undefined) return "none";
  if (r >= target - 1e-9) return "good";
  return r >= target - 0.02 ? "warn" : "bad";
}

/** Seconds as "3 h 05 min" / "3小时05分". */
export function duration(s) {
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  const zh = lang() === "zh";
  if (d) return zh ? `${d}天${h}小时` : `${d} d ${h} h`;
  if (h) return zh ? `${h}小时${String(m).padStart(2, "0")}分` : `${h} h ${String(m).padStart(2, "0")} min`;
  if (m) return zh ? `${m}分${s % 60}秒` : `${m} min ${s % 60} s`;
  return zh ? `${s}秒` : `${s} s`;
}

/** An ISO time as local "MM-DD HH:MM:SS". */
export function clock(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const p = (n) => String(n).padStart(2, "0");
  return `${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function since(iso) {
  return iso ? (Date.now() - Date.parse(iso)) / 1000 : 0;
}

export function stateLabel(state) {
  return t(`state.${state}`);
}

/** Save a Blob as a file download. */
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Bytes as "1.5 GB" (powers of 1000, as disks are sold). */
export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${i ? n.toFixed(n < 10 ? 2 : 1) : n} ${units[i]}`;
}

/** Rows as CSV text (RFC 4180 quoting), with a header row. Text that a spreadsheet would take as a
 *  formula (starting with = + - @, tab or CR) gets a leading apostrophe, as the hub's own CSV does. */
export function toCsv(header, rows) {
  const q = (v) => {
    let s = v === null || v === undefined ? "" : String(v);
    if (typeof v === "string" && /^[=+\-@\t\r]/.test(s)) s = `'${s}`;
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [header, ...rows].map((r) => r.map(q).join(",")).join("\r\n") + "\r\n";
}
