// Jobs: start a fine-tune, watch the queue and the history, and follow one job
// live: its training and validation loss, throughput, ETA and events; cancel or
// retry it; once it ended, its verdict (promoted, held back and why, or the error).
//
// The open job is the URL's hash (/admin/jobs#ftjob_...), so adapters and
// users can link to it. The lists refresh every 5 s; an open job that is
// queued or running asks for its new events every 2 s.

import { h, clear, timeEl, formatNumber, formatDuration, NONE } from "../dom.js";
import { api, notify, describe, withQuery, ApiFailure } from "../api.js";
import { lineChart, PALETTE } from "../charts.js";
import {
  app, card, pageHeader, table, badge, idText, select, field, actionButton, runAction, poll,
  modelChoices, allUsers, evalSummary, compactValue, modelName, numberOf, reveal,
} from "../ui.js";

const LIST_SECONDS = 5;
const EVENT_SECONDS = 2;
const LIVE = new Set(["queued", "running"]);
const RETRYABLE = new Set(["failed", "cancelled"]);
const HISTORY_STATES = ["succeeded", "failed", "cancelled"];

const root = app();
let users = [];
let models = [];
let historyState = ""; // the history's state filter; "" = every finished job

const formSlot = h("div");
const queueSlot = h("div");
const historySlot = h("div");
const detailSlot = h("div", { class: "detail-slot" });

root.append(
  pageHeader("Fine-tune jobs", "Training runs of specialists (one user's data) and generalists (everyone's)."),
  formSlot,
  h(
    "div",
    { class: "split even" },
    h(
      "div",
      { class: "split-main" },
      card("Queue", { aside: h("span", { class: "muted" }, "queued and running") }, queueSlot),
      card("History", { aside: historyFilter() }, historySlot),
    ),
    h("div", { class: "split-side" }, detailSlot),
  ),
);

const userName = (id) => {
  const user = users.find((u) => u.id === id);
  return user ? user.name : id;
};

// --- Start a job -------------------------------------------------------------------

function drawForm() {
  const model = select("model", models, { required: true, value: models.length ? models[0].value : "" });
  const user = select("user_id", users.map((u) => ({ value: u.id, label: `${u.name} (${u.id})` })), {
    blank: "none: a generalist (everyone's data)",
  });
  const epochs = h("input", { name: "epochs", type: "number", min: 1, max: 20, step: 1, placeholder: "default" });
  const rate = h("input", { name: "learning_rate", type: "number", min: 0, max: 0.01, step: "any", placeholder: "default" });
  const rank = h("input", { name: "rank", type: "number", min: 1, max: 256, step: 1, placeholder: "default" });
  const submit = h("button", { type: "submit", class: "btn primary" }, "Start job");
  const form = h(
    "form",
    { class: "inline-form", novalidate: true, dataset: { testid: "start-job-form" } },
    field("Base model", model),
    field("User", user),
    field("Epochs", epochs),
    field("Learning rate", rate),
    field("Rank", rank),
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { model: model.value };
    const job = await runAction(
      submit,
      () => {
        // Only what was filled in: the worker has defaults for the rest.
        const hyperparameters = {};
        for (const [name, input, label] of [["epochs", epochs, "Epochs"], ["learning_rate", rate, "Learning rate"], ["rank", rank, "Rank"]]) {
          const value = numberOf(input, label);
          if (value !== null) hyperparameters[name] = value;
        }
        if (user.value) body.user_id = user.value;
        if (Object.keys(hyperparameters).length) body.hyperparameters = hyperparameters;
        return api("POST", "/admin/jobs", body);
      },
      (j) => `Job ${j.id} queued.`,
    );
    if (!job) return;
    for (const input of [epochs, rate, rank]) input.value = "";
    location.hash = job.id; // opens it
    await refreshLists();
  });
  clear(formSlot, card("Start a job", {}, form));
}

// --- Queue and history ------------------------------------------------------------------

function historyFilter() {
  const choice = select("history_state", HISTORY_STATES.map((s) => ({ value: s, label: s })), { blank: "every finished job", testid: "history-state" });
  choice.addEventListener("change", () => {
    historyState = choice.value;
    refreshLists().catch((error) => notify(describe(error), "error"));
  });
  return choice;
}

