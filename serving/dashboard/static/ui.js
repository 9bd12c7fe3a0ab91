// Pieces every page uses: cards, tables, badges, selects, buttons that run an
// API call, polling, and the evaluation report of a fine-tuned version.

import { h, clear, NONE, formatNumber, formatPercent } from "./dom.js";
import { api, describe, notify, dismiss } from "./api.js";

// The page's <main id="app">, emptied.
export function app() {
  return clear(document.getElementById("app"));
}

// A page heading with an optional line under it and controls on the right.
export function pageHeader(title, subtitle, ...controls) {
  return h(
    "div",
    { class: "page-header" },
    h("div", {}, h("h1", {}, title), subtitle ? h("p", { class: "muted" }, subtitle) : null),
    controls.length ? h("div", { class: "page-controls" }, controls) : null,
  );
}

// card("Title", {testid, class, aside}, ...children): a white panel with a heading.
export function card(title, options = {}, ...children) {
  return h(
    "section",
    { class: `card ${options.class || ""}`.trim(), dataset: options.testid ? { testid: options.testid } : null },
    title || options.aside
      ? h("div", { class: "card-head" }, title ? h("h2", {}, title) : null, options.aside || null)
      : null,
    children,
  );
}

// A state as a coloured pill: queued, running, succeeded, active, candidate, ...
export function badge(state, attrs = {}) {
  const text = state === null || state === undefined ? "none" : String(state);
  return h("span", { ...attrs, class: `badge badge-${text.replace(/[^a-z_-]/gi, "")}` }, text);
}

// table(["Name", "Id"], rows, {empty: "No users yet"}) where each row is
// {cells: [...], attrs: {...}} or just the array of cells; a cell is text or a node.
export function table(headers, rows, options = {}) {
  const body = h("tbody");
  for (const row of rows) {
    const cells = Array.isArray(row) ? row : row.cells;
    const attrs = Array.isArray(row) ? {} : row.attrs || {};
    body.append(h("tr", attrs, cells.map((cell) => h("td", {}, cell === null || cell === undefined ? NONE : cell))));
  }
  if (!rows.length) {
    body.append(h("tr", { class: "empty" }, h("td", { colspan: headers.length }, options.empty || "Nothing here yet.")));
  }
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: options.class || null, dataset: options.testid ? { testid: options.testid } : null },
      h("thead", {}, h("tr", {}, headers.map((text) => h("th", {}, text)))),
      body,
    ),
  );
}

// An id in monospace, selectable, with the whole id as its tooltip.
export function idText(id) {
  if (!id) return NONE;
  return h("code", { class: "id", title: id }, id);
}

// <select> from [{value, label}]; `blank` adds a first empty choice with that label.
export function select(name, choices, { blank = null, value = "", testid = null, required = false } = {}) {
  const el = h(
    "select",
    { name, required, dataset: testid ? { testid } : null },
    blank !== null ? h("option", { value: "" }, blank) : null,
    choices.map((c) => h("option", { value: c.value }, c.label)),
  );
  if (value || blank !== null) el.value = value; // else the first choice stays selected
  return el;
}

// A base model's id, kept on one line (the ids are long and hyphenated).
export function modelName(id) {
  return h("span", { class: "nowrap" }, id === null || id === undefined ? NONE : id);
}

// The number in a <input type=number>: null when it is empty, an error when
// the browser could not read what was typed (its value is then "" too, which
// would otherwise silently mean "empty").
export function numberOf(input, label) {
  if (input.validity && input.validity.badInput) throw new Error(`${label}: not a number`);
  return input.value.trim() === "" ? null : Number(input.value);
}

// A labelled form field. Forms are `novalidate`: the server checks every value,
// and its message (shown in the page) is the one the admin should read.
export function field(label, control, hint = null) {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), control, hint ? h("span", { class: "hint" }, hint) : null);
}

// The base models as select choices (GET /admin/models).
export async function modelChoices() {
  const page = await api("GET", "/admin/models");
  return page.data.map((m) => ({ value: m.id, label: m.id }));
}

// Every user as select choices, following has_more to the end.
export async function userChoices() {
  const users = await allUsers();
  return users.map((u) => ({ value: u.id, label: `${u.name} (${u.id})` }));
}

export async function allUsers() {
  const users = [];
  let after = null;
  for (;;) {
    const path = after ? `/admin/users?limit=1000&after=${encodeURIComponent(after)}` : "/admin/users?limit=1000";
    const page = await api("GET", path);
    users.push(...page.data);
    if (!page.has_more || !page.data.length) return users;
    after = page.data[page.data.length - 1].id;
  }
}

