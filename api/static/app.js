// The jobs page: submit images (files, drag and drop, or a URL) with beam search or sampling at a
// temperature (and a seed), watch each job go queued → running → succeeded on its own card (its
// image shown from the start, its errors on the card), explore the caption's attention word by
// word over the image, download the attention, correct the caption; reopen recent jobs; say
// which model version is active, or loudly that none is.

import {
  $,
  announce,
  api,
  apiKey,
  ApiError,
  duration,
  el,
  keepTimesCurrent,
  setupKeyForm,
  showError,
  showModelState,
  timeElement,
} from "/web/common.js";

const POLL_MS = 300;
const POLL_LIMIT_MS = 5 * 60 * 1000;
const TERMINAL = new Set(["succeeded", "failed", "canceled", "aborted"]);
const OVERLAY_MAX_SIDE = 640; // canvas pixels: enough for a smooth overlay, cheap to redraw
const PICTURES = "captioner.pictures"; // sessionStorage: {job id: {name, src}} of this session's
const PICTURES_KEPT = 12; // uploads, small, so a reopened job shows its image (the API has no
const PICTURE_SIDE = 480; // route that serves a job's image back)

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

// ---- this session's pictures: reopened jobs show their image ----

/** The pictures kept for this session's jobs: {job id: {name, src}}. */
function keptPictures() {
  try {
    return JSON.parse(sessionStorage.getItem(PICTURES) || "{}");
  } catch {
    return {};
  }
}

/** Keep a small copy of a job's image (a JPEG data: URL) for this browser session. */
function keepPicture(id, name, src) {
  if (!src) return;
  const kept = Object.entries(keptPictures()).filter(([key]) => key !== id)
    .slice(-(PICTURES_KEPT - 1));
  kept.push([id, { name, src }]);
  try {
    sessionStorage.setItem(PICTURES, JSON.stringify(Object.fromEntries(kept)));
  } catch {
    // storage full: the job reopens over a checkerboard
  }
}

/** A copy of `file` at most PICTURE_SIDE pixels on a side, as a data: URL (null if unreadable). */
async function smallCopy(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(1, PICTURE_SIDE / Math.max(bitmap.width, bitmap.height));
    const canvas = el("canvas", { width: Math.max(1, Math.round(bitmap.width * scale)),
                                  height: Math.max(1, Math.round(bitmap.height * scale)) });
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    return canvas.toDataURL("image/jpeg", 0.85);
  } catch {
    return null;
  }
}

// ---- one job's card ----

const STEPS = ["sent", "queued", "running", "captioned"];

/** A card in the jobs list, its image (`picture`: a blob: or data: URL) shown from the start;
 * without one, a checkerboard of the image's shape (`size`: {width, height}) if known. */
function jobCard(title, picture, size = null) {
  const figure = el(
    "div",
    { class: picture ? "figure" : "figure no-image" },
    picture ? el("img", { src: picture, alt: `the image: ${title}` }) : null,
    el("canvas", { class: "overlay", "aria-hidden": "true" }),
  );
  if (!picture && size?.width && size?.height) {
    figure.style.aspectRatio = `${size.width} / ${size.height}`;
  }
  const card = el(
    "li",
    { class: "job" },
    el("div", { class: "job-head" },
      el("h3", { text: title, tabindex: "-1" }),
      el("p", { class: "state", text: "sending…" }),
      el("span", { class: "when note" })),
    figure,
    el("div", { class: "job-body" },
      el("ol", { class: "steps", "aria-label": "progress" },
        ...STEPS.map((step) => el("li", { text: step }))),
      el("div", { class: "progress-line" },
        el("progress", { "aria-label": `progress of ${title}` }),
        el("span", { class: "elapsed", text: "Sending the image…" })),
      el("p", { class: "options note" }),
      el("div", { class: "error job-error", role: "alert", hidden: true }),
      el("p", { class: "ood-warning", role: "note", hidden: true }),
      el("div", { class: "caption", role: "group", "aria-label": "caption words" }),
      el("p", { class: "confidence note", hidden: true }),
      el("p", { class: "hint", hidden: true }),
      el("p", { class: "links" }),
      el("div", { class: "api-picture-slot" }),
      el("div", { class: "correction-slot" })),
  );
  $("#jobs").prepend(card);
  $("#jobs-empty").hidden = true;
  return card;
}

