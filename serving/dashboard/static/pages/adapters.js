// Adapters: every LoRA expert and its versions; upload a PEFT adapter, promote
// a candidate, roll an expert back, retire a version, download one. Each
// version shows the gate's verdict with its evaluation and sample answers, and
// who promoted or retired it: a person promoting what the gate held back stands out.
//
// The filter lives in the URL (?user_id=...&base_model=...), so the users page
// can link to one user's experts; #adp_... highlights one expert.

import { h, clear, timeEl, formatBytes } from "../dom.js";
import { api, notify, describe, withQuery } from "../api.js";
import {
  app, card, pageHeader, badge, idText, select, field, actionButton,
  modelChoices, allUsers, evalSummary, sampleAnswers, verdictOf, modelName,
} from "../ui.js";

const root = app();
let users = []; // for names and the selects
let models = [];

const uploadSlot = h("div");
const filterSlot = h("div", { class: "filters" });
const listSlot = h("div");
const countText = h("span", { class: "muted" });
const refreshButton = actionButton("Refresh", () => loadExperts(), { testid: "refresh-experts" });

root.append(
  pageHeader("Adapters", "LoRA experts per base model: a user's specialists and the shared generalists, with every version."),
  uploadSlot,
  card("Experts", { aside: h("div", { class: "head-actions" }, countText, refreshButton) }, filterSlot, listSlot),
);

const params = () => new URLSearchParams(location.search);
const userName = (id) => {
  const user = users.find((u) => u.id === id);
  return user ? user.name : id;
};

// --- Upload -------------------------------------------------------------------------

