// The training page: start a run (the shapes or scenes set, or an uploaded dataset; a GRU or
// Transformer decoder), upload a dataset, watch a run's progress on one chart and cancel it,
// list runs and model versions, promote a version (admin keys only).

import {
  $,
  announce,
  api,
  apiKey,
  ApiError,
  duration,
  el,
  keepTimesCurrent,
  listModels,
  metricsLine,
  setupKeyForm,
  showError,
  showModelState,
  timeElement,
} from "/web/common.js";

const POLL_MS = 500;
const ENDED = new Set(["succeeded", "failed", "canceled"]);
const TRAINING = new Set(["epoch", "loss", "accuracy"]); // a history row's keys that are not
// validation metrics
const HYPERPARAMETERS = ["epochs", "batch_size", "learning_rate"]; // the form's, by API name
let watched = null; // {id, steps: [{x, y}], status, timer, run}

// ---- starting a run ----

const DECODERS = { gru: "GRU", transformer: "Transformer" };

/** The dataset the form picks: an uploaded one, or a generated set of the size asked. */
function datasetRequest() {
  if ($("#use-upload").checked) return { type: "upload", id: $("#dataset").value };
  const type = $("#use-scenes").checked ? "scenes" : "shapes";
  return { type, size: Number($(`#${type}-size`).value) };
}

/** A fresh run's request (the page never fine-tunes, so it always names its decoder); a
 * hyperparameter left empty is not sent, and the API applies its default. */
function runRequest() {
  const hyperparameters = {};
  for (const name of HYPERPARAMETERS) {
    const value = $(`#${name}`).value;
    if (value !== "") hyperparameters[name] = Number(value);
  }
  return {
    dataset: datasetRequest(),
    hyperparameters,
    model: { decoder: $("#decoder").value },
    promotion: $("#promotion").value,
  };
}

/** Hyperparameter → {decoder: its default}, for those whose default depends on the decoder
 * (learning_rate), as the API documents them (x-default-by-decoder). */
const decoderDefaults = {};

/** The limits (and, for an empty field, the default: the chosen decoder's where it has one)
 * of each hyperparameter, as the API documents them (GET /openapi.json). */
async function loadDefaults() {
  try {
    const document = await (await fetch("/openapi.json")).json();
    const properties = document.components.schemas.Hyperparameters.properties;
    for (const name of HYPERPARAMETERS) {
      const input = $(`#${name}`);
      const property = properties[name];
      // a field that may be left out for the decoder's default is "a number or null"
      const { minimum, maximum } = (property.anyOf || [property]).find((s) => s.type !== "null");
      if (minimum !== undefined) input.min = minimum;
      if (maximum !== undefined) input.max = maximum;
      const byDecoder = property["x-default-by-decoder"];
      if (byDecoder) decoderDefaults[name] = byDecoder;
      const start = decoderDefaults[name]?.[$("#decoder").value] ?? property.default;
      if (start !== undefined && start !== null && input.value === "") input.value = start;
    }
  } catch {
    // the fields keep the page's limits; an empty one takes the API's default
  }
}

/** The fields whose default depends on the decoder show the chosen decoder's, unless the
 * user typed a value of their own. */
function followDecoder() {
  for (const [name, byDecoder] of Object.entries(decoderDefaults)) {
    const input = $(`#${name}`);
    if (!input.dataset.typed) input.value = byDecoder[$("#decoder").value] ?? "";
  }
}

/** A hyperparameter the user typed in is theirs (emptied, it follows the decoder again). */
function markTyped(event) {
  if (event.target.value === "") delete event.target.dataset.typed;
  else event.target.dataset.typed = "yes";
}

/** What a run or version trained on: "shapes (200)", "scenes (200)" or the upload's name. */
function datasetName(dataset) {
  if (!dataset) return "imported";
  if (dataset.type === "shapes" || dataset.type === "scenes") {
    return `${dataset.type} (${dataset.size})`;
  }
  return dataset.name || dataset.type || "?";
}