/** Show the job's status, options and error on its card. */
function setState(card, job) {
  const state = card.querySelector(".state");
  state.textContent = job.status;
  state.dataset.status = job.status;
  card.querySelector(".options").textContent = optionsLine(job.options);
  card.dataset.jobId = job.id;
  card.dataset.status = job.status;
  const when = card.querySelector(".when");
  if (!when.firstChild && job.timings?.created_at) when.append(timeElement(job.timings.created_at));
  if (job.error) {
    cardError(card, `The job ${job.status}: ${job.error.message || job.error.code}`
      + (job.error.code ? ` (${job.error.code})` : ""));
  }
  if (job.image?.width && job.image?.height && card.querySelector(".figure.no-image")) {
    card.querySelector(".figure").style.aspectRatio = `${job.image.width} / ${job.image.height}`;
  }
}

/** Show `text` as the card's error (an alert: read out at once). */
function cardError(card, text) {
  const box = card.querySelector(".job-error");
  box.textContent = text;
  box.hidden = false;
}

/** The steps and the line under them: where the job is and for how long (`since`: ms when it
 * entered that status, as this page saw it). */
function showProgress(card, job, since) {
  const status = job?.status || "sending";
  const at = { sending: 0, queued: 1, running: 2, succeeded: 4 }[status] ?? 3; // 3: it failed
  card.querySelectorAll(".steps li").forEach((step, i) => {
    step.dataset.step = i < at ? "done" : i === at ? "now" : "";
    if (i === 3) step.textContent = at === 3 ? status : "captioned";
  });
  const line = card.querySelector(".progress-line");
  line.hidden = TERMINAL.has(status) || status === "error";
  const waited = duration((Date.now() - since) / 1000);
  const text = {
    sending: "Sending the image…",
    queued: `Queued for ${waited}: waiting for a worker.`,
    running: `Running for ${waited}: the model is writing the caption.`,
  }[status];
  if (text) line.querySelector(".elapsed").textContent = text
    + (status === "queued" && Date.now() - since > 15_000 && $("#model.warning")
      ? " No model version is active: see the notice at the top." : "");
  const timings = job?.timings;
  if (status === "succeeded" && typeof timings?.total_ms === "number") {
    card.querySelector(".options").textContent = `${optionsLine(job.options)} Captioned in `
      + `${(timings.total_ms / 1000).toFixed(1)} s`
      + (typeof timings.queue_ms === "number" ? ` (${(timings.queue_ms / 1000).toFixed(1)} s `
        + "queued)." : ".");
  }
}

/** Submit `send` (a FormData or JSON object) and follow the job on `card` until it ends;
 * `picture` (a promise of a small copy of the image) is kept for reopening the job later. */
async function submit(card, send, picture = null) {
  showProgress(card, null, Date.now());
  let job;
  try {
    job = await api("/v1/jobs", send instanceof FormData ? { method: "POST", body: send }
      : { method: "POST", json: send });
  } catch (error) {
    const state = card.querySelector(".state");
    state.textContent = "not sent";
    state.dataset.status = "error";
    card.dataset.status = "error";
    showProgress(card, { status: "error" }, Date.now());
    cardError(card, `Not sent: ${error.message}`);
    announce(`${card.querySelector("h3").textContent} not sent: ${error.message}`);
    return;
  }
  setState(card, job);
  announce(`Job ${job.id} ${job.status}.`);
  picture?.then((src) => keepPicture(job.id, card.querySelector("h3").textContent, src));
  await follow(card, job);
  refreshRecent();
}

/** Poll the job until it ends, showing each status change and how long it has been in it;
 * then show its result. */