async function refreshLists() {
  const [running, queued, recent] = await Promise.all([
    api("GET", "/admin/jobs?state=running&limit=500"),
    api("GET", "/admin/jobs?state=queued&limit=500"),
    api("GET", withQuery("/admin/jobs", { state: historyState, limit: 100 })),
  ]);
  const open = location.hash.slice(1);
  // A job that changed state between the two calls could come twice: keep its first row.
  const queue = [...new Map([...running.data, ...queued.data].map((job) => [job.id, job])).values()];
  clear(queueSlot, jobsTable(queue, open, "Nothing queued or running.", false));
  const listed = new Set(queue.map((job) => job.id));
  const finished = recent.data.filter((job) => !LIVE.has(job.status) && !listed.has(job.id));
  clear(historySlot, jobsTable(finished, open, "No finished jobs yet.", true));
}

function jobsTable(jobs, open, empty, finished) {
  const rows = jobs.map((job) => ({
    attrs: {
      class: job.id === open ? "clickable selected" : "clickable",
      dataset: { testid: `job-${job.id}` },
      onclick: (event) => {
        if (!event.target.closest("a")) location.hash = job.id;
      },
    },
    cells: [
      [h("a", { href: `#${job.id}` }, job.id), h("div", { class: "muted small" }, modelName(job.model))],
      [badge(job.status, { dataset: { testid: `status-${job.id}` } }), h("div", { class: "muted small" }, `attempt ${job.attempt}/${job.max_attempts}`)],
      job.user_id ? userName(job.user_id) : h("span", { class: "muted" }, "generalist"),
      timeEl(finished ? job.finished_at : job.created_at),
    ],
  }));
  return table(["Job / model", "Status", "For", finished ? "Finished" : "Created"], rows, { empty, class: "jobs" });
}

// --- The open job ----------------------------------------------------------------------

// Everything about the open job; replaced whole when another job opens.
let current = null;

function openJob() {
  const id = decodeURIComponent(location.hash.slice(1));
  if (current) current.stop();
  current = null;
  if (!id) {
    clear(detailSlot, card(null, { class: "placeholder" }, h("p", { class: "muted" }, "Select a job to follow its progress.")));
    return;
  }
  const state = {
    id,
    job: null,
    events: [],
    lastEventId: 0,
    drawn: "", // what the panel shows, to skip redrawing when nothing changed
    stop: () => {},
    parts: {
      head: h("div", { class: "card-head" }),
      verdict: h("div"),
      facts: h("div"),
      progress: h("div", { class: "progress-figures" }),
      curve: h("div", { class: "chart-box", dataset: { testid: "loss-curve" } }),
      events: h("div"),
    },
  };
  current = state;
  const p = state.parts;
  clear(detailSlot, 
    h(
      "section",
      { class: "card detail", dataset: { testid: "job-detail" } },
      p.head,
      p.verdict,
      p.facts,
      h("h3", {}, "Progress"),
      p.progress,
      p.curve,
      h("h3", {}, "Events"),
      p.events,
    ),
  );
  p.head.append(h("h2", {}, id), h("span", { class: "muted" }, "loading…"));
  state.stop = poll(() => followJob(state), EVENT_SECONDS * 1000);
}

// One round: the job, then its events after the last one we have.
async function followJob(state) {
  let job;
  try {
    job = await api("GET", `/admin/jobs/${encodeURIComponent(state.id)}`);
  } catch (error) {
    if (!(error instanceof ApiFailure && error.status === 404)) throw error; // the poll shows it and tries again
    state.stop(); // no such job: asking again will not help
    if (state !== current) return;
    clear(detailSlot, card(null, { class: "placeholder" }, h("p", { class: "error-text" }, `Job ${state.id}: ${error.message}`)));
    return;
  }
  for (;;) {
    const page = await api("GET", `/admin/jobs/${encodeURIComponent(state.id)}/events?after=${state.lastEventId}&limit=1000`);
    if (state !== current) return; // another job was opened meanwhile
    state.events.push(...page.data);
    if (page.data.length) state.lastEventId = page.data[page.data.length - 1].id;
    if (!page.has_more || !page.data.length) break;
  }
  const changed = state.job !== null && state.job.status !== job.status;
  state.job = job;
  drawJob(state);
  if (changed) refreshLists().catch(() => {}); // the lists catch up now, not at their next round
  // A finished job changes no more (a retry opens it again).
  if (!LIVE.has(job.status)) state.stop();
}