async function startRun(event) {
  event.preventDefault();
  showError(null);
  if ($("#use-upload").checked && !$("#dataset").value) {
    showError(new Error("Choose an uploaded dataset, or upload one below."));
    return;
  }
  const button = $("#start");
  button.disabled = true;
  try {
    const run = await api("/v1/training-runs", { method: "POST", json: runRequest() });
    announce(`Training run ${run.id} ${run.status}.`);
    watch(run);
    loadRuns();
  } catch (error) {
    showError(error);
    announce(error.message);
  } finally {
    button.disabled = false;
  }
}

// ---- uploading a dataset ----

/** POST the form to /v1/datasets, reporting the share sent (0…1) as it goes: the dataset, or
 * an ApiError (a bad archive's `problem.problems` names every bad entry). */
function sendArchive(form, progress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest(); // fetch cannot report an upload's progress
    request.open("POST", "/v1/datasets");
    if (apiKey()) request.setRequestHeader("Authorization", `Bearer ${apiKey()}`);
    request.responseType = "json";
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) progress(event.loaded / event.total);
    });
    request.addEventListener("load", () => {
      if (request.status >= 200 && request.status < 300) resolve(request.response);
      else reject(new ApiError(request.status, request.response || { detail: request.statusText }));
    });
    request.addEventListener("error", () =>
      reject(new ApiError(0, { detail: "the upload was cut off" })));
    request.send(form);
  });
}

async function uploadDataset(event) {
  event.preventDefault();
  const file = $("#archive").files[0];
  const result = $("#upload-result");
  if (!file) return;
  const form = new FormData();
  form.append("archive", file, file.name);
  const name = $("#dataset-name").value.trim();
  if (name) form.append("name", name);
  const bar = $("#upload-progress");
  bar.hidden = false;
  bar.value = 0;
  $("#upload").disabled = true;
  result.replaceChildren(el("p", { text: `Uploading ${file.name}…` }));
  try {
    const dataset = await sendArchive(form, (share) => (bar.value = share));
    const splits = Object.entries(dataset.splits || {})
      .map(([split, counts]) => `${split} ${counts.images}`).join(", ");
    $("#upload-form").reset();
    await loadDatasets(dataset.id);
    $("#use-upload").checked = true;  // chosen before it is said to be
    result.replaceChildren(el("p", { class: "uploaded", text: `Uploaded “${dataset.name}”: `
      + `${dataset.images} images and ${dataset.captions} captions (${splits}). It is chosen `
      + "for the next run above." }));
    announce(result.textContent);
  } catch (error) {
    const problems = error.problem?.problems || [];
    result.replaceChildren(el("div", { class: "error" },
      el("p", { text: `Not uploaded: ${error.message}` }),
      problems.length ? el("ul", {}, ...problems.slice(0, 20).map((p) => el("li", { text: p })))
        : null));
    announce(`Not uploaded: ${error.message}`);
  } finally {
    bar.hidden = true;
    $("#upload").disabled = false;
  }
}

// ---- watching one ----

function watch(run) {
  if (watched?.timer) clearTimeout(watched.timer);
  watched = { id: run.id, steps: [], status: null, timer: null, run: null };
  showCurvesLink(run.id);
  show(run);
  poll();
}

/** The validation metrics of a history row (its training loss and accuracy left out). */
function validation(row) {
  return Object.fromEntries(Object.entries(row).filter(([name]) => !TRAINING.has(name)));
}

async function poll() {
  const current = watched;
  try {
    const run = await api(`/v1/training-runs/${current.id}`);
    if (current !== watched) return;
    show(run);
    if (ENDED.has(run.status)) {
      loadRuns();
      loadModels();
      return;
    }
  } catch (error) {
    showError(error);
  }
  if (current === watched) current.timer = setTimeout(poll, POLL_MS);
}