async function follow(card, job) {
  const started = Date.now();
  let seen = job.status;
  let since = Date.now();
  showProgress(card, job, since);
  while (!TERMINAL.has(job.status) && Date.now() - started < POLL_LIMIT_MS) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    try {
      job = await api(`/v1/jobs/${job.id}`);
    } catch (error) {
      cardError(card, `Lost track of the job: ${error.message}`);
      return;
    }
    if (job.status !== seen) {
      seen = job.status;
      since = Date.now();
      setState(card, job);
      announce(`Job ${job.id} ${job.status}.`);
    }
    showProgress(card, job, since);
  }
  setState(card, job);
  showProgress(card, job, since);
  if (job.status === "succeeded") {
    showTrust(card, job);
    try {
      await showResult(card, job);
    } catch (error) {
      cardError(card, `The caption is ready, but not its attention: ${error.message}`);
    }
  }
}

/** How far to trust the caption: its confidence, and a badge when the image is unlike the
 * model's training images (the job's `out_of_distribution` warning). */
function showTrust(card, job) {
  const confidence = job.result?.confidence;
  const line = card.querySelector(".confidence");
  line.hidden = typeof confidence !== "number";
  if (!line.hidden) {
    line.textContent = `confidence ${Math.round(confidence * 100)} %: the model's calibrated `
      + "chance that this caption is right";
  }
  const flagged = (job.warnings || []).includes("out_of_distribution");
  const badge = card.querySelector(".ood-warning");
  badge.hidden = !flagged;
  card.dataset.warning = flagged ? "out_of_distribution" : "";
  if (flagged) {
    badge.textContent = "⚠ Unlike the training images: this caption is probably wrong.";
    announce(`Job ${job.id}: the image is unlike the training images; the caption is probably `
      + "wrong.");
  }
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
  if (image) await image.decode().catch(() => {});
  const width = image?.naturalWidth || job.image?.width || 299;
  const height = image?.naturalHeight || job.image?.height || 299;
  const scale = Math.min(1, OVERLAY_MAX_SIDE / Math.max(width, height));
  canvas.width = Math.max(1, Math.round(width * scale));
  canvas.height = Math.max(1, Math.round(height * scale));

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
  if (!buttons.length) {
    caption.append(el("p", { class: "note", text: "The caption is empty: no word to show." }));
  }

  const download = el("a", { href: URL.createObjectURL(new Blob([npy])),
                             download: `${job.id}.attention.npy`,
                             text: "Download attention (.npy)" });
  const links = card.querySelector(".links");
  links.replaceChildren(download, el("span", { text: `model ${job.result.model_version || "?"}` }));
  if (!image) links.append(apiPictureButton(card, job));
  card.querySelector(".correction-slot").replaceChildren(correctionForm(job));
}

/** For a job whose image this page does not have: the API's own picture of the attention over
 * the image, one panel per word (GET /v1/jobs/{id}/attention.png), on request. */
function apiPictureButton(card, job) {
  const button = el("button", { type: "button", text: "Show the attention over the image (PNG)" });
  button.addEventListener("click", async () => {
    const slot = card.querySelector(".api-picture-slot");
    try {
      const png = await api(job.urls.attention_png, { binary: true });
      const src = URL.createObjectURL(new Blob([png], { type: "image/png" }));
      slot.replaceChildren(el("img", { class: "api-picture", src,
        alt: `the image with each word's attention over it: ${job.result.caption}` }));
      button.remove();
    } catch (error) {
      slot.replaceChildren(el("p", { class: "error", text: error.message }));
    }
  });
  return button;
}