function drawUpload() {
  const modelSelect = select("base_model", models, { required: true, value: models.length ? models[0].value : "" });
  const kindSelect = select("kind", [
    { value: "specialist", label: "specialist (one user's)" },
    { value: "generalist", label: "generalist (everyone's)" },
  ]);
  const userSelect = select(
    "user_id",
    users.map((u) => ({ value: u.id, label: `${u.name} (${u.id})` })),
    { blank: "choose a user", value: params().get("user_id") || "" },
  );
  const userField = field("User", userSelect);
  const nameInput = h("input", { name: "name", type: "text", placeholder: "default", maxlength: 200 });
  const files = h("input", { name: "file", type: "file", multiple: true, required: true, accept: ".json,.safetensors" });
  const submit = h("button", { type: "submit", class: "btn primary" }, "Upload");
  const error = h("div", { class: "form-error", role: "alert", hidden: true, dataset: { testid: "upload-error" } });

  // A generalist belongs to no user: hide the user choice for it.
  const syncKind = () => {
    userField.hidden = kindSelect.value === "generalist";
  };
  kindSelect.addEventListener("change", syncKind);
  syncKind();

  const form = h(
    "form",
    { class: "upload-form", novalidate: true, dataset: { testid: "upload-form" } },
    h(
      "div",
      { class: "inline-form" },
      field("Base model", modelSelect),
      field("Kind", kindSelect),
      userField,
      field("Expert name", nameInput),
    ),
    h(
      "div",
      { class: "inline-form" },
      field("Files", files, "adapter_config.json and adapter_model.safetensors; optionally tailor_gate.safetensors"),
      submit,
    ),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    error.textContent = "";
    const body = new FormData();
    body.append("base_model", modelSelect.value);
    body.append("kind", kindSelect.value);
    if (kindSelect.value === "specialist") body.append("user_id", userSelect.value);
    if (nameInput.value.trim()) body.append("name", nameInput.value.trim());
    // Every file under the field name "file": the server tells them apart by file name.
    for (const file of files.files) body.append("file", file, file.name);
    submit.disabled = true;
    try {
      const version = await api("POST", "/admin/adapters", body);
      // The choices stay (the next version of the same expert is the usual next upload).
      files.value = "";
      notify(`Uploaded: version v${version.version} (${version.id}) of expert ${version.adapter_id}, a ${version.state}.`, "success");
      await loadExperts();
    } catch (failure) {
      // Validation errors belong next to the form, where the admin is looking.
      error.textContent = `Upload refused: ${describe(failure)}`;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  clear(uploadSlot, card("Upload a PEFT adapter", {}, form));
}

// --- Filter --------------------------------------------------------------------------

function drawFilter() {
  const current = params();
  const userFilter = select("filter_user", users.map((u) => ({ value: u.id, label: `${u.name} (${u.id})` })), {
    blank: "All users",
    value: current.get("user_id") || "",
    testid: "filter-user",
  });
  const modelFilter = select("filter_model", models, { blank: "All base models", value: current.get("base_model") || "", testid: "filter-model" });
  const apply = () => {
    const query = withQuery(location.pathname, { user_id: userFilter.value, base_model: modelFilter.value });
    history.replaceState(null, "", query);
    loadExperts().catch((error) => notify(describe(error), "error"));
  };
  userFilter.addEventListener("change", apply);
  modelFilter.addEventListener("change", apply);
  clear(filterSlot, field("User", userFilter), field("Base model", modelFilter));
}

// --- The experts and their versions -----------------------------------------------------

async function loadExperts() {
  const current = params();
  const page = await api(
    "GET",
    withQuery("/admin/adapters", { user_id: current.get("user_id"), base_model: current.get("base_model") }),
  );
  drawExperts(page.data);
}

function drawExperts(experts) {
  countText.textContent = `${experts.length} expert${experts.length === 1 ? "" : "s"}`;
  if (!experts.length) {
    clear(listSlot, h("p", { class: "muted empty-note" }, "No experts match. Upload one above, or start a fine-tune job."));
    return;
  }
  const highlighted = location.hash.slice(1);
  const headers = ["Expert", "Kind", "User", "Base model", "Active", "Created", ""];
  const tableEl = h("table", { class: "experts", dataset: { testid: "experts" } }, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))));
  for (const expert of experts) {
    const active = expert.versions.find((v) => v.id === expert.active_version_id);
    tableEl.append(
      h(
        "tbody",
        { class: expert.id === highlighted ? "expert highlighted" : "expert", id: expert.id },
        h(
          "tr",
          { class: "expert-row", dataset: { testid: `expert-${expert.id}` } },
          h("td", {}, h("strong", {}, expert.name), h("br"), idText(expert.id)),
          h("td", {}, badge(expert.kind)),
          h("td", {}, expert.user_id ? h("a", { href: `/admin/users#${expert.user_id}` }, userName(expert.user_id)) : "everyone"),
          h("td", {}, modelName(expert.base_model)),
          h("td", {}, active ? `v${active.version}` : h("span", { class: "muted" }, "none")),
          h("td", {}, timeEl(expert.created_at)),
          h(
            "td",
            { class: "actions" },
            // Only an active version that replaced another has somewhere to roll back to.
            active && active.replaced_version_id
              ? actionButton("Roll back", () => api("POST", `/admin/adapters/${encodeURIComponent(expert.id)}/rollback`).then(afterAction), {
                  testid: `rollback-${expert.id}`,
                  title: "Make the previous active version active again",
                  success: (v) => `${expert.name}: back to v${v.version} (${v.id}).`,
                })
              : null,
            active ? h("a", { class: "btn", href: `/admin/adapters/${encodeURIComponent(expert.id)}/download`, download: "" }, "Download active") : null,
          ),
        ),
        h("tr", { class: "versions-row" }, h("td", { colspan: headers.length }, versionsTable(expert))),
      ),
    );
  }
  clear(listSlot, h("div", { class: "table-wrap" }, tableEl));
  if (highlighted) document.getElementById(highlighted)?.scrollIntoView({ block: "center" });
}

// Reloads the list after an action and passes its result on.
async function afterAction(result) {
  await loadExperts();
  return result;
}

function versionsTable(expert) {
  const rows = [...expert.versions].sort((a, b) => b.version - a.version);
  const headers = ["Version", "State", "Size / rank", "History", "Lineage", "Evaluation", ""];
  return h(
    "table",
    { class: "versions" },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((v) => versionRows(expert, v, headers.length))),
  );
}

