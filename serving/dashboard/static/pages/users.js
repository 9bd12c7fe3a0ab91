// Users: create users, hand out and revoke their API keys, set their routing
// preferences, and see their experts and fine-tune jobs.
//
// The selected user is the URL's hash (/admin/users#usr_...), so a user's
// detail can be linked to and the back button works.
//
// An API key's secret is shown once, right after it is made, in the "new key"
// box; this page keeps it nowhere else and forgets it when the box is
// dismissed or the page is left. Of existing keys only the id is shown (the
// API also sends each key's prefix: it is deliberately never displayed).

import { h, clear, timeEl, formatNumber } from "../dom.js";
import { api, notify, describe } from "../api.js";
import {
  app, card, pageHeader, table, badge, idText, select, field, actionButton, runAction, modelChoices, modelName, numberOf, reveal,
} from "../ui.js";

const PAGE_SIZE = 100;

const root = app();
const keySlot = h("div", { class: "key-slot" });
const usersBody = h("div");
const moreSlot = h("div", { class: "more" });
const detailSlot = h("div", { class: "detail-slot" });

let users = []; // the loaded pages of GET /admin/users
let hasMore = false;
let models = []; // select choices of base models
let detailToken = 0; // the newest detail load; older answers are dropped

// --- The create form --------------------------------------------------------

const nameInput = h("input", { name: "name", type: "text", required: true, maxlength: 200, placeholder: "e.g. ada or billing-service", autocomplete: "off" });
const createForm = h(
  "form",
  { class: "inline-form", novalidate: true, dataset: { testid: "create-user-form" } },
  field("Name", nameInput),
  h("button", { type: "submit", class: "btn primary" }, "Create user"),
);
createForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const created = await runAction(createForm.querySelector("button"), () =>
    api("POST", "/admin/users", { name: nameInput.value }),
  );
  if (!created) return;
  createForm.reset();
  showKey({ secret: created.api_key, keyId: created.key_id, owner: created.name });
  notify(`User ${created.name} created.`, "success");
  await loadUsers(Math.max(PAGE_SIZE, users.length + 1));
  location.hash = created.id; // opens its detail
});

root.append(
  pageHeader("Users", "Who may call the API: their keys, routing preferences, experts and fine-tune jobs."),
  keySlot,
  h(
    "div",
    { class: "split" },
    h(
      "div",
      { class: "split-main" },
      card("Create a user", {}, createForm, h("p", { class: "hint" }, "The user's first API key is shown once after creation.")),
      card("Users", {}, usersBody, moreSlot),
    ),
    h("div", { class: "split-side" }, detailSlot),
  ),
);

// --- The new key, shown once --------------------------------------------------

function showKey({ secret, keyId, owner }) {
  const value = h("code", { class: "secret", dataset: { testid: "new-key-value" } }, secret);
  const copy = h("button", { type: "button", class: "btn primary", dataset: { testid: "copy-key" } }, "Copy");
  copy.addEventListener("click", async () => {
    const copied = await copyText(secret, value);
    copy.textContent = copied ? "Copied" : "Select and copy by hand";
  });
  const done = h("button", { type: "button", class: "btn", dataset: { testid: "dismiss-key" } }, "Done, dismiss");
  done.addEventListener("click", dropKey);
  clear(keySlot, 
    h(
      "div",
      { class: "key-box", role: "region", "aria-label": "New API key", dataset: { testid: "new-key" } },
      h("h2", {}, `New API key for ${owner}`),
      h("p", {}, "Key id ", idText(keyId), "."),
      h("div", { class: "key-line" }, value, copy),
      h("p", { class: "warning" }, "Copy it now: it will not be shown again."),
      done,
    ),
  );
  keySlot.scrollIntoView({ block: "nearest" });
}

// Removing the box drops the only reference to the secret this page had.
function dropKey() {
  clear(keySlot);
}
window.addEventListener("pagehide", dropKey);

async function copyText(text, element) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (plain http on another host): select the text instead.
    const range = document.createRange();
    range.selectNodeContents(element);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    return document.execCommand && document.execCommand("copy");
  }
}

// --- The users table ------------------------------------------------------------

async function loadUsers(limit = PAGE_SIZE) {
  const page = await api("GET", `/admin/users?limit=${Math.min(limit, 1000)}`);
  users = page.data;
  hasMore = page.has_more;
  drawUsers();
}

async function loadMore() {
  const after = users.length ? users[users.length - 1].id : "";
  const page = await api("GET", `/admin/users?limit=${PAGE_SIZE}&after=${encodeURIComponent(after)}`);
  users = users.concat(page.data);
  hasMore = page.has_more;
  drawUsers();
}