// A button that runs `action` (async): disabled while it runs, its result
// announced with `success` (a string, or a function of the result), its
// failure with the server's message. Resolves to the result, or undefined.
export function actionButton(label, action, { success = null, danger = false, testid = null, confirmText = null, title = null } = {}) {
  const button = h(
    "button",
    { type: "button", class: danger ? "btn danger" : "btn", dataset: testid ? { testid } : null, title },
    label,
  );
  button.addEventListener("click", async () => {
    if (confirmText && !window.confirm(confirmText)) return;
    await runAction(button, action, success);
  });
  return button;
}

// Runs `action` with `control` (a button or form) disabled meanwhile; shows the outcome.
export async function runAction(control, action, success) {
  control.disabled = true;
  control.setAttribute("aria-busy", "true");
  try {
    const result = await action();
    const message = typeof success === "function" ? success(result) : success;
    if (message) notify(message, "success");
    return result;
  } catch (error) {
    notify(describe(error), "error");
    return undefined;
  } finally {
    control.disabled = false;
    control.removeAttribute("aria-busy");
  }
}

// Calls `task` now and then every `ms` (a number, or a function giving one)
// after each run ends (never two at once).
// A failing run shows its error once and is taken back when a run succeeds;
// while the tab is hidden nothing is fetched. Returns stop().
export function poll(task, ms) {
  let timer = null;
  let stopped = false;
  let shownError = null;
  let running = false;
  const delay = () => (typeof ms === "function" ? ms() : ms);
  const run = async () => {
    if (stopped || running) return;
    clearTimeout(timer);
    if (document.hidden) {
      timer = setTimeout(run, delay());
      return;
    }
    running = true;
    try {
      await task();
      if (shownError) dismiss(shownError);
      shownError = null;
    } catch (error) {
      if (!shownError || !shownError.isConnected) shownError = notify(`Refresh failed: ${describe(error)}`, "error");
    } finally {
      running = false;
    }
    if (!stopped) timer = setTimeout(run, delay());
  };
  const onVisible = () => {
    if (!document.hidden) run();
  };
  document.addEventListener("visibilitychange", onVisible);
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisible);
  };
}

// Scrolls to `el` only when it starts below the window (a detail panel under
// the list on a narrow screen); otherwise the page stays where the admin is.
export function reveal(el) {
  if (el.getBoundingClientRect().top > window.innerHeight - 80) el.scrollIntoView({ block: "start" });
}

// A number with its label, large: the figures on top of cards.
export function stat(label, value, attrs = {}) {
  return h("div", { class: "stat", ...attrs }, h("div", { class: "stat-value" }, value), h("div", { class: "stat-label" }, label));
}

// key=value pairs for objects the page does not know field by field.
export function compactValue(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
  if (typeof value === "string") return value;
  const text = JSON.stringify(value, (_key, v) => (typeof v === "number" && !Number.isInteger(v) ? Number(v.toPrecision(4)) : v));
  return text.length > 160 ? `${text.slice(0, 157)}…` : text;
}

// ---------------------------------------------------------------------------
// The evaluation report of a fine-tuned version (its eval_metrics), or of a
// job's "evaluation" event: the gate's verdict and its reasons, NLL per token
// of base, current and candidate (lower is better), the gains with their lower
// bounds, the generic-text rise and the factual probes.

// The gate's three verdicts, as admins read them.
const VERDICTS = {
  promote: "passed the gate",
  hold_back: "held back",
  not_enough_data: "not enough data to judge",
};

// Reports stored before `verdict` existed only have `promote`.
export function verdictOf(metrics) {
  if (!metrics) return null;
  if (metrics.verdict in VERDICTS) return metrics.verdict;
  if (metrics.promote === true) return "promote";
  if (metrics.promote === false) return "hold_back";
  return null;
}

export function verdictBadge(verdict, attrs = {}) {
  return h("span", { ...attrs, class: `badge badge-${verdict}` }, VERDICTS[verdict] || verdict);
}

