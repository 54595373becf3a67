// The training page: start a run (the shapes or scenes set, or an uploaded dataset; a GRU or
// Transformer decoder), watch its progress as
// a line chart, list runs and model versions, promote a version (admin keys only).

import {
  $,
  announce,
  api,
  apiKey,
  el,
  listModels,
  metricsLine,
  setupKeyForm,
  showError,
} from "/web/common.js";

const POLL_MS = 500;
const ENDED = new Set(["succeeded", "failed", "canceled"]);
const TRAINING = new Set(["epoch", "loss", "accuracy"]); // a history row's keys that are not
// validation metrics
let watched = null; // {id, steps: [{x, y}], timer}

// ---- starting a run ----

const DECODERS = { gru: "GRU", transformer: "Transformer" };

/** The dataset the form picks: an uploaded one, or a generated set of the size asked. */
function datasetRequest() {
  if ($("#use-upload").checked) return { type: "upload", id: $("#dataset").value };
  const type = $("#use-scenes").checked ? "scenes" : "shapes";
  return { type, size: Number($(`#${type}-size`).value) };
}

/** A fresh run's request (the page never fine-tunes, so it always names its decoder). */
function runRequest() {
  return {
    dataset: datasetRequest(),
    hyperparameters: { epochs: Number($("#epochs").value),
                       batch_size: Number($("#batch-size").value) },
    model: { decoder: $("#decoder").value },
    promotion: $("#promotion").value,
  };
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
    showError(new Error("Choose an uploaded dataset (or upload one with POST /v1/datasets)."));
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

// ---- watching one ----

function watch(run) {
  if (watched?.timer) clearTimeout(watched.timer);
  watched = { id: run.id, steps: [], status: null, timer: null };
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

/** One line that says where the run is. */
function describe(run) {
  const parts = [`Run ${run.id.slice(0, 8)}: ${run.status}`];
  const p = run.progress;
  if (p?.phase === "training") {
    parts.push(`epoch ${p.epoch}/${p.epochs}, step ${p.step}/${p.steps}`);
    if (typeof p.loss === "number") parts.push(`loss ${p.loss.toFixed(4)}`);
    if (typeof p.eta_s === "number") parts.push(`about ${Math.round(p.eta_s)} s left`);
  } else if (p) {
    parts.push(`${p.phase}${p.total ? ` ${p.done}/${p.total}` : ""}`);
  }
  const last = run.history.at(-1);
  if (last) parts.push(`validation after epoch ${last.epoch}: ${metricsLine(validation(last))}`);
  if (run.model_version) parts.push(`made ${run.model_version}`);
  if (run.error) parts.push(`error: ${run.error.message || run.error.code}`);
  return parts.join(" · ");
}

function show(run) {
  const p = run.progress;
  if (p?.phase === "training" && typeof p.loss === "number") {
    const x = p.epoch - 1 + p.step / p.steps;
    const last = watched.steps.at(-1);
    if (!last || last.x !== x) watched.steps.push({ x, y: p.loss });
  }
  const state = $("#run-state");
  state.textContent = describe(run);
  state.dataset.status = run.status;
  if (run.status !== watched.status) {
    announce(`Training run ${run.id} ${run.status}.`);
    watched.status = run.status;
  }
  const epochs = run.history.map((e) => ({ x: e.epoch, y: e.loss }));
  const metric = run.hyperparameters.monitor;
  const validation = run.history.filter((e) => typeof e[metric] === "number")
    .map((e) => ({ x: e.epoch, y: e[metric] }));
  $("#chart-metric").textContent = metric;
  drawChart($("#chart"), [
    { points: watched.steps, colour: "#1f5fbf" },
    { points: epochs, colour: "#e07b00" },
    { points: validation, colour: "#2e8b57", top: 1 },
  ], run.hyperparameters.epochs);
  showHistory(run.history);
}

function showHistory(history) {
  const table = $("#history");
  table.hidden = history.length === 0;
  // Runs from before token accuracy was recorded have none in their rows: "—".
  const fixed = (value, digits) => (typeof value === "number" ? value.toFixed(digits) : "—");
  table.tBodies[0].replaceChildren(...history.map((e) =>
    el("tr", {}, el("td", { text: String(e.epoch) }), el("td", { text: fixed(e.loss, 4) }),
      el("td", { class: "accuracy", text: fixed(e.accuracy, 3) }),
      el("td", { text: metricsLine(validation(e)) }))));
}

// ---- the learning curves as the API draws them (GET /v1/training-runs/{id}/curves.png) ----

/** Point the "curves (PNG)" link at the watched run; the picture shows once it is clicked. */
function showCurvesLink(id) {
  const path = `/v1/training-runs/${id}/curves.png`;
  $("#curves-link").href = path;
  $("#curves-path").textContent = path;
  $("#curves").hidden = false;
  const image = $("#curves-image");
  if (image.src) URL.revokeObjectURL(image.src);
  image.removeAttribute("src");
  image.hidden = true;
}

/** Fetch the PNG with the key (a plain link would carry none) and show it under the link. */
async function showCurves(event) {
  event.preventDefault();
  if (!watched) return;
  const image = $("#curves-image");
  try {
    const png = await api(`/v1/training-runs/${watched.id}/curves.png`, { binary: true });
    if (image.src) URL.revokeObjectURL(image.src);
    image.src = URL.createObjectURL(new Blob([png], { type: "image/png" }));
    image.hidden = false;
    announce("Learning curves drawn: training loss, token accuracy and validation per epoch.");
  } catch (error) {
    showError(error);
  }
}

// ---- the chart: lines on a canvas, x in epochs ----

/** Draw `series` ({points: [{x, y}], colour, top?}) with axes from 0 to `epochs`: losses share
 * the left axis; a series with `top` (a score from 0 to 1) is drawn on the right one. */
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
  c.strokeStyle = "#5a6272";
  c.fillStyle = "#5a6272";
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
  for (const { points, colour, top: most = top } of series) {
    const y = (p) => py(p.y, most);
    c.strokeStyle = c.fillStyle = colour;
    c.lineWidth = 2;
    c.beginPath();
    points.forEach((p, i) => (i ? c.lineTo(px(p.x), y(p)) : c.moveTo(px(p.x), y(p))));
    c.stroke();
    for (const p of points) c.fillRect(px(p.x) - 2, y(p) - 2, 4, 4);
  }
}

// ---- lists ----

async function loadDatasets() {
  const select = $("#dataset");
  try {
    const { datasets } = await api("/v1/datasets");
    select.replaceChildren(...datasets.map((d) =>
      el("option", { value: d.id, text: `${d.name} (${d.images} images)` })));
    if (!datasets.length) select.append(el("option", { value: "", text: "none uploaded" }));
  } catch (error) {
    select.replaceChildren(el("option", { value: "", text: error.message }));
  }
}

async function loadRuns() {
  try {
    const { training_runs: runs } = await api("/v1/training-runs");
    $("#runs").replaceChildren(...runs.slice(0, 20).map((run) => {
      const button = el("button", { type: "button", text: "Watch" });
      button.addEventListener("click", () => watch(run));
      return el("li", { "data-run-id": run.id }, el("span", { class: "badge",
        "data-status": run.status, text: run.status }), ` ${run.id.slice(0, 8)} on `,
        `${datasetName(run.dataset)} `,
        run.model_version ? `→ ${run.model_version} ` : "", button);
    }));
    if (!runs.length) $("#runs").append(el("li", { text: "No runs yet." }));
  } catch (error) {
    $("#runs").replaceChildren(el("li", { text: error.message }));
  }
}

async function loadModels() {
  const body = $("#models").tBodies[0];
  try {
    const { models } = await listModels();
    body.replaceChildren(...models.map(modelRow));
    if (!models.length) {
      body.append(el("tr", {}, el("td", { colspan: 6, text: "No versions registered yet." })));
    }
  } catch (error) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 6, text: error.message })));
  }
}

function modelRow(model) {
  const decoder = model.architecture?.decoder;
  const button = model.active ? null
    : el("button", { type: "button", text: `Promote ${model.version}` });
  button?.addEventListener("click", () => promote(model.version));
  return el("tr", { "data-version": model.version }, el("td", { text: model.version }),
    el("td", { text: model.active ? "active" : "" }),
    el("td", { class: "decoder", text: decoder ? DECODERS[decoder] || decoder : "—" }),
    el("td", { text: metricsLine(model.metrics) }), el("td", { text: datasetName(model.dataset) }),
    el("td", {}, button));
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
$("#run-form").addEventListener("submit", startRun);
$("#curves-link").addEventListener("click", showCurves);
$("#reload-datasets").addEventListener("click", loadDatasets);
$("#reload-runs").addEventListener("click", () => {
  loadRuns();
  loadModels();
});
$("#dataset").addEventListener("change", () => ($("#use-upload").checked = true));
$("#shapes-size").addEventListener("input", () => ($("#use-shapes").checked = true));
$("#scenes-size").addEventListener("input", () => ($("#use-scenes").checked = true));
refresh();
