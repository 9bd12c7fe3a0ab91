// Router: what the learning router behind "auto" knows and decides: the ELO
// ratings shown beside its estimate, each user's influence, the routing mix and its cost over a window, how well
// its predicted quality matches real feedback (a reliability diagram), how
// long a decision takes, and the latest decisions with their explanations.
//
// GET /admin/router always has the mix; the rest only when a learning router
// runs in this process. Refreshed every 5 s; the calibration, read from SQL
// over the window, every 30 s or when the window changes. Each user who gave
// feedback has a button that resets their influence on routing.

import { h, clear, formatNumber, formatPercent, formatCompact, formatCost, NONE } from "../dom.js";
import { api, notify, describe } from "../api.js";
import { barChart, reliabilityChart } from "../charts.js";
import { app, card, pageHeader, table, badge, idText, select, field, poll, stat, compactValue, modelName, allUsers, actionButton } from "../ui.js";

const REFRESH_SECONDS = 5;
const CALIBRATION_SECONDS = 30;
const INITIAL_RATING = 1000; // ELO's starting value: bars grow up or down from it
const WINDOWS = [
  { value: "1", label: "last hour" },
  { value: "24", label: "last 24 hours" },
  { value: "168", label: "last 7 days" },
  { value: "720", label: "last 30 days" },
];
// Fields of a recent decision that have their own column.
const DECISION_COLUMNS = new Set(["user_id", "model", "reason", "scores", "explored"]);

const root = app();
const windowSelect = select("window_hours", WINDOWS, { value: "24", testid: "window-hours" });
windowSelect.addEventListener("change", () => refresh().catch(() => {}));
const routerName = h("span", { class: "muted" });
const body = h("div");
let lastState = null;
let calibration = null; // the last GET /admin/router/calibration
let calibrationAt = 0; // when it was fetched (ms)
let userNames = new Map(); // user id -> name, for the tables

// A user as "name usr_..." linking to their page (the id alone if unknown).
function userCell(id) {
  const name = userNames.get(id);
  return h("a", { href: `/admin/users#${id}` }, name ? [name, " "] : null, idText(id));
}

root.append(
  pageHeader("Router", h("span", {}, "How ", h("code", {}, "auto"), " picks a base model for each request. ", routerName), field("Window", windowSelect)),
  body,
);

async function refresh() {
  const hours = encodeURIComponent(windowSelect.value);
  const state = await api("GET", `/admin/router?window_hours=${hours}`);
  const stale = !calibration || Number(calibration.window_hours) !== Number(windowSelect.value) || Date.now() - calibrationAt > CALIBRATION_SECONDS * 1000;
  if (stale) {
    calibration = await api("GET", `/admin/router/calibration?window_hours=${hours}`);
    calibrationAt = Date.now();
  }
  lastState = state;
  draw(state);
}