export function evalSummary(metrics) {
  if (!metrics || !metrics.nll_per_token) {
    return h("span", { class: "muted" }, metrics && Object.keys(metrics).length ? compactValue(metrics) : "no evaluation");
  }
  const nll = metrics.nll_per_token;
  // With no experts before this one, "current" is the base model itself.
  const noCurrent = metrics.gain_vs_current === null || metrics.gain_vs_current === undefined;
  const present = ["base", "current", "candidate"].filter((k) => typeof nll[k] === "number" && !(k === "current" && noCurrent));
  const worst = Math.max(...present.map((k) => nll[k]));
  const best = Math.min(...present.map((k) => nll[k]));
  // Bars from the best value's 90% up: plain bars from 0 would all look equal.
  const floor = best * 0.9;
  const bars = present.map((k) =>
    h(
      "div",
      { class: `nll-row${nll[k] === best ? " best" : ""}` },
      h("span", { class: "nll-name" }, k),
      h("span", { class: "nll-bar" }, h("span", { class: `nll-fill nll-${k}`, style: { width: `${worst > floor ? ((nll[k] - floor) / (worst - floor)) * 100 : 100}%` } })),
      h("span", { class: "nll-value" }, formatNumber(nll[k], 4)),
    ),
  );
  // Significant: the whole interval lies above zero. Stored reports may lack
  // the flag (it is computed from `lower`), so it is derived the same way.
  const gain = (label, g) => {
    if (!g) return null;
    const significant = typeof g.significant === "boolean" ? g.significant : typeof g.lower === "number" && g.lower > 0;
    return h(
      "div",
      { class: "gain" },
      `${label}: ${formatNumber(g.gain, 4)} nats/token (lower bound ${formatNumber(g.lower, 4)}${typeof g.p_value === "number" ? `, p ${formatNumber(g.p_value, 3)}` : ""}) `,
      significant ? h("span", { class: "ok" }, "✓ significant") : h("span", { class: "bad" }, "✗ not significant"),
    );
  };
  const generic = metrics.generic_rise;
  const verdict = verdictOf(metrics);
  const reasons = Array.isArray(metrics.reasons) ? metrics.reasons : [];
  return h(
    "div",
    { class: "eval" },
    verdict
      ? h(
          "div",
          { class: "verdict-line", dataset: { testid: "eval-verdict" } },
          verdictBadge(verdict),
          reasons.length ? h("ul", { class: "reasons" }, reasons.map((r) => h("li", {}, r))) : null,
        )
      : null,
    h("div", { class: "eval-caption muted" }, `NLL/token on ${formatNumber(metrics.test_conversations, 0)} test conversations (${formatNumber(metrics.test_tokens, 0)} tokens); lower is better`),
    bars,
    gain("gain vs base", metrics.gain_vs_base),
    noCurrent ? h("div", { class: "gain muted" }, "no earlier experts: current = base") : gain("gain vs current", metrics.gain_vs_current),
    typeof generic === "number" ? h("div", { class: "gain" }, `generic text NLL rise: ${formatPercent(generic, 2)}`) : null,
    probesSummary(metrics),
  );
}

// The factual probes: how many the base model and the candidate answer, and which the candidate lost.
function probesSummary(metrics) {
  const answered = metrics.probes_answered;
  if (!metrics.probes_asked || !answered) return null;
  const lost = Array.isArray(metrics.probes_lost) ? metrics.probes_lost : [];
  const line = `factual probes answered: base ${answered.base}, candidate ${answered.candidate} of ${metrics.probes_asked}`;
  if (!lost.length) return h("div", { class: "gain", dataset: { testid: "eval-probes" } }, line, h("span", { class: "ok" }, " ✓ none lost"));
  return h(
    "details",
    { class: "gain probes", dataset: { testid: "eval-probes" } },
    h("summary", {}, line, h("span", { class: "bad" }, ` ✗ ${lost.length} lost`)),
    h("ul", { class: "lost-probes" }, lost.map((q) => h("li", {}, q))),
  );
}

// The greedy answers of base, current (when the user had experts) and
// candidate to the newest held-out questions, side by side; null without samples.
// Long text wraps, and past a few lines scrolls inside its cell.
export function sampleAnswers(metrics) {
  const samples = metrics && Array.isArray(metrics.samples) ? metrics.samples : [];
  if (!samples.length) return null;
  const columns = ["base", "current", "candidate"].filter((k) => samples.some((x) => typeof x[k] === "string"));
  const text = (value) => (typeof value === "string" ? h("div", { class: "sample-text" }, value || h("span", { class: "muted" }, "(empty answer)")) : NONE);
  return h(
    "table",
    { class: "samples", dataset: { testid: "sample-answers" } },
    h("thead", {}, h("tr", {}, h("th", {}, "question"), columns.map((k) => h("th", {}, k)))),
    h(
      "tbody",
      {},
      samples.map((x) => h("tr", {}, h("td", {}, text(x.question)), columns.map((k) => h("td", { class: `sample-${k}` }, text(x[k]))))),
    ),
  );
}
