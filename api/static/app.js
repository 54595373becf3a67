// The jobs page: submit images (files, drag and drop, or a URL) with beam search or sampling at a
// temperature (and a seed), watch each job go queued →
// running → succeeded, explore the caption's attention word by word over the image, download
// the attention, correct the caption; recent jobs and the active model version.

import {
  $,
  announce,
  api,
  apiKey,
  ApiError,
  el,
  listModels,
  setupKeyForm,
  showError,
} from "/web/common.js";

const POLL_MS = 300;
const POLL_LIMIT_MS = 5 * 60 * 1000;
const TERMINAL = new Set(["succeeded", "failed", "canceled", "aborted"]);
const OVERLAY_MAX_SIDE = 640; // canvas pixels: enough for a smooth overlay, cheap to redraw

// ---- the .npy format (NumPy's own: magic, version, header length, a Python dict, the data) ----

/** Parse a .npy file: {shape, data: Float32Array} (float16, float32 or float64, little-endian,
 * C order). */
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.slice(1, 6));
  if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new Error("not a .npy file");
  const view = new DataView(buffer);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder("latin1").decode(bytes.slice(start, start + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)?.[1] || "")
    .split(",")
    .map((part) => part.trim())
    .filter(Boolean)
    .map(Number);
  if (fortran) throw new Error(".npy in Fortran order is not supported");
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLength;
  const readers = {
    "<f2": [2, (at) => halfToFloat(view.getUint16(at, true))],
    "<f4": [4, (at) => view.getFloat32(at, true)],
    "<f8": [8, (at) => view.getFloat64(at, true)],
  };
  if (!(descr in readers)) throw new Error(`unsupported .npy dtype ${descr}`);
  const [size, read] = readers[descr];
  const data = new Float32Array(count);
  for (let i = 0; i < count; i++) data[i] = read(offset + i * size);
  return { shape, data };
}

/** An IEEE 754 half-precision number's value. */
function halfToFloat(half) {
  const sign = half & 0x8000 ? -1 : 1;
  const exponent = (half >> 10) & 0x1f;
  const fraction = half & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

// ---- the heat overlay ----

/** A heat colour for t in [0, 1]: blue through green and yellow to red, more opaque when hot. */
function heat(t) {
  const hue = (1 - t) * 240;
  const c = 1;
  const x = c * (1 - Math.abs(((hue / 60) % 2) - 1));
  const [r, g, b] =
    hue < 60 ? [c, x, 0] : hue < 120 ? [x, c, 0] : hue < 180 ? [0, c, x] : [0, x, c];
  return [r * 255, g * 255, b * 255, (0.08 + 0.6 * t) * 255];
}

/** Draw one word's (g × g) attention, scaled to its maximum, smoothly over the whole canvas. */
export function drawOverlay(canvas, weights, grid) {
  const small = document.createElement("canvas");
  small.width = small.height = grid;
  const cells = small.getContext("2d").createImageData(grid, grid);
  const top = Math.max(...weights) || 1;
  weights.forEach((value, i) => cells.data.set(heat(Math.max(0, value) / top), i * 4));
  small.getContext("2d").putImageData(cells, 0, 0);
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(small, 0, 0, canvas.width, canvas.height);
}

// ---- one job's card ----

/** A card in the jobs list; `picture` is a blob: URL of the image (null: none to show). */
function jobCard(title, picture) {
  const card = el(
    "li",
    { class: "job" },
    el("h3", { text: title }),
    el("p", { class: "state", text: "sending…" }),
    el("p", { class: "options note" }),
    el(
      "div",
      { class: "figure", hidden: true },
      picture ? el("img", { src: picture, alt: `the image: ${title}` }) : null,
      el("canvas", { class: "overlay", "aria-hidden": "true" }),
    ),
    el("div", { class: "caption", role: "group", "aria-label": "caption words" }),
    el("p", { class: "hint", hidden: true }),
    el("p", { class: "links" }),
    el("div", { class: "correction-slot" }),
  );
  if (!picture) card.querySelector(".figure").classList.add("no-image");
  $("#jobs").prepend(card);
  return card;
}

function setState(card, job) {
  const state = card.querySelector(".state");
  state.textContent = job.error ? `${job.status}: ${job.error.message || job.error.code}` : job.status;
  state.dataset.status = job.status;
  card.querySelector(".options").textContent = optionsLine(job.options);
  card.dataset.jobId = job.id;
  card.dataset.status = job.status;
}

/** Submit `send` (a FormData or JSON object) and follow the job on `card` until it ends. */
async function submit(card, send) {
  try {
    const job = await api("/v1/jobs", send instanceof FormData ? { method: "POST", body: send }
      : { method: "POST", json: send });
    setState(card, job);
    announce(`Job ${job.id} ${job.status}.`);
    await follow(card, job);
  } catch (error) {
    card.querySelector(".state").textContent = "not sent";
    card.querySelector(".state").dataset.status = "error";
    card.dataset.status = "error";
    showError(error);
    announce(String(error.message));
  }
}

/** Poll the job until it ends, showing each status change; then show its result. */
async function follow(card, job) {
  const started = Date.now();
  let seen = job.status;
  while (!TERMINAL.has(job.status) && Date.now() - started < POLL_LIMIT_MS) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    job = await api(`/v1/jobs/${job.id}`);
    if (job.status !== seen) {
      seen = job.status;
      setState(card, job);
      announce(`Job ${job.id} ${job.status}.`);
    }
  }
  setState(card, job);
  if (job.status === "succeeded") await showResult(card, job);
  refreshRecent();
}

