// What both pages share: the API key (kept for the browser session), calls to the API with it,
// the status line read out to screen readers, and the model registry's listing.

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

/** A short line of a version's validation metrics. */
export function metricsLine(metrics) {
  const shown = Object.entries(metrics || {})
    .filter(([, value]) => typeof value === "number")
    .map(([name, value]) => `${name} ${value.toFixed(3)}`);
  return shown.join(", ") || "no metrics";
}
