// Building the page without innerHTML, and formatting values for people.
//
// Everything the server sends is data, never markup: text goes into the page
// through textContent (h() does it for every string child), so a user name
// like "<img onerror=...>" shows as those characters and runs nothing.

const SVG_NS = "http://www.w3.org/2000/svg";

// h("a", {href: "/x", class: "btn", dataset: {testid: "x"}}, "text", childNode, [more, children])
// Attributes: `class`, `dataset` (an object), `style` (an object), `on<event>`
// (a function), booleans (true sets the attribute, false/null/undefined leaves
// it out), anything else as a string attribute. Children: strings and numbers
// become text nodes, null/undefined/false are skipped, arrays are flattened.
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

// The same for SVG elements (charts.js), which live in another namespace.
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") {
      for (const [key, v] of Object.entries(value)) el.dataset[key] = String(v);
    } else if (name === "style" && typeof value === "object") {
      for (const [key, v] of Object.entries(value)) el.style.setProperty(key, String(v));
    } else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "value" && "value" in el && el.namespaceURI !== SVG_NS) {
      el.value = String(value); // the live value, not only the initial one
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

// Removes every child of `el`, puts `children` in instead (by h()'s rules:
// text as text, null skipped, arrays flattened) and returns `el`.
// Not el.append(): it would print a null child as the text "null".
export function clear(el, ...children) {
  while (el.firstChild) el.removeChild(el.firstChild);
  append(el, children);
  return el;
}

// What a missing value looks like everywhere: an em dash, not "null".
export const NONE = "—";

const pad = (n) => String(n).padStart(2, "0");

// A Date from an ISO 8601 string, unix seconds, or a Date; null if there is none.
export function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  if (value instanceof Date) return value;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

// "2024-05-01 14:03:59" in the browser's time zone (the API speaks UTC).
export function formatTime(value) {
  const d = toDate(value);
  if (!d) return NONE;
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}

// "14:03:59": the time of day only (chart axes).
export function formatClock(value) {
  const d = toDate(value);
  if (!d) return NONE;
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// A time element: local time as text, the exact UTC instant as its tooltip.
export function timeEl(value) {
  const d = toDate(value);
  if (!d) return document.createTextNode(NONE);
  return h("time", { datetime: d.toISOString(), title: d.toISOString() }, formatTime(d));
}

// 1536 -> "1.5 KiB"; sizes of adapters are binary units, as files are.
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return NONE;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value >= 100 ? 0 : 1)} ${units[unit]}`;
}

// Grouped thousands, at most `digits` decimals: 12345.678 -> "12,345.68".
export function formatNumber(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return NONE;
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits });
}

// A short form for chart ticks and tiles: 1234 -> "1.2k", 0.0042 -> "0.0042".
export function formatCompact(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return NONE;
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${trim(value / 1e9)}G`;
  if (abs >= 1e6) return `${trim(value / 1e6)}M`;
  if (abs >= 1e4) return `${trim(value / 1e3)}k`;
  if (abs >= 100 || abs === 0) return String(Math.round(value));
  if (abs >= 1) return trim(value);
  return String(Number(value.toPrecision(2)));
}

function trim(value) {
  return String(Number(value.toFixed(value >= 100 || value <= -100 ? 0 : 1)));
}

// Costs are often tiny (a few tokens of a cheap model): two significant digits
// below 0.01 instead of a misleading "0".
export function formatCost(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return NONE;
  if (value !== 0 && Math.abs(value) < 0.01) return String(Number(value.toPrecision(2)));
  return formatNumber(value, 4);
}

// 0.1234 -> "12.3%".
export function formatPercent(fraction, digits = 1) {
  if (fraction === null || fraction === undefined || Number.isNaN(fraction)) return NONE;
  return `${(fraction * 100).toFixed(digits)}%`;
}

// 3725 -> "1h 2m 5s"; an ETA or a duration in seconds.
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return NONE;
  let rest = Math.max(0, Math.round(seconds));
  const hours = Math.floor(rest / 3600);
  rest -= hours * 3600;
  const minutes = Math.floor(rest / 60);
  const secs = rest - minutes * 60;
  if (hours) return `${hours}h ${minutes}m ${secs}s`;
  if (minutes) return `${minutes}m ${secs}s`;
  return `${secs}s`;
}