/** The caption as word buttons, the attention over the image, the download and the form. */
async function showResult(card, job) {
  const npy = await api(job.urls.attention, { binary: true });
  const { shape, data } = parseNpy(npy);
  const [words, cells] = shape;
  const grid = Math.round(Math.sqrt(cells));
  const figure = card.querySelector(".figure");
  const canvas = figure.querySelector("canvas");
  const image = figure.querySelector("img");
  figure.hidden = false;
  if (image) await image.decode().catch(() => {});
  const width = image?.naturalWidth || 299;
  const height = image?.naturalHeight || 299;
  const scale = Math.min(1, OVERLAY_MAX_SIDE / Math.max(width, height));
  canvas.width = Math.max(1, Math.round(width * scale));
  canvas.height = Math.max(1, Math.round(height * scale));
  if (!image) figure.style.aspectRatio = "1 / 1";

  const tokens = job.result.tokens || [];
  const caption = card.querySelector(".caption");
  caption.replaceChildren();
  const buttons = tokens.slice(0, words).map((token, i) =>
    el("button", { type: "button", class: "word", "aria-pressed": "false", "data-index": i,
                   text: token }));
  const choose = (i) => {
    buttons.forEach((b, j) => b.setAttribute("aria-pressed", String(i === j)));
    drawOverlay(canvas, data.subarray(i * cells, (i + 1) * cells), grid);
    canvas.dataset.word = String(i);
    announce(`Attention for “${tokens[i]}” (word ${i + 1} of ${buttons.length}).`);
  };
  buttons.forEach((button, i) => {
    button.tabIndex = i === 0 ? 0 : -1;
    button.addEventListener("mouseenter", () => choose(i));
    button.addEventListener("focus", () => choose(i));
    button.addEventListener("click", () => choose(i));
    button.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      event.preventDefault();
      const next = (i + step + buttons.length) % buttons.length;
      buttons[i].tabIndex = -1;
      buttons[next].tabIndex = 0;
      buttons[next].focus();
    });
  });
  caption.append(...buttons);
  const hint = card.querySelector(".hint");
  hint.hidden = buttons.length === 0;
  hint.textContent = "Hover or focus a word (Left/Right arrows move) to see where it looked.";
  if (buttons.length) choose(0);

  const download = el("a", { href: URL.createObjectURL(new Blob([npy])),
                             download: `${job.id}.attention.npy`,
                             text: "Download attention (.npy)" });
  const links = card.querySelector(".links");
  links.replaceChildren(download, ` · model ${job.result.model_version || "?"}`);
  card.querySelector(".correction-slot").replaceChildren(correctionForm(job));
}

/** "Correct this caption": POST {"caption"} to /v1/jobs/{id}/feedback. */
function correctionForm(job) {
  const id = `correction-${job.id}`;
  const input = el("input", { id, name: "caption", type: "text", required: true,
                              value: job.result.caption || "", autocomplete: "off" });
  const result = el("p", { class: "correction-result", role: "status" });
  const form = el("form", { class: "correction" },
    el("label", { for: id, text: "Correct this caption" }), input,
    el("button", { type: "submit", text: "Send correction" }), result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    result.textContent = "sending…";
    result.dataset.outcome = "";
    try {
      await api(`/v1/jobs/${job.id}/feedback`, { method: "POST",
                                                 json: { caption: input.value.trim() } });
      result.textContent = "Thank you: your correction was saved.";
      result.dataset.outcome = "saved";
    } catch (error) {
      result.textContent = error instanceof ApiError && error.problem?.detail
        ? `Not saved: ${error.problem.detail}` : `Not saved: ${error.message}`;
      result.dataset.outcome = "refused";
    }
  });
  return form;
}

// ---- submitting ----

/** The form's decoding fields and the request fields they set. */
const FIELDS = { "max-length": "max_length", "beam-size": "beam_size", temperature: "temperature",
  seed: "seed" };

/** Each decoding field starts at the default the API documents and takes its limits from
 * there (GET /openapi.json), the one place they are written. A field the user already changed
 * is left as it is; one left empty is not sent, and the API applies its default. */
async function loadDefaults() {
  try {
    const document = await (await fetch("/openapi.json")).json();
    const properties = document.components.schemas.JobForm.properties; // text: no nulls
    for (const [id, name] of Object.entries(FIELDS)) {
      const input = $(`#${id}`);
      const { default: start, minimum, maximum } = properties[name];
      if (minimum !== undefined) input.min = minimum;
      if (maximum !== undefined) input.max = maximum;
      if (start !== undefined && start !== null && input.value === "") input.value = start;
    }
  } catch {
    // the fields stay empty: the API applies its defaults
  }
  $("#temperature").dispatchEvent(new Event("input"));
}