function drawUsers() {
  const selected = location.hash.slice(1);
  const rows = users.map((user) => {
    const active = user.keys.filter((k) => !k.revoked).length;
    return {
      attrs: {
        class: user.id === selected ? "clickable selected" : "clickable",
        "aria-selected": user.id === selected ? "true" : "false",
        dataset: { testid: `user-${user.id}` },
        onclick: (event) => {
          if (!event.target.closest("a")) location.hash = user.id;
        },
      },
      cells: [
        h("a", { href: `#${user.id}` }, user.name),
        idText(user.id),
        `${active} active${user.keys.length > active ? `, ${user.keys.length - active} revoked` : ""}`,
        timeEl(user.created_at),
      ],
    };
  });
  clear(usersBody, table(["Name", "Id", "Keys", "Created"], rows, { empty: "No users yet: create the first one above." }));
  clear(moreSlot);
  if (hasMore) moreSlot.append(actionButton("Load more", loadMore));
}

// --- The selected user's detail ------------------------------------------------

async function loadDetail() {
  const id = decodeURIComponent(location.hash.slice(1));
  const token = ++detailToken;
  drawUsers(); // move the highlight
  if (!id) {
    clear(detailSlot, card(null, { class: "placeholder" }, h("p", { class: "muted" }, "Select a user to see their keys, routing preferences, experts and jobs.")));
    return;
  }
  try {
    const [user, experts, jobs] = await Promise.all([
      api("GET", `/admin/users/${encodeURIComponent(id)}`),
      api("GET", `/admin/adapters?user_id=${encodeURIComponent(id)}`),
      api("GET", `/admin/jobs?user_id=${encodeURIComponent(id)}&limit=20`),
    ]);
    if (token !== detailToken) return; // another user was selected meanwhile
    clear(detailSlot, drawDetail(user, experts.data, jobs.data));
  } catch (error) {
    if (token !== detailToken) return;
    clear(detailSlot, card(null, { class: "placeholder" }, h("p", { class: "error-text" }, `Could not load ${id}: ${describe(error)}`)));
  }
}

// Reloads both the detail and the list after a change.
async function reload() {
  await Promise.all([loadDetail(), loadUsers(Math.max(PAGE_SIZE, users.length))]);
}

function drawDetail(user, experts, jobs) {
  const activeKeys = user.keys.filter((k) => !k.revoked).length;
  return h(
    "section",
    { class: "card detail", dataset: { testid: "user-detail" } },
    h(
      "div",
      { class: "card-head" },
      h("div", {}, h("h2", {}, user.name), h("div", { class: "muted" }, idText(user.id), " · created ", timeEl(user.created_at))),
    ),
    h(
      "div",
      { class: "stats compact" },
      h("div", { class: "stat", dataset: { testid: "feedback-count" } }, h("div", { class: "stat-value" }, formatNumber(user.feedback_count, 0)), h("div", { class: "stat-label" }, "feedback")),
      h("div", { class: "stat", dataset: { testid: "example-count" } }, h("div", { class: "stat-value" }, formatNumber(user.example_count, 0)), h("div", { class: "stat-label" }, "examples")),
      h("div", { class: "stat" }, h("div", { class: "stat-value" }, String(activeKeys)), h("div", { class: "stat-label" }, "active keys")),
      h("div", { class: "stat" }, h("div", { class: "stat-value" }, String(experts.length)), h("div", { class: "stat-label" }, "experts")),
    ),
    keysSection(user),
    routingSection(user),
    fineTuneSection(user),
    expertsSection(user, experts),
    jobsSection(jobs),
  );
}

function keysSection(user) {
  const rows = user.keys.map((key) => ({
    attrs: { class: key.revoked ? "revoked" : null, dataset: { testid: `key-${key.id}` } },
    cells: [
      [idText(key.id), h("div", { class: "muted small" }, `scopes: ${key.scopes.join(", ")}`)],
      timeEl(key.created_at),
      key.last_used_at ? timeEl(key.last_used_at) : "never",
      key.revoked
        ? [badge("revoked"), h("div", { class: "muted small" }, timeEl(key.revoked_at))]
        : h(
            "div",
            { class: "cell-actions" },
            badge("active"),
            actionButton("Revoke", () => api("DELETE", `/admin/keys/${encodeURIComponent(key.id)}`).then(async (k) => { await reload(); return k; }), {
              danger: true,
              testid: `revoke-${key.id}`,
              confirmText: `Revoke key ${key.id} of ${user.name}? Clients using it are refused at once.`,
              success: (k) => `Key ${k.id} revoked.`,
            }),
          ),
    ],
  }));
  const newKey = actionButton(
    "New key",
    async () => {
      const created = await api("POST", `/admin/users/${encodeURIComponent(user.id)}/keys`);
      showKey({ secret: created.api_key, keyId: created.id, owner: user.name });
      await reload();
      return created;
    },
    { testid: "new-key-button", success: (k) => `Key ${k.id} created for ${user.name}.` },
  );
  return h(
    "div",
    { class: "subsection" },
    h("div", { class: "subsection-head" }, h("h3", {}, "API keys"), newKey),
    table(["Key id", "Created", "Last used", "Status"], rows, { empty: "No keys." }),
  );
}