/** "Correct this caption": POST {"caption"} to /v1/jobs/{id}/feedback. */
function correctionForm(job) {
  const id = `correction-${job.id}`;
  const input = el("input", { id, name: "caption", type: "text", required: true,
                              value: job.result.caption || "", autocomplete: "off" });
  const result = el("p", { class: "correction-result", role: "status" });
  const form = el("form", { class: "correction" },
    el("div", { class: "field" }, el("label", { for: id, text: "Correct this caption" }), input),
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

/** The decoding fields: each input's id and name are the request field it sets. */
const FIELDS = ["max_length", "beam_size", "temperature", "seed"];

/** Each decoding field starts at the default the API documents and takes its limits from
 * there (GET /openapi.json), the one place they are written. A field the user already changed
 * is left as it is; one left empty is not sent, and the API applies its default. */
async function loadDefaults() {
  try {
    const document = await (await fetch("/openapi.json")).json();
    const properties = document.components.schemas.JobForm.properties; // text: no nulls
    for (const name of FIELDS) {
      const input = $(`#${name}`);
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

/** A field's label in words, without the API name shown beside it. */
const labelOf = (input) => input.labels[0].firstChild.textContent.trim();

/** The decoding options the form asks for: only the fields that are set, and no beams when
 * sampling (the API samples with one beam). Throws when a field holds what the API does not
 * take. */
function options() {
  const chosen = {};
  for (const name of FIELDS) {
    const input = $(`#${name}`);
    if (input.value === "" && !input.validity.badInput) continue;
    const value = Number(input.value);
    const low = Number(input.min || 0), high = input.max === "" ? Infinity : Number(input.max);
    const whole = name !== "temperature";
    if (!input.validity.valid || !(value >= low && value <= high)
        || (whole && !/^\d+$/.test(input.value))) {
      const what = whole ? "a whole number" : "a number";
      throw new Error(`${labelOf(input)} must be ${what} from ${low} to ${high}`
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
  const beams = $("#beam_size");
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

/** The options a job was decoded with, spelt as the API's fields. */
function optionsLine(options) {
  if (!options) return "";
  const parts = [`max_length ${options.max_length}`];
  if (options.temperature > 0) parts.push(`temperature ${options.temperature} (sampled)`);
  else parts.push(`beam_size ${options.beam_size} (beam search)`);
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
    submit(jobCard(file.name, URL.createObjectURL(file)), form, smallCopy(file));
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
    const url = $("#image_url").value.trim();
    const chosen = url ? checkedOptions() : null;
    if (chosen) submit(jobCard(url, null), { image_url: url, ...chosen });
  });
}

// ---- recent jobs (reopened on a click) and the model ----

/** Show the job `id` on a card of its own (or go to its card if it has one). */
async function openJob(id) {
  const shown = [...$("#jobs").children].find((card) => card.dataset.jobId === id);
  if (shown) {
    shown.querySelector("h3").focus();
    return;
  }
  showError(null);
  let job;
  try {
    job = await api(`/v1/jobs/${id}`);
  } catch (error) {
    showError(error);
    return;
  }
  const kept = keptPictures()[id];
  const card = jobCard(kept?.name || job.image?.url || `Job ${id.slice(0, 8)}`,
    kept?.src || null, job.image);
  setState(card, job);
  card.querySelector("h3").focus();
  announce(`Job ${id} opened: ${job.status}.`);
  await follow(card, job);
}

async function refreshRecent() {
  try {
    const { jobs } = await api("/v1/jobs?limit=10");
    const rows = jobs.map((job) => {
      const open = el("button", { type: "button", class: "recent-job" },
        el("span", { class: "badge", "data-status": job.status, text: job.status }),
        el("span", { class: "what", text: job.result?.caption || job.error?.code || "—" }),
        job.warnings?.includes("out_of_distribution")
          ? el("small", { class: "ood-mark", text: "⚠ unlike the training images" }) : null,
        job.options?.temperature > 0 ? el("small", { class: "sampling", text:
          `temperature ${job.options.temperature}, seed ${job.options.seed}` }) : null,
        el("small", {}, timeElement(job.timings.created_at)));
      open.addEventListener("click", () => openJob(job.id));
      return el("li", { "data-job-id": job.id }, open);
    });
    $("#recent").replaceChildren(...rows);
    if (!rows.length) $("#recent").append(el("li", { text: "No jobs yet." }));
  } catch (error) {
    $("#recent").replaceChildren(el("li", { text: error.message }));
  }
}

function refresh() {
  if (!apiKey()) return; // nothing to show yet: every call would answer 401
  refreshRecent();
  showModelState($("#model"));
}

setupKeyForm(refresh);
setupSubmission();
setupSampling();
loadDefaults();
keepTimesCurrent();
$("#refresh").addEventListener("click", refresh);
refresh();