/** The decoding options the form asks for: only the fields that are set, and no beams when
 * sampling (the API samples with one beam). Throws when a field holds what the API does not
 * take. */
function options() {
  const chosen = {};
  for (const [id, name] of Object.entries(FIELDS)) {
    const input = $(`#${id}`);
    if (input.value === "" && !input.validity.badInput) continue;
    const value = Number(input.value);
    const low = Number(input.min || 0), high = input.max === "" ? Infinity : Number(input.max);
    const whole = name !== "temperature";
    if (!input.validity.valid || !(value >= low && value <= high)
        || (whole && !/^\d+$/.test(input.value))) {
      const what = whole ? "a whole number" : "a number";
      throw new Error(`${input.labels[0].textContent} must be ${what} from ${low} to ${high}`
        + (name === "seed" ? ", or empty." : "."));
    }
    chosen[name] = value;
  }
  if (chosen.temperature > 0) delete chosen.beam_size;
  else delete chosen.temperature;
  return chosen;
}

/** While the temperature is above 0 the beams control is 1 and disabled; the hint says why. */
function setupSampling() {
  const temperature = $("#temperature");
  const beams = $("#beam-size");
  let kept = beams.value; // the beams asked for before sampling, given back at temperature 0
  const update = () => {
    const sampling = Number(temperature.value) > 0;
    if (sampling && !beams.disabled) kept = beams.value;
    if (sampling) beams.value = "1";
    else if (beams.disabled) beams.value = kept;
    beams.disabled = sampling;
    $("#sampling-hint").textContent = sampling
      ? "Sampling: each word is drawn at this temperature, so Beams is 1. The same seed, "
        + "image and model give the same caption; with no seed a random one is recorded."
      : "Temperature 0 picks the most likely words (beam search). Above 0 the caption is "
        + "sampled, with one beam.";
  };
  temperature.addEventListener("input", update);
  update();
}

/** The options a job was decoded with, in words. */
function optionsLine(options) {
  if (!options) return "";
  const parts = [`at most ${options.max_length} words`];
  if (options.temperature > 0) parts.push(`sampled at temperature ${options.temperature}`);
  else parts.push(`temperature 0, ${options.beam_size} beam${options.beam_size === 1 ? "" : "s"}`);
  if (options.seed !== null && options.seed !== undefined) parts.push(`seed ${options.seed}`);
  return `Options: ${parts.join(", ")}.`;
}

/** The form's options, or null (and the error shown) when it asks for ones the API refuses. */
function checkedOptions() {
  try {
    return options();
  } catch (error) {
    showError(error);
    announce(error.message);
    return null;
  }
}

function submitFiles(files) {
  showError(null);
  const chosen = checkedOptions();
  if (!chosen) return;
  for (const file of files) {
    if (!file.type.startsWith("image/")) {
      showError(new Error(`${file.name} is not an image`));
      continue;
    }
    const form = new FormData();
    form.append("image", file, file.name);
    for (const [name, value] of Object.entries(chosen)) form.append(name, String(value));
    submit(jobCard(file.name, URL.createObjectURL(file)), form);
  }
}

function setupSubmission() {
  const input = $("#file");
  input.addEventListener("change", () => {
    submitFiles([...input.files]);
    input.value = "";
  });
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    submitFiles([...event.dataTransfer.files]);
  });
  $("#url-form").addEventListener("submit", (event) => {
    event.preventDefault();
    showError(null);
    const url = $("#image-url").value.trim();
    const chosen = url ? checkedOptions() : null;
    if (chosen) submit(jobCard(url, null), { image_url: url, ...chosen });
  });
}

// ---- recent jobs and the model ----

async function refreshRecent() {
  try {
    const { jobs } = await api("/v1/jobs?limit=10");
    const rows = jobs.map((job) =>
      el("li", { "data-job-id": job.id },
        el("span", { class: "badge", "data-status": job.status, text: job.status }), " ",
        el("span", { text: job.result?.caption || job.error?.code || "—" }), " ",
        job.options?.temperature > 0 ? el("small", { class: "sampling", text:
          `temperature ${job.options.temperature}, seed ${job.options.seed} ` }) : null,
        el("small", { text: job.timings.created_at || "" })));
    $("#recent").replaceChildren(...rows);
    if (!rows.length) $("#recent").append(el("li", { text: "No jobs yet." }));
  } catch (error) {
    $("#recent").replaceChildren(el("li", { text: error.message }));
  }
}

async function refreshModel() {
  try {
    const { active } = await listModels();
    $("#model").textContent = active
      ? `Active model version: ${active}`
      : "No registered version is active: workers serve the bundle they were started with.";
  } catch (error) {
    $("#model").textContent = error.message;
  }
}

function refresh() {
  if (!apiKey()) return; // nothing to show yet: every call would answer 401
  refreshRecent();
  refreshModel();
}

setupKeyForm(refresh);
setupSubmission();
setupSampling();
loadDefaults();
$("#refresh").addEventListener("click", refresh);
refresh();
