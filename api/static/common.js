// What both pages share: the API key (kept for the browser session), calls to the API with it,
// the status line read out to screen readers, the model registry's listing and the notice when
// no version is active, and times in words ("2 min ago").

const KEY = "captioner.apiKey";

export const $ = (selector, root = document) => root.querySelector(selector);

/** Make an element with attributes and children (strings become text, never HTML). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export const apiKey = () => sessionStorage.getItem(KEY) || "";

/** An answer that is not 2xx: its status and the problem document's detail. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(explain(status, problem));
    this.status = status;
    this.problem = problem;
  }
}

function explain(status, problem) {
  const detail = problem && problem.detail ? problem.detail : "no details";
  if (status === 401) return `Not signed in (401): ${detail}. Enter a valid API key above.`;
  if (status === 403) return `Not allowed (403): ${detail}.`;
  if (status === 0) return `The API did not answer: ${detail}.`;
  return `${problem && problem.title ? problem.title : "Error"} (${status}): ${detail}.`;
}

/**
 * Call the API with the key: JSON in (`json`) or any body (`body`), JSON out (or an ArrayBuffer
 * with `binary`). Throws ApiError for an answer that is not 2xx, or when no answer came.
 */
export async function api(path, { method = "GET", json, body, headers = {}, binary } = {}) {
  const sent = { method, headers: { ...headers } };
  if (apiKey()) sent.headers.Authorization = `Bearer ${apiKey()}`;
  if (json !== undefined) {
    sent.headers["Content-Type"] = "application/json";
    sent.body = JSON.stringify(json);
  } else if (body !== undefined) {
    sent.body = body;
  }
  let response;
  try {
    response = await fetch(path, sent);
  } catch (error) {
    throw new ApiError(0, { detail: String(error.message || error) });
  }
  if (!response.ok) {
    let problem = null;
    try {
      problem = await response.json();
    } catch {
      problem = { detail: response.statusText };
    }
    throw new ApiError(response.status, problem);
  }
  if (response.status === 204) return null;
  return binary ? response.arrayBuffer() : response.json();
}

/** Say `text` in the status line (an aria-live region). */
export function announce(text) {
  const line = $("#status");
  if (line) line.textContent = text;
}

/** Show `error` (or clear it with null) in the alert line. */
export function showError(error) {
  const line = $("#error");
  if (!line) return;
  line.textContent = error ? String(error.message || error) : "";
  line.hidden = !error;
}

/** Wire the key form: save to sessionStorage, forget, and say which state it is in. */
export function setupKeyForm(onChange) {
  const form = $("#key-form");
  const input = $("#api-key");
  const state = $("#key-state");
  const show = () => {
    state.textContent = apiKey()
      ? "A key is set for this browser session."
      : "No key set: the API answers 401 until you enter one.";
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    input.value = "";
    show();
    showError(null);
    announce("API key saved for this session.");
    onChange?.();
  });
  $("#forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    show();
    announce("API key forgotten.");
  });
  show();
}

/** The registry's versions: {active, models}. */
export const listModels = () => api("/v1/models");

/** Fill `box` with the active version, or say loudly that none is active and how to get one
 * (`training`: the box is on the training page). */
export async function showModelState(box, { training = false } = {}) {
  let listing;
  try {
    listing = await listModels();
  } catch (error) {
    box.className = "notice";
    box.replaceChildren(el("p", { text: `Model versions: ${error.message}` }));
    return;
  }
  if (listing.active) {
    box.className = "notice";
    box.dataset.active = listing.active;
    box.replaceChildren(el("p", { text: `Active model version: ${listing.active}. New jobs are `
      + "captioned by it." }));
    return;
  }
  box.className = "notice warning";
  delete box.dataset.active;
  box.replaceChildren(...noActiveVersion(listing.models.length, training));
  const serving = await servedBundles();
  if (serving === null) return;
  box.querySelector(".serving").textContent = serving.length
    ? `Until then the inference workers serve the bundle they were started with `
      + `(MODEL_BUNDLE): ${serving.join(", ")}.`
    : "No inference worker is serving a model now: jobs wait in the queue until one is active.";
}

/** What the notice says when no version is active (`registered`: how many versions exist). */
function noActiveVersion(registered, training) {
  const train = training
    ? el("span", { text: "start a training run below and promote the version it makes" })
    : el("span", {}, "train one on the ", el("a", { href: "/training", text: "Training page" }),
      " and promote it");
  return [
    el("strong", { text: "No model version is active." }),
    el("p", {}, "To make one active, ", train,
      registered ? ` (${registered} version${registered === 1 ? " is" : "s are"} registered: `
        + "an admin key can promote one)" : "",
      ", or register a bundle you trained yourself: ",
      el("code", { text: "captioner models import BUNDLE --promote" }), "."),
    // With an admin key, showModelState replaces this line with what the workers serve
    // (GET /v1/workers answers 403 to other keys).
    el("p", { class: "serving", text: "Until then only a worker started with its own bundle "
      + "(MODEL_BUNDLE) captions images; without one, jobs wait in the queue." }),
  ];
}

/** The versions inference workers serve now, or null when this key may not ask. */
async function servedBundles() {
  try {
    const { workers } = await api("/v1/workers");
    const served = workers.filter((w) => w.role === "inference" && w.model_version)
      .map((w) => w.model_version);
    return [...new Set(served)];
  } catch {
    return null;
  }
}

// ---- times in words ----

/** "just now", "40 s ago", "2 min ago", "3 h ago", or a local date and time. */
export function humanTime(iso, now = Date.now()) {
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return "";
  const seconds = Math.max(0, Math.round((now - at) / 1000));
  if (seconds < 10) return "just now";
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 12 * 3600) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(at).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** A <time> showing `iso` in words (kept current by keepTimesCurrent), exact in its title. */
export function timeElement(iso) {
  if (!iso) return null;
  const local = new Date(Date.parse(iso)).toLocaleString(undefined,
    { dateStyle: "medium", timeStyle: "medium" });
  return el("time", { datetime: iso, title: local, "data-human": "", text: humanTime(iso) });
}

/** Rewrite every <time data-human> every 20 s ("just now" becomes "1 min ago"). */
export function keepTimesCurrent() {
  setInterval(() => {
    for (const node of document.querySelectorAll("time[data-human]")) {
      node.textContent = humanTime(node.getAttribute("datetime"));
    }
  }, 20_000);
}

/** A duration in words: "8 s", "3 min 20 s", "1 h 5 min". */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ""}`;
  const minutes = Math.round((s % 3600) / 60);
  return `${Math.floor(s / 3600)} h${minutes ? ` ${minutes} min` : ""}`;
}

/** A short line of a version's validation metrics. */
export function metricsLine(metrics) {
  const shown = Object.entries(metrics || {})
    .filter(([, value]) => typeof value === "number")
    .map(([name, value]) => `${name} ${value.toFixed(3)}`);
  return shown.join(", ") || "no metrics";
}
