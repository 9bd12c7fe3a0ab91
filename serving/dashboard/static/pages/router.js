// Router: what the learning router behind "auto" knows and decides: global
// and per-user ratings, the routing mix and its cost over a window, how long
// a decision takes, and the latest decisions with their explanations.
//
// GET /admin/router always has the mix; the rest only when a learning router
// runs in this process. Refreshed every 5 s.

import { h, clear, formatNumber, formatPercent, formatCompact, NONE } from "../dom.js";
import { api } from "../api.js";
import { barChart } from "../charts.js";
import { app, card, pageHeader, table, badge, idText, select, field, poll, stat, compactValue } from "../ui.js";

const REFRESH_SECONDS = 5;
const INITIAL_RATING = 1000; // ELO's starting value: bars grow up or down from it
const WINDOWS = [
  { value: "1", label: "last hour" },
  { value: "24", label: "last 24 hours" },
  { value: "168", label: "last 7 days" },
  { value: "720", label: "last 30 days" },
];
// Fields of a recent decision that have their own column.
const DECISION_COLUMNS = new Set(["user_id", "model", "reason", "scores"]);

const root = app();
const windowSelect = select("window_hours", WINDOWS, { value: "24", testid: "window-hours" });
windowSelect.addEventListener("change", () => refresh().catch(() => {}));
const routerName = h("span", { class: "muted" });
const body = h("div");
let lastState = null;

root.append(
  pageHeader("Router", h("span", {}, "How ", h("code", {}, "auto"), " picks a base model for each request. ", routerName), field("Window", windowSelect)),
  body,
);

async function refresh() {
  const state = await api("GET", `/admin/router?window_hours=${encodeURIComponent(windowSelect.value)}`);
  lastState = state;
  draw(state);
}

function draw(state) {
  routerName.textContent = `Router in this process: ${state.router}.`;
  const learning = state.global !== undefined;
  const ratings = h("div", { class: "chart-box", dataset: { testid: "chart-ratings" } });
  const parts = [];

  if (!learning) {
    parts.push(h("div", { class: "callout", dataset: { testid: "no-learning-router" } }, "No learning router in this process: ratings, decisions and their latency are not available. The routing mix below comes from the response log."));
  } else {
    const d = state.decision_ms || {};
    parts.push(
      h(
        "div",
        { class: "stats" },
        h(
          "div",
          { class: "stat", dataset: { testid: "decision-latency" } },
          h("div", { class: "stat-value" }, `${ms(d.p50)} / ${ms(d.p99)}`),
          h("div", { class: "stat-label" }, `decision time p50 / p99 (${formatNumber(d.count, 0)} decisions)`),
        ),
        stat("queries with feedback", formatNumber(state.local_queries, 0)),
        stat("users with ratings", formatNumber((state.users || []).length, 0)),
        stat("last feedback id", state.last_feedback_id ?? NONE),
      ),
    );
  }

  const grid = h("div", { class: "grid" });
  if (learning) {
    const models = Object.keys(state.global).sort();
    grid.append(
      card(
        "Global ratings (ELO)",
        { aside: h("span", { class: "muted" }, `bars from ${INITIAL_RATING}, the starting rating`) },
        ratings,
        table(
          ["Model", "Rating", "Games"],
          models.map((m) => [m, formatNumber(state.global[m].rating, 1), formatNumber(state.global[m].games, 0)]),
        ),
      ),
    );
    // Drawn once the card is in the page, so the chart knows its width.
    queueMicrotask(() =>
      barChart(ratings, {
        label: "Global ELO rating per model",
        labels: models,
        values: models.map((m) => state.global[m].rating),
        baseline: INITIAL_RATING,
      }),
    );
  }
  grid.append(mixCard(state.mix || {}));
  if (learning) {
    grid.append(loadCard(state), configCard(state.config || {}));
  }
  parts.push(grid);
  if (learning) parts.push(usersCard(state.users || [], Object.keys(state.global).sort()), recentCard(state.recent || []));
  clear(body).append(...parts);
}

const ms = (value) => (typeof value === "number" ? `${formatNumber(value, value < 10 ? 2 : 0)} ms` : NONE);