/** One line that says where the run is (an ended run: how long it took, no time left). */
function describe(run) {
  const parts = [`Run ${run.id.slice(0, 8)}: ${run.status}`];
  const p = run.progress;
  if (ENDED.has(run.status)) {
    const took = Date.parse(run.finished_at) - Date.parse(run.started_at);
    if (took >= 0) parts.push(`took ${duration(took / 1000)}`);
  } else if (run.cancel_requested) {
    parts.push("canceling: it stops before its next step");
  } else if (p?.phase === "training") {
    parts.push(`epoch ${p.epoch}/${p.epochs}, step ${p.step}/${p.steps}`);
    if (typeof p.loss === "number") parts.push(`loss ${p.loss.toFixed(4)}`);
    if (typeof p.eta_s === "number") {
      parts.push(p.eta_s >= 1 ? `about ${duration(p.eta_s)} left` : "almost done");
    }
  } else if (p) {
    parts.push(`${p.phase}${p.total ? ` ${p.done}/${p.total}` : ""}`);
  } else if (run.status === "queued") {
    parts.push("waiting for a training worker");
  }
  const last = run.history.at(-1);
  if (last) parts.push(`validation after epoch ${last.epoch}: ${metricsLine(validation(last))}`);
  if (run.model_version) parts.push(`made ${run.model_version}`);
  if (run.promotion_result?.promoted) parts.push("promoted");
  if (run.error) parts.push(`error: ${run.error.message || run.error.code}`);
  return parts.join(" · ");
}

/** The share of the run done (0…1), or null while it is not training yet. */
function share(run) {
  const p = run.progress;
  if (p?.phase !== "training" || !p.epochs || !p.steps) return null;
  return Math.min(1, (p.epoch - 1 + p.step / p.steps) / p.epochs);
}

function show(run) {
  watched.run = run;
  const p = run.progress;
  if (p?.phase === "training" && typeof p.loss === "number" && !ENDED.has(run.status)) {
    const x = p.epoch - 1 + p.step / p.steps;
    const last = watched.steps.at(-1);
    if (!last || last.x !== x) watched.steps.push({ x, y: p.loss });
  }
  const state = $("#run-state");
  state.textContent = describe(run);
  state.dataset.status = run.status;
  const bar = $("#run-progress");
  bar.hidden = ENDED.has(run.status);
  const done = share(run);
  if (done === null) bar.removeAttribute("value");
  else bar.value = done;
  const cancel = $("#cancel-run");
  cancel.hidden = ENDED.has(run.status);
  cancel.disabled = run.cancel_requested;
  cancel.textContent = run.cancel_requested ? "Canceling…" : "Cancel run";
  if (run.status !== watched.status) {
    announce(`Training run ${run.id} ${run.status}.`);
    watched.status = run.status;
  }
  $("#chart-metric").textContent = run.hyperparameters.monitor;
  redraw();
  showHistory(run.history);
}

/** Draw the watched run's chart (again: after each poll, and when the chart's size changes). */
function redraw() {
  if (!watched?.run) return;
  const run = watched.run;
  const colour = (name) => getComputedStyle(document.documentElement)
    .getPropertyValue(`--series-${name}`).trim();
  const metric = run.hyperparameters.monitor;
  const of = (key) => run.history.filter((e) => typeof e[key] === "number")
    .map((e) => ({ x: e.epoch, y: e[key] }));
  drawChart($("#chart"), [
    { points: watched.steps, colour: colour("steps") },
    { points: of("loss"), colour: colour("epochs") },
    { points: of("accuracy"), colour: colour("accuracy"), top: 1, dashed: true },
    { points: of(metric), colour: colour("validation"), top: 1 },
  ], run.hyperparameters.epochs);
}

function showHistory(history) {
  const table = $("#history");
  table.hidden = history.length === 0;
  // Runs from before token accuracy was recorded have none in their rows: "—".
  const fixed = (value, digits) => (typeof value === "number" ? value.toFixed(digits) : "—");
  table.tBodies[0].replaceChildren(...history.map((e) =>
    el("tr", {}, el("td", { "data-label": "epoch", text: String(e.epoch) }),
      el("td", { "data-label": "training loss", text: fixed(e.loss, 4) }),
      el("td", { class: "accuracy", "data-label": "token accuracy", text: fixed(e.accuracy, 3) }),
      el("td", { "data-label": "validation", text: metricsLine(validation(e)) }))));
}

async function cancelRun() {
  if (!watched) return;
  const button = $("#cancel-run");
  button.disabled = true;
  try {
    const run = await api(`/v1/training-runs/${watched.id}/cancel`, { method: "POST" });
    announce(run.status === "canceled" ? `Training run ${run.id} canceled.`
      : `Training run ${run.id} stops before its next step.`);
    show(run);
  } catch (error) {
    showError(error);
    button.disabled = false;
  }
}