// A version's row, and under it its sample answers when its evaluation has some.
function versionRows(expert, v, columns) {
  // v3, not adv_..., where a lineage field names a version of this expert.
  const label = (id) => {
    if (!id) return null;
    const version = expert.versions.find((x) => x.id === id);
    return h("span", { title: id }, version ? `v${version.version}` : id);
  };
  const samples = sampleAnswers(v.eval_metrics);
  const row = h(
    "tr",
    { dataset: { testid: `version-${v.id}` }, class: `state-${v.state}${samples ? " has-samples" : ""}` },
    h("td", {}, h("strong", {}, `v${v.version}`), h("br"), idText(v.id)),
    h(
      "td",
      { class: "state-cell" },
      badge(v.state, { dataset: { testid: `state-${v.id}` } }),
      v.overrode_gate
        ? h(
            "span",
            {
              class: "badge badge-override",
              title: `Promoted by ${v.promoted_by} although the evaluation gate held it back`,
              dataset: { testid: `override-${v.id}` },
            },
            "overrode the gate",
          )
        : null,
    ),
    h(
      "td",
      { class: "size", title: (v.target_modules || []).join(", ") },
      h("div", {}, formatBytes(v.size_bytes)),
      h("div", { class: "muted" }, `rank ${v.rank}, α ${v.alpha}`),
    ),
    h(
      "td",
      { class: "dates" },
      h("div", {}, "created ", timeEl(v.created_at)),
      v.promoted_at ? h("div", { dataset: { testid: `promoted-${v.id}` } }, decided("promoted", v.promoted_by), timeEl(v.promoted_at)) : null,
      v.retired_at ? h("div", { dataset: { testid: `retired-${v.id}` } }, decided("retired", v.retired_by), timeEl(v.retired_at)) : null,
    ),
    h(
      "td",
      { class: "lineage" },
      v.parent_version_id ? h("div", {}, "trained from ", label(v.parent_version_id)) : null,
      v.replaced_version_id ? h("div", {}, "replaced ", label(v.replaced_version_id)) : null,
      v.job_id ? h("div", {}, "job ", h("a", { href: `/admin/jobs#${v.job_id}` }, v.job_id)) : null,
      !v.parent_version_id && !v.replaced_version_id && !v.job_id ? h("span", { class: "muted" }, "uploaded") : null,
    ),
    h("td", { class: "eval-cell" }, evalSummary(v.eval_metrics)),
    h("td", { class: "actions" }, versionActions(expert, v)),
  );
  if (!samples) return row;
  // Across the whole table and folded: side by side the answers need the width,
  // and unfolded inside the row they would make it a page tall.
  return [
    row,
    h(
      "tr",
      { class: `samples-row state-${v.state}` },
      h(
        "td",
        { colspan: columns },
        h(
          "details",
          { dataset: { testid: `samples-${v.id}` } },
          h("summary", {}, `v${v.version}: sample answers to the ${v.eval_metrics.samples.length} newest held-out questions`),
          samples,
        ),
      ),
    ),
  ];
}

// "promoted by gate ", or just "promoted " for versions decided before who was kept.
function decided(what, by) {
  return by ? `${what} by ${by} ` : `${what} `;
}

function versionActions(expert, v) {
  const buttons = [];
  if (v.state === "candidate") {
    // A version the gate held back can still be promoted by hand (that is what
    // "not enough data to judge" asks for), but as a decision taken knowingly.
    const verdict = verdictOf(v.eval_metrics);
    const heldBack = verdict === "hold_back" || verdict === "not_enough_data";
    buttons.push(
      actionButton(heldBack ? "Promote anyway" : "Promote", () => api("POST", `/admin/adapters/${encodeURIComponent(v.id)}/promote`).then(afterAction), {
        testid: `promote-${v.id}`,
        confirmText: heldBack
          ? `The evaluation gate held v${v.version} back:\n${(v.eval_metrics.reasons || []).join("\n")}\n\nPromote it anyway?`
          : null,
        success: (p) => `${expert.name}: v${p.version} is now active.`,
      }),
    );
  }
  if (v.state !== "retired" && v.state !== "training") {
    buttons.push(
      actionButton("Retire", () => api("DELETE", `/admin/adapters/${encodeURIComponent(v.id)}`).then(afterAction), {
        danger: true,
        testid: `retire-${v.id}`,
        success: `${expert.name}: v${v.version} retired.`,
      }),
    );
  }
  if (v.sha256 || v.size_bytes) {
    buttons.push(h("a", { class: "btn", href: `/admin/adapters/${encodeURIComponent(v.id)}/download`, download: "", dataset: { testid: `download-${v.id}` } }, "Download"));
  }
  return buttons;
}

// --- Start -----------------------------------------------------------------------------

async function start() {
  try {
    [users, models] = await Promise.all([allUsers(), modelChoices()]);
  } catch (error) {
    notify(`Could not load users and models: ${describe(error)}`, "error");
  }
  drawUpload();
  drawFilter();
  try {
    await loadExperts();
  } catch (error) {
    notify(`Could not load the experts: ${describe(error)}`, "error");
  }
}
window.addEventListener("hashchange", () => loadExperts().catch((error) => notify(describe(error), "error")));
start();