function drawJob(state) {
  const { job, events, parts } = state;
  const signature = JSON.stringify([job, state.lastEventId]);
  if (signature === state.drawn) return;
  state.drawn = signature;

  clear(parts.head, 
    h("div", {}, h("h2", {}, idText(job.id)), h("div", { class: "muted" }, `${job.kind} · ${job.model}${job.user_id ? ` · ${userName(job.user_id)}` : ""}`)),
    h("div", { class: "head-actions" }, badge(job.status, { dataset: { testid: "job-status" } }), jobActions(job)),
  );

  clear(parts.facts, 
    h(
      "dl",
      { class: "facts" },
      fact("Attempt", `${job.attempt} of ${job.max_attempts}`),
      fact("Trigger", job.trigger),
      fact("Target", job.target),
      fact("User", job.user_id ? h("a", { href: `/admin/users#${job.user_id}` }, userName(job.user_id)) : "none (generalist)"),
      fact("Created", timeEl(job.created_at)),
      fact("Started", timeEl(job.started_at)),
      fact("Finished", timeEl(job.finished_at)),
      fact("Hyperparameters", Object.keys(job.hyperparameters || {}).length ? Object.entries(job.hyperparameters).map(([k, v]) => `${k}=${compactValue(v)}`).join(" ") : "defaults"),
      job.adapter_id ? fact("Expert", h("a", { href: `/admin/adapters#${job.adapter_id}` }, job.adapter_id)) : null,
      job.result_version_id ? fact("Version", h("a", { href: `/admin/adapters#${job.adapter_id || ""}` }, job.result_version_id)) : null,
      job.cancel_requested && LIVE.has(job.status) ? fact("Cancel", "requested: the worker stops at its next heartbeat") : null,
    ),
    // A failed job's error is its verdict, above; an earlier attempt's stays here.
    job.error && job.status !== "failed" ? h("pre", { class: "error-box", dataset: { testid: "job-error" } }, job.error) : null,
  );
  clear(parts.verdict, verdictLine(job));

  // The loss curve of the newest attempt that has progress (a retry starts again at step 1).
  const progress = events.filter((e) => e.kind === "progress");
  const attempt = progress.length ? Math.max(...progress.map((e) => e.attempt)) : null;
  const steps = progress.filter((e) => e.attempt === attempt);
  const trained = events.find((e) => e.kind === "trained" && e.attempt === attempt);
  drawProgress(parts.progress, job, steps, trained ? trained.payload : null);
  // The validation and gate losses exist at some steps only (every few steps,
  // and whenever the worker wrote one): sparse series, joined and dotted. Their
  // colours are fixed: a gate loss drawn before the first check keeps its own.
  const optional = [
    ["validation loss", "validation_loss", PALETTE[1]],
    ["gate loss", "gate_loss", PALETTE[2]],
  ].filter(([, key]) => steps.some((e) => typeof e.payload[key] === "number"));
  lineChart(parts.curve, {
    times: steps.map((e) => e.payload.step),
    xFormat: (step) => `step ${Math.round(step)}`,
    xIntegers: true,
    height: 200,
    label: "Loss per step: training, and validation where it was checked",
    series: [
      { name: "training loss", color: PALETTE[0], values: steps.map((e) => e.payload.loss) },
      ...optional.map(([name, key, color]) => ({ name, color, sparse: true, values: steps.map((e) => e.payload[key] ?? null) })),
    ],
  });

  drawEvents(parts.events, events, progress.length);
}

function fact(label, value) {
  return [h("dt", {}, label), h("dd", {}, value === null || value === undefined || value === "" ? NONE : value)];
}