// ---- the learning curves as the API draws them (GET /v1/training-runs/{id}/curves.png) ----

/** Offer the watched run's curves as the API draws them, as a download (the chart above shows
 * the same curves). */
function showCurvesLink(id) {
  $("#curves-path").textContent = `/v1/training-runs/${id}/curves.png`;
  $("#curves").hidden = false;
}

/** Fetch the PNG with the key (a plain link would carry none) and save it. */
async function downloadCurves() {
  if (!watched) return;
  try {
    const png = await api(`/v1/training-runs/${watched.id}/curves.png`, { binary: true });
    const link = el("a", { href: URL.createObjectURL(new Blob([png], { type: "image/png" })),
                           download: `${watched.id}.curves.png` });
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  } catch (error) {
    showError(error);
  }
}

// ---- the chart: lines on a canvas, x in epochs ----

/** Draw `series` ({points: [{x, y}], colour, top?, dashed?}) with axes from 0 to `epochs`:
 * losses share the left axis; a series with `top` (a share from 0 to 1) is drawn on the right
 * one. */
function drawChart(canvas, series, epochs) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600;
  const height = canvas.clientHeight || 240;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const c = canvas.getContext("2d");
  c.scale(ratio, ratio);
  c.clearRect(0, 0, width, height);
  const pad = { left: 48, right: 36, top: 12, bottom: 28 };
  const all = series.flatMap((s) => s.points);
  canvas.dataset.points = String(all.length);
  const losses = series.filter((s) => !s.top).flatMap((s) => s.points);
  const top = Math.max(1e-6, ...losses.map((p) => p.y)) * 1.1;
  const px = (x) => pad.left + (x / Math.max(1, epochs)) * (width - pad.left - pad.right);
  const py = (y, most = top) => height - pad.bottom - (y / most) * (height - pad.top - pad.bottom);
  c.strokeStyle = "#505868";
  c.fillStyle = "#505868";
  c.lineWidth = 1;
  c.font = "12px system-ui, sans-serif";
  c.beginPath();
  c.moveTo(pad.left, pad.top);
  c.lineTo(pad.left, height - pad.bottom);
  c.lineTo(width - pad.right, height - pad.bottom);
  c.stroke();
  c.textAlign = "right";
  for (const y of [0, top / 2, top]) c.fillText(y.toFixed(2), pad.left - 4, py(y) + 4);
  c.textAlign = "left";
  for (const y of [0, 0.5, 1]) c.fillText(y.toFixed(1), width - pad.right + 4, py(y, 1) + 4);
  c.textAlign = "center";
  const every = Math.max(1, Math.ceil(epochs / 10));
  for (let e = 0; e <= epochs; e += every) c.fillText(String(e), px(e), height - 10);
  for (const { points, colour, top: most = top, dashed } of series) {
    const y = (p) => py(p.y, most);
    c.strokeStyle = c.fillStyle = colour;
    c.lineWidth = 2;
    c.setLineDash(dashed ? [6, 4] : []);
    c.beginPath();
    points.forEach((p, i) => (i ? c.lineTo(px(p.x), y(p)) : c.moveTo(px(p.x), y(p))));
    c.stroke();
    for (const p of points) c.fillRect(px(p.x) - 2, y(p) - 2, 4, 4);
  }
  c.setLineDash([]);
}

// ---- lists ----

/** Fill the datasets list (`chosen`: the id to select). */
async function loadDatasets(chosen = null) {
  const select = $("#dataset");
  try {
    const { datasets } = await api("/v1/datasets");
    select.replaceChildren(...datasets.map((d) =>
      el("option", { value: d.id, text: `${d.name} (${d.images} images)` })));
    if (!datasets.length) {
      select.append(el("option", { value: "", text: "none uploaded yet: upload one below" }));
    }
    if (chosen) select.value = chosen;
  } catch (error) {
    select.replaceChildren(el("option", { value: "", text: error.message }));
  }
}