// The three preferences; an empty box means the service's default (sent as null).
function routingSection(user) {
  const prefs = user.routing || {};
  const input = (name, min, step) =>
    h("input", { name, type: "number", min, step, value: prefs[name] ?? "", placeholder: "service default" });
  const costWeight = input("cost_weight", 0, "any");
  const maxPrice = input("max_price", 0, "any");
  const slo = input("latency_slo_seconds", 0, "any");
  const save = h("button", { type: "submit", class: "btn primary" }, "Save");
  const form = h(
    "form",
    { class: "inline-form", novalidate: true, dataset: { testid: "routing-form" } },
    field("Cost weight (λ)", costWeight),
    field("Max price / 1M tokens", maxPrice),
    field("Latency objective (s)", slo),
    save,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const saved = await runAction(
      save,
      () =>
        api("PATCH", `/admin/users/${encodeURIComponent(user.id)}/routing`, {
          cost_weight: numberOf(costWeight, "Cost weight"),
          max_price: numberOf(maxPrice, "Max price"),
          latency_slo_seconds: numberOf(slo, "Latency objective"),
        }),
      `Routing preferences of ${user.name} saved.`,
    );
    if (saved) await loadDetail();
  });
  return h(
    "div",
    { class: "subsection" },
    h("h3", {}, "Routing preferences"),
    form,
    h("p", { class: "hint" }, "Leave a box empty to use the service's default."),
  );
}

function fineTuneSection(user) {
  const model = select("fine_tune_model", models, { value: models.length ? models[0].value : "" });
  const button = actionButton(
    "Fine-tune now",
    async () => {
      const job = await api("POST", "/admin/jobs", { model: model.value, user_id: user.id });
      await loadDetail();
      return job;
    },
    {
      testid: "fine-tune-now",
      success: (job) => h("span", {}, "Job ", h("a", { href: `/admin/jobs#${job.id}` }, job.id), ` queued for ${user.name}.`),
    },
  );
  return h(
    "div",
    { class: "subsection" },
    h("h3", {}, "Fine-tune"),
    h("div", { class: "inline-form" }, field("Base model", model), button),
    h("p", { class: "hint" }, "Trains this user's specialist on their examples and rated answers."),
  );
}

function expertsSection(user, experts) {
  const rows = experts.map((expert) => [
    h("a", { href: `/admin/adapters?user_id=${encodeURIComponent(user.id)}#${expert.id}` }, expert.name),
    idText(expert.id),
    expert.kind,
    modelName(expert.base_model),
    expert.version === null ? "—" : `v${expert.version}`,
    badge(expert.state),
  ]);
  return h(
    "div",
    { class: "subsection" },
    h("h3", {}, "Experts"),
    table(["Name", "Id", "Kind", "Base model", "Version", "State"], rows, { empty: "No experts yet." }),
  );
}

function jobsSection(jobs) {
  const rows = jobs.map((job) => [
    h("a", { href: `/admin/jobs#${job.id}` }, job.id),
    badge(job.status),
    modelName(job.model),
    timeEl(job.created_at),
    timeEl(job.finished_at),
  ]);
  return h(
    "div",
    { class: "subsection" },
    h("h3", {}, "Fine-tune jobs"),
    table(["Job", "Status", "Model", "Created", "Finished"], rows, { empty: "No jobs yet." }),
  );
}

// --- Start -------------------------------------------------------------------------

window.addEventListener("hashchange", () => {
  loadDetail();
  reveal(detailSlot);
});

async function start() {
  try {
    models = await modelChoices();
  } catch (error) {
    notify(`Could not load the base models: ${describe(error)}`, "error");
  }
  try {
    await loadUsers();
  } catch (error) {
    notify(`Could not load the users: ${describe(error)}`, "error");
  }
  await loadDetail();
}
start();