// One loss figure, named by its step: the newest step's training loss. (The
// "trained" event's last_loss is another number, the mean of the last epoch,
// and says so in the events.) Validation: the newest check while training,
// then the best check, whose weights were kept.
function drawProgress(slot, job, steps, trained) {
  const live = LIVE.has(job.status);
  const latest = steps.length ? steps[steps.length - 1].payload : null;
  const checked = [...steps].reverse().find((e) => typeof e.payload.validation_loss === "number");
  let validation = [NONE, "validation loss"];
  if (trained && typeof trained.best_validation_loss === "number") {
    validation = [formatNumber(trained.best_validation_loss, 4), trained.best_step ? `best validation, step ${trained.best_step} (kept)` : "validation before training (kept)"];
  } else if (checked) {
    validation = [formatNumber(checked.payload.validation_loss, 4), `validation loss, step ${checked.payload.step}`];
  }
  const fraction = latest && latest.total_steps ? Math.min(1, latest.step / latest.total_steps) : job.status === "succeeded" ? 1 : 0;
  const stat = (value, label, testid) =>
    h(
      "div",
      { class: "stat" },
      h("div", { class: "stat-value", dataset: { testid } }, value),
      h("div", { class: "stat-label", dataset: { testid: `${testid}-label` } }, label),
    );
  clear(slot, 
    h(
      "div",
      { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(fraction * 100) },
      h("div", { class: "progress-fill", style: { width: `${fraction * 100}%` } }),
    ),
    h(
      "div",
      { class: "stats compact progress-stats" },
      stat(latest ? `${latest.step} / ${latest.total_steps}` : NONE, latest ? `step, epoch ${latest.epoch}` : "step", "job-step"),
      stat(latest ? formatNumber(latest.loss, 4) : NONE, latest ? `training loss, step ${latest.step}` : "training loss", "job-loss"),
      stat(validation[0], validation[1], "job-validation-loss"),
      stat(latest ? formatNumber(latest.tokens_per_second, 1) : NONE, "tokens / s", "job-tokens-per-second"),
      stat(latest && live ? formatDuration(latest.eta_seconds) : NONE, "ETA", "job-eta"),
    ),
  );
}

// Once the job ended: what came of it, in one line above everything else.
function verdictLine(job) {
  const line = (kind, ...children) => h("div", { class: `verdict ${kind}`, dataset: { testid: "job-verdict" } }, children);
  const review = job.adapter_id ? h("a", { href: `/admin/adapters#${job.adapter_id}` }, "Review it on the Adapters page") : null;
  switch (job.status) {
    case "succeeded":
      if (job.outcome === "promoted") return line("promoted", h("strong", {}, "Promoted"), ": the new version is active.");
      if (job.outcome === "held_back") {
        return line("held_back", h("strong", {}, "Held back: "), (job.outcome_reason || "no reason recorded").replace(/\.$/, ""), ". ", review);
      }
      return line("neutral", h("strong", {}, "Succeeded"), " (no promotion verdict was recorded).");
    case "failed":
      return line("failed", h("strong", {}, "Failed"), h("pre", { class: "error-box", dataset: { testid: "job-error" } }, job.error || "no error recorded"));
    case "cancelled":
      return line("neutral", h("strong", {}, "Cancelled"));
    default:
      return null; // still queued or running
  }
}

// Newest first. Progress events are many and all in the curve: only the latest is listed.
function drawEvents(slot, events, progressCount) {
  const lastProgress = [...events].reverse().find((e) => e.kind === "progress");
  const shown = events.filter((e) => e.kind !== "progress" || e === lastProgress).reverse();
  const rows = shown.map((e) => ({
    attrs: { dataset: { testid: `event-${e.id}` } },
    cells: [[timeEl(e.created_at), h("div", { class: "muted small" }, `attempt ${e.attempt}`)], badge(e.kind), eventDetails(e)],
  }));
  clear(slot, 
    table(["Time", "Kind", "Details"], rows, { empty: "No events yet.", testid: "job-events", class: "events" }),
    progressCount > 1 ? h("p", { class: "hint" }, `${progressCount - 1} earlier progress events are in the loss curve.`) : null,
  );
}