function draw(state) {
  routerName.textContent = `Router in this process: ${state.router}.`;
  const learning = state.global !== undefined;
  const ratings = h("div", { class: "chart-box", dataset: { testid: "chart-ratings" } });
  const parts = [];

  if (!learning) {
    parts.push(h("div", { class: "callout", dataset: { testid: "no-learning-router" } }, "There is no learning router in this process: ratings, recent decisions and decision latency are not available. The routing mix below comes from the response log."));
  } else {
    const d = state.decision_ms || {};
    parts.push(
      h(
        "div",
        { class: "stats" },
        h(
          "div",
          { class: "stat wide", dataset: { testid: "decision-latency" } },
          h("div", { class: "stat-value" }, `p50 ${ms(d.p50)} · p99 ${ms(d.p99)}`),
          h("div", { class: "stat-label" }, `time to decide, over ${formatNumber(d.count, 0)} decisions`),
        ),
        stat("queries with feedback", formatNumber(state.local_queries, 0)),
        stat("users with feedback", formatNumber((state.users || []).length, 0)),
        stat("last feedback id", state.last_feedback_id ?? NONE),
      ),
      configLine(state.config || {}),
    );
  }

  const grid = h("div", { class: "grid" });
  grid.append(mixCard(state.mix || {}));
  if (learning) {
    const models = Object.keys(state.global).sort();
    grid.append(
      card(
        "Global ratings (ELO) and evidence",
        { aside: h("span", { class: "muted" }, `ELO bars from ${INITIAL_RATING}, shown beside the estimate (they do not decide)`) },
        ratings,
        table(
          ["Model", "ELO", "Games", "Evidence", "P(good)"],
          models.map((m) => [
            modelName(m),
            formatNumber(state.global[m].rating, 1),
            formatNumber(state.global[m].games, 0),
            formatNumber(state.global[m].evidence, 1),
            formatNumber(state.global[m].intercept_quality, 3),
          ]),
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
  if (learning) grid.append(loadCard(state));
  const reliability = calibration ? calibrationCard(calibration) : null;
  if (reliability) grid.append(reliability.card);
  parts.push(grid);
  if (learning) parts.push(usersCard(state.users || []), recentCard(state.recent || []));
  clear(body, ...parts);
  // Drawn once the card is in the page, so the chart knows its width.
  if (reliability) reliability.draw();
}

const ms = (value) => (typeof value === "number" ? `${formatNumber(value, value < 10 ? 2 : 0)} ms` : NONE);

function mixCard(mix) {
  const models = Object.entries(mix.models || {}).sort((a, b) => b[1].responses - a[1].responses);
  const total = models.reduce((sum, [, m]) => sum + m.responses, 0);
  const totalCost = models.reduce((sum, [, m]) => sum + m.cost, 0);
  const rows = models.map(([model, m]) => [
    modelName(model),
    formatNumber(m.responses, 0),
    h(
      "div",
      { class: "share" },
      h("span", { class: "share-bar" }, h("span", { class: "share-fill", style: { width: `${total ? (m.responses / total) * 100 : 0}%` } })),
      formatPercent(total ? m.responses / total : 0),
    ),
    formatCompact(m.prompt_tokens),
    formatCompact(m.completion_tokens),
    formatCost(m.cost),
  ]);
  return card(
    `Routing mix, ${windowLabel(mix.window_hours)}`,
    { aside: h("span", { class: "muted" }, `total cost ${formatCost(totalCost)}`), testid: "routing-mix", class: "wide" },
    table(["Model", "Responses", "Share", "Prompt tok.", "Output tok.", "Cost"], rows, { empty: "No responses in this window." }),
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
    modelName(m),
    formatNumber(load[m].in_flight, 0),
    formatCompact(load[m].queued_tokens),
    formatNumber(load[m].capacity, 0),
    typeof load[m].mean_request_seconds === "number" ? `${formatNumber(load[m].mean_request_seconds, 2)} s` : NONE,
    formatNumber(lengths[m], 0),
  ]);
  return card("Load and output lengths", {}, table(["Model", "In flight", "Queued tok.", "Capacity", "Mean time", "Lengths"], rows, { empty: "No models." }));
}

// The router's settings on one line (README, "Configuration", says what each is).
function configLine(config) {
  const entries = Object.entries(config);
  if (!entries.length) return null;
  return h("p", { class: "kv config-line" }, h("span", { class: "kv-key" }, "configuration: "), entries.map(([k, v]) => `${k}=${compactValue(v)}`).join("  "));
}

function usersCard(users) {
  const rows = users.map((u) => [
    userCell(u.user_id),
    formatNumber(u.feedback, 0),
    formatNumber(u.shared_weight, 2),
    typeof u.trust === "number" ? formatNumber(u.trust, 2) : NONE,
    formatNumber(u.own_evidence_rows, 0),
    resetButton(u.user_id),
  ]);
  return card(
    "Users' influence on routing",
    { aside: h("span", { class: "muted" }, "every vote shapes the user's own routing; in everyone else's, a vote counts only while others keep voting (a burst counts as one vote), and a user who keeps contradicting a confident estimate loses trust") },
    table(["User", "Feedback", "Weight in everyone's routing", "Trust", "Own evidence rows", ""], rows, { empty: "No user has given feedback yet.", testid: "user-ratings" }),
  );
}

// Makes the router ignore everything the user has said so far (their feedback
// stays stored); what they say afterwards counts again.
function resetButton(userId) {
  const who = userNames.get(userId) || userId;
  return actionButton(
    "Reset routing influence",
    async () => {
      const result = await api("POST", `/admin/users/${encodeURIComponent(userId)}/routing/reset`);
      await refresh();
      return result;
    },
    {
      danger: true,
      testid: `reset-routing-${userId}`,
      title: "The router forgets this user's feedback so far; later feedback counts again",
      confirmText: `Reset ${who}'s influence on routing? The router will ignore all their feedback so far (it stays stored); feedback they give later counts again.`,
      success: (result) => (result ? `The router now ignores ${who}'s feedback up to #${result.ignored_feedback_up_to}.` : null),
    },
  );
}

// The served model's predicted quality against what users said of its
// answers, over the window; the offline benchmark's figures beside it when
// it has written them. Returns the card and a draw() for once it is in the page.
function calibrationCard(data) {
  const series = [{ name: `live, ${windowLabel(data.window_hours)}`, bins: data.bins }];
  const offline = data.offline;
  if (offline) series.push({ name: `offline (${offline.source})`, bins: offline.bins, dash: true });
  const box = h("div", { class: "chart-box reliability-box", dataset: { testid: "chart-calibration" } });
  const score = (value) => (typeof value === "number" ? formatNumber(value, 3) : NONE);
  const summary = [["live", data], ...(offline ? [[`offline (${offline.source})`, offline]] : [])].map(([name, figures]) => [
    name,
    formatNumber(figures.count, 0),
    score(figures.brier),
    score(figures.ece),
  ]);
  const element = card(
    "Calibration of predicted quality",
    { aside: h("span", { class: "muted" }, "predicted P(good answer) of the served model vs. ratings (+1 = 1, 0 = ½, −1 = 0) and preferences"), testid: "calibration", class: "wide" },
    box,
    table(["Source", "Judged answers", "Brier", "ECE"], summary, { testid: "calibration-scores" }),
  );
  return {
    card: element,
    draw: () => reliabilityChart(box, { label: "Reliability diagram: observed rate against predicted probability", series }),
  };
}

function recentCard(recent) {
  const rows = recent.map((d) => [
    userCell(d.user_id),
    h(
      "div",
      {},
      h("strong", {}, modelName(d.model)),
      // Older decisions have no `explored` field: only true marks one.
      d.explored === true ? [" ", badge("explored", { title: "the router tried this model to learn, not because it scored best", dataset: { testid: "explored" } })] : null,
    ),
    badge(d.reason),
    h(
      "div",
      { class: "scores" },
      Object.entries(d.scores || {})
        .sort((a, b) => b[1] - a[1])
        .map(([m, v]) => h("div", { class: m === d.model ? "chosen" : null, title: m === d.model ? "chosen" : null }, `${m} ${formatNumber(v, 4)}`)),
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

// Names first (once), then the state every few seconds.
allUsers()
  .then((users) => {
    userNames = new Map(users.map((u) => [u.id, u.name]));
  })
  .catch((error) => notify(`Could not load user names: ${describe(error)}`, "error"))
  .finally(() => poll(refresh, REFRESH_SECONDS * 1000));

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => lastState && draw(lastState), 150);
});
