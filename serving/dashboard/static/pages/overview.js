// Overview: the service's live metrics as charts.
//
// GET /admin/overview?since=<t> gives the points after t, oldest first, one
// every `bucket_seconds`. The page keeps the last hour (360 points), asks
// again every bucket for what came after its newest point, and redraws.

import { h, formatCompact, formatCost, formatNumber, formatPercent } from "../dom.js";
import { api } from "../api.js";
import { lineChart, stackedAreaChart, barChart } from "../charts.js";
import { app, card, poll, stat } from "../ui.js";

const MAX_POINTS = 360;
const MIN_POLL_SECONDS = 2;
const JOB_STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
const JOB_COLOURS = ["#64748b", "#2563eb", "#16a34a", "#dc2626", "#a8a29e"];

let points = [];
let bucketSeconds = 10;

const root = app();
const subtitle = h("p", { class: "muted" }, "Live service metrics.");
const stats = h("div", { class: "stats" });
const totalCost = h("span", { class: "figure", dataset: { testid: "cost-total" } }, "—");

// One chart container per card; the data-testids are the browser tests' hooks.
const charts = {
  requests: h("div", { class: "chart-box", dataset: { testid: "chart-requests" } }),
  latency: h("div", { class: "chart-box", dataset: { testid: "chart-latency" } }),
  routing: h("div", { class: "chart-box", dataset: { testid: "chart-routing" } }),
  cost: h("div", { class: "chart-box", dataset: { testid: "chart-cost" } }),
  cache: h("div", { class: "chart-box", dataset: { testid: "chart-cache" } }),
  queue: h("div", { class: "chart-box", dataset: { testid: "chart-queue" } }),
  jobs: h("div", { class: "chart-box", dataset: { testid: "chart-jobs" } }),
};

root.append(
  h("div", { class: "page-header" }, h("div", {}, h("h1", {}, "Overview"), subtitle)),
  stats,
  h(
    "div",
    { class: "grid" },
    card("Requests & tokens per minute", { class: "wide" }, charts.requests),
    card("Latency (p50 / p99)", {}, charts.latency),
    card("Routing mix per base model", {}, charts.routing),
    card("Cost per minute", { aside: h("span", { class: "muted" }, "total ", totalCost) }, charts.cost),
    card("Adapter cache hit rate", {}, charts.cache),
    card("Queue depth", {}, charts.queue),
    card("Fine-tune jobs by state", {}, charts.jobs),
  ),
);

// New points replace any we hold from their first time on (the newest bucket
// may have been partial when we last asked), then the oldest fall off.
function merge(fresh) {
  if (!fresh.length) return;
  const from = fresh[0].t;
  points = points.filter((p) => p.t < from).concat(fresh).slice(-MAX_POINTS);
}

async function refresh() {
  // The first time everything the server holds (since=0): the browser's clock may differ from the server's.
  const since = points.length ? points[points.length - 1].t : 0;
  const data = await api("GET", `/admin/overview?since=${encodeURIComponent(since)}`);
  if (data.bucket_seconds) bucketSeconds = data.bucket_seconds;
  merge(data.points || []);
  draw();
}

const column = (key) => points.map((p) => (p[key] === undefined ? null : p[key]));

function draw() {
  const times = points.map((p) => p.t);
  const latest = points.length ? points[points.length - 1] : null;
  subtitle.textContent = `Live service metrics: a point every ${bucketSeconds} s, the last ${Math.round((MAX_POINTS * bucketSeconds) / 60)} minutes kept.`;
  drawStats(latest);

  lineChart(charts.requests, {
    times,
    label: "Requests and tokens per minute",
    series: [
      { name: "requests/min", values: column("requests_per_minute") },
      { name: "tokens/min (right)", values: column("tokens_per_minute"), axis: "right" },
      { name: "prompt tokens/min (right)", values: column("prompt_tokens_per_minute"), axis: "right", dash: true },
      { name: "completion tokens/min (right)", values: column("completion_tokens_per_minute"), axis: "right", dash: true },
    ],
  });
  lineChart(charts.latency, {
    times,
    unit: "s",
    label: "Latency p50 and p99 in seconds",
    series: [
      { name: "p50", values: column("latency_p50_s") },
      { name: "p99", values: column("latency_p99_s") },
    ],
  });

  // Every model seen in the window, in name order, so each keeps its colour.
  const models = [...new Set(points.flatMap((p) => Object.keys(p.routing_per_minute || {})))].sort();
  stackedAreaChart(charts.routing, {
    times,
    unit: "/min",
    label: "Routed requests per minute by base model",
    series: models.map((model) => ({
      name: model,
      values: points.map((p) => (p.routing_per_minute || {})[model] ?? 0),
    })),
  });

  lineChart(charts.cost, { times, label: "Cost per minute", series: [{ name: "cost/min", values: column("cost_per_minute") }] });
  totalCost.textContent = latest && typeof latest.cost_total === "number" ? formatCost(latest.cost_total) : "—";

  lineChart(charts.cache, {
    times,
    unit: "%",
    yMin: 0,
    yMax: 100,
    label: "Adapter cache hit rate in percent",
    series: [{ name: "hit rate", values: column("cache_hit_rate").map((v) => (v === null ? null : v * 100)) }],
  });
  lineChart(charts.queue, {
    times,
    label: "Queue depth and running requests",
    series: [
      { name: "waiting", values: column("queue_depth") },
      { name: "running", values: column("running_requests") },
    ],
  });
  const jobs = (latest && latest.jobs) || {};
  barChart(charts.jobs, {
    label: "Fine-tune jobs by state",
    labels: JOB_STATES,
    values: latest ? JOB_STATES.map((state) => jobs[state] ?? 0) : [],
    colors: JOB_COLOURS,
  });
}

function drawStats(latest) {
  const value = (key, format) => (latest && latest[key] !== null && latest[key] !== undefined ? format(latest[key]) : "—");
  stats.replaceChildren(
    stat("requests / min", value("requests_per_minute", formatCompact)),
    stat("tokens / min", value("tokens_per_minute", formatCompact)),
    stat("latency p50", value("latency_p50_s", (v) => `${formatNumber(v, 2)} s`)),
    stat("latency p99", value("latency_p99_s", (v) => `${formatNumber(v, 2)} s`)),
    stat("cache hit rate", value("cache_hit_rate", (v) => formatPercent(v))),
    stat("waiting / running", latest ? `${latest.queue_depth ?? "—"} / ${latest.running_requests ?? "—"}` : "—"),
    stat("total cost", value("cost_total", formatCost)),
  );
}

draw(); // empty charts at once, so the layout does not jump when data comes
poll(refresh, () => Math.max(MIN_POLL_SECONDS, bucketSeconds) * 1000);

// Charts are drawn at the width of their card: draw again when the window changes size.
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(draw, 150);
});