async function loadRuns() {
  try {
    const { training_runs: runs } = await api("/v1/training-runs");
    $("#runs").replaceChildren(...runs.slice(0, 20).map((run) => {
      const button = el("button", { type: "button", text: "Watch",
                                    "aria-label": `Watch run ${run.id.slice(0, 8)}` });
      button.addEventListener("click", () => watch(run));
      return el("li", { "data-run-id": run.id },
        el("span", { class: "badge", "data-status": run.status, text: run.status }),
        el("span", { text: `${run.id.slice(0, 8)} on ${datasetName(run.dataset)}`
          + (run.model_version ? ` → ${run.model_version}` : "") }),
        el("small", {}, timeElement(run.created_at)), button);
    }));
    if (!runs.length) $("#runs").append(el("li", { text: "No runs yet." }));
  } catch (error) {
    $("#runs").replaceChildren(el("li", { text: error.message }));
  }
}

async function loadModels() {
  const body = $("#models").tBodies[0];
  showModelState($("#model"), { training: true });
  try {
    const { models } = await listModels();
    body.replaceChildren(...models.map(modelRow));
    if (!models.length) {
      body.append(el("tr", {}, el("td", { colspan: 7, text: "No versions registered yet: "
        + "start a training run above." })));
    }
  } catch (error) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 7, text: error.message })));
  }
}

function modelRow(model) {
  const decoder = model.architecture?.decoder;
  const button = model.active ? null
    : el("button", { type: "button", text: `Promote ${model.version}` });
  button?.addEventListener("click", () => promote(model.version));
  return el("tr", { "data-version": model.version },
    el("td", { "data-label": "version", text: model.version }),
    el("td", { "data-label": "active", text: model.active ? "active" : "" }),
    el("td", { class: "decoder", "data-label": "decoder",
               text: decoder ? DECODERS[decoder] || decoder : "—" }),
    el("td", { "data-label": "validation", text: metricsLine(model.metrics) }),
    el("td", { class: "limits", "data-label": "limits", text: limitsLine(model) }),
    el("td", { "data-label": "trained on", text: datasetName(model.dataset) }),
    el("td", { class: "action" }, button));
}

/** A version's calibration error and OOD threshold, or "—" for a version without them. */
function limitsLine(model) {
  const parts = [];
  if (typeof model.calibration_error === "number") {
    parts.push(`calibration error ${model.calibration_error.toFixed(3)}`);
  }
  if (typeof model.ood_threshold === "number") {
    parts.push(`OOD threshold ${model.ood_threshold.toPrecision(3)}`);
  }
  return parts.join(", ") || "—";
}

async function promote(version) {
  const line = $("#promote-result");
  line.textContent = `Promoting ${version}…`;
  try {
    await api(`/v1/models/${version}/promote`, { method: "POST" });
    line.textContent = `${version} is active: workers swap to it within seconds.`;
    announce(line.textContent);
    loadModels();
  } catch (error) {
    line.textContent = `Not promoted: ${error.message}`;
    announce(line.textContent);
  }
}

function refresh() {
  if (!apiKey()) return; // nothing to show yet: every call would answer 401
  loadDatasets();
  loadRuns();
  loadModels();
}

setupKeyForm(refresh);
loadDefaults();
keepTimesCurrent();
$("#run-form").addEventListener("submit", startRun);
$("#decoder").addEventListener("change", followDecoder);
for (const name of HYPERPARAMETERS) $(`#${name}`).addEventListener("input", markTyped);
$("#upload-form").addEventListener("submit", uploadDataset);
$("#cancel-run").addEventListener("click", cancelRun);
$("#curves-download").addEventListener("click", downloadCurves);
$("#reload-datasets").addEventListener("click", () => loadDatasets());
$("#reload-runs").addEventListener("click", () => {
  loadRuns();
  loadModels();
});
$("#dataset").addEventListener("change", () => ($("#use-upload").checked = true));
$("#shapes-size").addEventListener("input", () => ($("#use-shapes").checked = true));
$("#scenes-size").addEventListener("input", () => ($("#use-scenes").checked = true));
new ResizeObserver(redraw).observe($("#chart"));
refresh();