function mixCard(mix) {
  const models = Object.entries(mix.models || {}).sort((a, b) => b[1].responses - a[1].responses);
  const total = models.reduce((sum, [, m]) => sum + m.responses, 0);
  const totalCost = models.reduce((sum, [, m]) => sum + m.cost, 0);
  const rows = models.map(([model, m]) => [
    model,
    formatNumber(m.responses, 0),
    h(
      "div",
      { class: "share" },
      h("span", { class: "share-bar" }, h("span", { class: "share-fill", style: { width: `${total ? (m.responses / total) * 100 : 0}%` } })),
      formatPercent(total ? m.responses / total : 0),
    ),
    formatCompact(m.prompt_tokens),
    formatCompact(m.completion_tokens),
    formatNumber(m.cost, 4),
  ]);
  return card(
    `Routing mix, ${windowLabel(mix.window_hours)}`,
    { aside: h("span", { class: "muted" }, `total cost ${formatNumber(totalCost, 4)}`), testid: "routing-mix" },
    table(["Model", "Responses", "Share", "Prompt tokens", "Completion tokens", "Cost"], rows, { empty: "No responses in this window." }),
  );
}

function windowLabel(hours) {
  const known = WINDOWS.find((w) => Number(w.value) === Number(hours));
  return known ? known.label : `last ${hours} hours`;
}

function loadCard(state) {
  const load = state.load || {};
  const lengths = state.output_lengths || {};
  const models = Object.keys(load).sort();
  const rows = models.map((m) => [
    m,
    formatNumber(load[m].in_flight, 0),
    formatCompact(load[m].queued_tokens),
    formatNumber(load[m].capacity, 0),
    typeof load[m].mean_request_seconds === "number" ? `${formatNumber(load[m].mean_request_seconds, 2)} s` : NONE,
    formatNumber(lengths[m], 0),
  ]);
  return card("Load and output lengths", {}, table(["Model", "In flight", "Queued tokens", "Capacity", "Mean request", "Lengths learnt"], rows, { empty: "No models." }));
}

function configCard(config) {
  return card(
    "Configuration",
    {},
    h("dl", { class: "facts" }, Object.entries(config).map(([k, v]) => [h("dt", {}, k), h("dd", {}, compactValue(v))])),
  );
}

function usersCard(users, models) {
  const rows = users.map((u) => [
    h("a", { href: `/admin/users#${u.user_id}` }, idText(u.user_id)),
    formatNumber(u.feedback, 0),
    formatNumber(u.weight, 3),
    ...models.map((m) => (typeof u.ratings[m] === "number" ? formatNumber(u.ratings[m], 1) : NONE)),
  ]);
  return card(
    "Per-user ratings",
    { aside: h("span", { class: "muted" }, "a user's own ratings weigh n / (n + prior) after n pieces of feedback") },
    table(["User", "Feedback", "Weight", ...models], rows, { empty: "No user has given feedback yet.", testid: "user-ratings" }),
  );
}

function recentCard(recent) {
  const rows = recent.map((d) => [
    h("a", { href: `/admin/users#${d.user_id}` }, idText(d.user_id)),
    h("strong", {}, d.model),
    badge(d.reason),
    h(
      "div",
      { class: "scores" },
      Object.entries(d.scores || {})
        .sort((a, b) => b[1] - a[1])
        .map(([m, v]) => h("div", { class: m === d.model ? "chosen" : null }, `${m} ${formatNumber(v, 4)}`)),
    ),
    explanation(d),
  ]);
  return card(
    "Recent decisions",
    { aside: h("span", { class: "muted" }, `${recent.length} newest first`) },
    table(["User", "Model", "Reason", "Scores", "Explanation"], rows, { empty: "No decisions yet.", testid: "recent-decisions", class: "decisions" }),
  );
}

// The fields without a column, compactly: scalars as key=value on one line,
// objects one line per entry (e.g. each candidate's parts), lists shortened.
function explanation(decision) {
  const scalars = [];
  const nested = [];
  for (const [key, value] of Object.entries(decision)) {
    if (DECISION_COLUMNS.has(key)) continue;
    if (value !== null && typeof value === "object" && !Array.isArray(value)) nested.push([key, value]);
    else scalars.push(`${key}=${compactValue(value)}`);
  }
  return h(
    "div",
    { class: "kv" },
    scalars.length ? h("div", {}, scalars.join("  ")) : null,
    nested.map(([key, value]) =>
      h(
        "div",
        {},
        h("span", { class: "kv-key" }, `${key}: `),
        Object.entries(value)
          .map(([k, v]) =>
            v !== null && typeof v === "object" && !Array.isArray(v)
              ? `${k} (${Object.entries(v).map(([kk, vv]) => `${kk}=${compactValue(vv)}`).join(" ")})`
              : `${k}=${compactValue(v)}`,
          )
          .join("; "),
      ),
    ),
  );
}

poll(refresh, REFRESH_SECONDS * 1000);

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => lastState && draw(lastState), 150);
});