function eventDetails(event) {
  const p = event.payload || {};
  switch (event.kind) {
    case "progress":
      return [
        `step ${p.step}/${p.total_steps} · epoch ${p.epoch} · training loss ${formatNumber(p.loss, 4)}`,
        typeof p.validation_loss === "number" ? ` · validation loss ${formatNumber(p.validation_loss, 4)}` : "",
        typeof p.gate_loss === "number" ? ` · gate loss ${formatNumber(p.gate_loss, 4)}` : "",
        ` · ${formatNumber(p.tokens_per_second, 1)} tokens/s · ETA ${formatDuration(p.eta_seconds)}`,
      ].join("");
    case "trained":
      return trainedDetails(p);
    case "evaluation":
      return evalSummary(p);
    case "not_promoted": {
      const reasons = p.reasons || (p.reason ? [p.reason] : []);
      return reasons.length ? h("ul", { class: "reasons" }, reasons.map((r) => h("li", {}, r))) : "no reason recorded";
    }
    default: {
      const entries = Object.entries(p);
      if (!entries.length) return "";
      return h("span", { class: "kv" }, entries.map(([k, v]) => `${k}=${compactValue(v)}`).join("  "));
    }
  }
}

// The run's summary. Its losses are labelled by what they average: the
// last_loss here is the last epoch's mean, not the newest step's loss above.
function trainedDetails(p) {
  const loss = (v) => formatNumber(v, 4);
  let validation = null;
  if (typeof p.best_validation_loss === "number") {
    validation = p.best_step
      ? `validation loss ${loss(p.first_validation_loss)} before training, best ${loss(p.best_validation_loss)} at step ${p.best_step} (the weights kept)`
      : `validation loss ${loss(p.first_validation_loss)} before training, never bettered (the untrained weights kept)`;
  }
  return h(
    "div",
    { class: "trained" },
    h("div", {}, `${p.steps} steps · training loss ${loss(p.first_loss)} at step 1, ${loss(p.last_loss)} mean of the last epoch`),
    validation ? h("div", {}, validation) : null,
    p.stopped_early ? h("div", {}, h("strong", {}, "stopped early"), ": the validation loss stopped improving") : null,
    h("div", { class: "muted" }, `${formatNumber(p.tokens, 0)} tokens in ${formatDuration(p.seconds)} · ${formatNumber(p.tokens_per_second, 1)} tokens/s`),
  );
}

function jobActions(job) {
  const buttons = [];
  const after = async (updated) => {
    openJob(); // follow it again: a retried job is live once more
    await refreshLists();
    return updated;
  };
  if (LIVE.has(job.status)) {
    buttons.push(
      actionButton("Cancel", () => api("POST", `/admin/jobs/${encodeURIComponent(job.id)}/cancel`).then(after), {
        danger: true,
        testid: "cancel-job",
        success: (j) => `Cancel of ${j.id} requested.`,
      }),
    );
  }
  if (RETRYABLE.has(job.status)) {
    buttons.push(
      actionButton("Retry", () => api("POST", `/admin/jobs/${encodeURIComponent(job.id)}/retry`).then(after), {
        testid: "retry-job",
        success: (j) => `Job ${j.id} queued again (attempt budget renewed).`,
      }),
    );
  }
  return buttons;
}

// --- Start ----------------------------------------------------------------------------------

window.addEventListener("hashchange", () => {
  openJob();
  reveal(detailSlot);
  refreshLists().catch((error) => notify(describe(error), "error"));
});

async function start() {
  try {
    [users, models] = await Promise.all([allUsers(), modelChoices()]);
  } catch (error) {
    notify(`Could not load users and models: ${describe(error)}`, "error");
  }
  drawForm();
  openJob();
  poll(refreshLists, LIST_SECONDS * 1000);
}
start();

// The curve is drawn at the panel's width: draw it again when the window changes size.
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (current && current.job) {
      current.drawn = "";
      drawJob(current);
    }
  }, 150);
});
