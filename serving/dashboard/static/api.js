// Talking to the admin API, and telling the admin what happened.
//
// The browser's session cookie authenticates every call (credentials:
// "same-origin"). A cookie is sent whoever made the page, so each call that
// changes something also carries the page's CSRF token, which only our own
// pages know: the server refuses a POST/PATCH/DELETE without it.

import { h, clear } from "./dom.js";

// A non-2xx answer. `message` is the server's own sentence from
// {"error": {"message", "type", "code"}}, ready to show to the admin.
export class ApiFailure extends Error {
  constructor(status, code, message, type = null) {
    super(message);
    this.name = "ApiFailure";
    this.status = status;
    this.code = code;
    this.type = type;
  }
}

const SAFE_METHODS = new Set(["GET", "HEAD"]);

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.getAttribute("content") : "";
}

function isPlainObject(value) {
  if (value === null || typeof value !== "object") return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null || Array.isArray(value);
}

// api("GET", "/admin/users") -> the parsed JSON body (null for an empty one).
// `body`: a plain object (sent as JSON) or FormData (sent as multipart, the
// browser writes its boundary). Throws ApiFailure on any non-2xx answer.
export async function api(method, path, body) {
  const verb = method.toUpperCase();
  // Accept: JSON also tells the server we want the API, not the page of the same path.
  const headers = { Accept: "application/json" };
  const init = { method: verb, credentials: "same-origin", headers };
  if (body instanceof FormData) {
    init.body = body;
  } else if (isPlainObject(body)) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  } else if (body !== undefined && body !== null) {
    throw new TypeError("api(): body must be a plain object or FormData");
  }
  if (!SAFE_METHODS.has(verb)) headers["X-CSRF-Token"] = csrfToken();

  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiFailure(0, "network_error", `The server could not be reached (${error.message}).`);
  }

  if (response.status === 401) {
    // The session ended (expired, signed out elsewhere): sign in again and come back here.
    const here = location.pathname + location.search;
    location.assign(`/admin/login?next=${encodeURIComponent(here)}`);
    throw new ApiFailure(401, "session_expired", "The session has ended: sign in again.");
  }

  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null; // not JSON (a proxy's error page): handled below
    }
  }
  if (!response.ok) {
    const error = data && typeof data === "object" ? data.error : null;
    const message =
      (error && error.message) ||
      (data && typeof data.detail === "string" ? data.detail : null) ||
      `${response.status} ${response.statusText || "error"} from ${verb} ${path}`;
    throw new ApiFailure(
      response.status,
      (error && error.code) || null,
      String(message),
      (error && error.type) || null,
    );
  }
  return data;
}

// Builds "/admin/jobs?state=queued&user_id=u": empty and null parameters are left out.
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

// The text of any error for the notice area: the server's message when there is one.
export function describe(error) {
  if (error instanceof ApiFailure) return error.message;
  return error && error.message ? error.message : String(error);
}

// Shows `message` (a string, or a node such as a sentence with a link) in the
// notice area under the top bar. kind: "error" (red, stays until dismissed or
// replaced), "success" (green) or "info" (both fade after a while).
// Returns the message element, so a caller can take its own message back.
let fadeTimer = null;
export function notify(message, kind = "info") {
  const area = document.getElementById("notice");
  if (!area) return null;
  clearTimeout(fadeTimer);
  const close = h(
    "button",
    { type: "button", class: "notice-close", "aria-label": "Dismiss", onclick: () => dismiss(item) },
  );
  const item = h(
    "div",
    { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status", dataset: { kind } },
    h("span", { class: "notice-text" }, message),
    close,
  );
  clear(area, item);
  area.dataset.kind = kind;
  if (kind !== "error") fadeTimer = setTimeout(() => dismiss(item), 8000);
  return item;
}

// Removes a message (only if it is still the one shown).
export function dismiss(item) {
  const area = document.getElementById("notice");
  if (area && item && item.parentNode === area) {
    clear(area);
    delete area.dataset.kind;
  }
}
