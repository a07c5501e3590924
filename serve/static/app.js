// The sbir drawing page: draw (pointer events), search /v1/search with QuickDraw raw strokes, show the
// results grid and, for ZSE-SBIR, the explanation of a result from /v1/explain. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const state = {
  strokes: [], // finished strokes: {x: [], y: [], t: [], width}
  current: null,
  started: 0,
  upload: null, // a File chosen instead of drawing
  apiKey: sessionStorage.getItem("sbir-api-key") || "",
  info: null,
  objectUrls: [],
  pending: null, // the action to retry once an API key is entered
  liveTimer: 0,
};
// What the page last sent and received, for tests and for curious users (window.sbir in the console).
window.sbir = { lastQuery: null, lastResults: [], ready: false };

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.apiKey) headers["X-API-Key"] = state.apiKey;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.ok) return response;
  let message = await response.text();
  try {
    message = JSON.parse(message).error || JSON.parse(message).detail || message;
  } catch (_) {
    // not JSON: show the text as sent
  }
  throw new ApiError(response.status, message);
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function handleError(error, retry) {
  if (error instanceof ApiError && error.status === 401) {
    state.pending = retry;
    $("key-form").hidden = false;
    $("api-key").focus();
    setStatus(`401: ${error.message}`, true);
    return;
  }
  const code = error instanceof ApiError ? `${error.status}: ` : "";
  setStatus(`${code}${error.message}`, true);
}

// ------------------------------------------------------------------ drawing
function point(event) {
  const rect = canvas.getBoundingClientRect();
  return [
    Math.round(((event.clientX - rect.left) * canvas.width) / rect.width),
    Math.round(((event.clientY - rect.top) * canvas.height) / rect.height),
  ];
}

function redraw() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#000";
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const stroke of state.current ? [...state.strokes, state.current] : state.strokes) {
    ctx.lineWidth = stroke.width;
    ctx.beginPath();
    stroke.x.forEach((x, i) => (i ? ctx.lineTo(x, stroke.y[i]) : ctx.moveTo(x, stroke.y[i])));
    if (stroke.x.length === 1) ctx.lineTo(stroke.x[0] + 0.1, stroke.y[0]);
    ctx.stroke();
  }
}

canvas.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);
  if (!state.strokes.length) state.started = performance.now();
  state.upload = null;
  $("upload").value = "";
  const [x, y] = point(event);
  state.current = { x: [x], y: [y], t: [Math.round(performance.now() - state.started)], width: Number($("pen").value) };
  redraw();
});

canvas.addEventListener("pointermove", (event) => {
  if (!state.current) return;
  const [x, y] = point(event);
  const last = state.current.x.length - 1;
  if (x === state.current.x[last] && y === state.current.y[last]) return;
  state.current.x.push(x);
  state.current.y.push(y);
  state.current.t.push(Math.round(performance.now() - state.started));
  redraw();
});

function endStroke() {
  if (!state.current) return;
  state.strokes.push(state.current);
  state.current = null;
  redraw();
  if ($("live").checked) {
    clearTimeout(state.liveTimer);
    state.liveTimer = setTimeout(search, 500);
  }
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

$("undo").addEventListener("click", () => {
  state.strokes.pop();
  redraw();
});
$("clear").addEventListener("click", () => {
  state.strokes = [];
  state.upload = null;
  $("upload").value = "";
  redraw();
  setStatus("");
});
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key === "z") {
    event.preventDefault();
    $("undo").click();
  }
});
$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (!file) return;
  state.upload = file;
  state.strokes = [];
  const image = new Image();
  image.onload = () => {
    redraw();
    const scale = Math.min(canvas.width / image.width, canvas.height / image.height);
    ctx.drawImage(image, 0, 0, image.width * scale, image.height * scale);
    URL.revokeObjectURL(image.src);
  };
  image.src = URL.createObjectURL(file);
  search();
});

// The strokes in QuickDraw's raw format: [[x...], [y...], [t...]] per stroke (the server fits their box).
function rawStrokes() {
  return state.strokes.map((s) => [s.x, s.y, s.t]);
}

// ------------------------------------------------------------------ search and results
function sketchBody(extra) {
  if (state.upload) {
    const form = new FormData();
    form.append("sketch", state.upload);
    for (const [key, value] of Object.entries(extra)) form.append(key, String(value));
    return { body: form };
  }
  return {
    body: JSON.stringify(Object.assign({ strokes: rawStrokes() }, extra)),
    headers: { "Content-Type": "application/json" },
  };
}

async function search() {
  if (!state.upload && !state.strokes.length) {
    setStatus("Draw something first, or upload an image.", true);
    return;
  }
  const fields = { k: Number($("k").value) || 12 };
  if (!$("mode-label").hidden) fields.mode = $("mode").value;
  window.sbir.lastQuery = state.upload ? { upload: state.upload.name, ...fields } : { strokes: rawStrokes(), ...fields };
  setStatus("Searching…");
  try {
    const answer = await (await api("v1/search", Object.assign({ method: "POST" }, sketchBody(fields)))).json();
    await showResults(answer);
    const total = (answer.timings.total * 1000).toFixed(0);
    setStatus(`${answer.results.length} results (${answer.mode}, ${total} ms on the server).`);
  } catch (error) {
    handleError(error, search);
  }
}

async function imageUrl(path) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  state.objectUrls.push(url);
  return url;
}

async function showResults(answer) {
  state.objectUrls.forEach((url) => URL.revokeObjectURL(url));
  state.objectUrls = [];
  const list = $("results");
  list.replaceChildren();
  $("explain").hidden = true;
  window.sbir.lastResults = answer.results.map((r) => r.id);
  const loads = [];
  for (const hit of answer.results) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = String(hit.id);
    const img = document.createElement("img");
    img.alt = `result ${hit.rank}${hit.class ? `: ${hit.class}` : ""}`;
    loads.push(imageUrl(hit.image_url.replace(/^\//, "")).then((url) => (img.src = url)));
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `#${hit.rank} · ${hit.score.toFixed(3)}${hit.class ? ` · ${hit.class}` : ""}`;
    button.append(img, meta);
    button.setAttribute("aria-label", `result ${hit.rank}, score ${hit.score.toFixed(3)}${hit.class ? `, ${hit.class}` : ""}`);
    if (state.info && state.info.explains) button.addEventListener("click", () => explain(hit, button));
    item.append(button);
    list.append(item);
  }
  await Promise.all(loads);
}

// ------------------------------------------------------------------ explanations (ZSE-SBIR)
async function explain(hit, button) {
  document.querySelectorAll(".grid button.selected").forEach((b) => b.classList.remove("selected"));
  button.classList.add("selected");
  setStatus(`Explaining result ${hit.rank}…`);
  try {
    const answer = await (await api("v1/explain", Object.assign({ method: "POST" }, sketchBody({ id: hit.id })))).json();
    const loads = Object.entries(answer.png).map(
      ([name, data]) =>
        new Promise((resolve, reject) => {
          const img = $(`ex-${name}`);
          img.onload = resolve;
          img.onerror = () => reject(new Error(`the ${name} image did not load`));
          img.src = `data:image/png;base64,${data}`;
        }),
    );
    $("explain-caption").textContent = `Result ${hit.rank} (id ${hit.id}${hit.class ? `, ${hit.class}` : ""}): relation score ${answer.score.toFixed(3)}.`;
    $("explain").hidden = false;
    await Promise.all(loads);
    window.sbir.explained = hit.id;
    setStatus(`Explanation of result ${hit.rank} shown below.`);
  } catch (error) {
    handleError(error, () => explain(hit, button));
  }
}

// ------------------------------------------------------------------ model info and the API key
async function loadInfo() {
  try {
    const info = await (await api("v1/info")).json();
    state.info = info;
    const version = info.version ? ` v${info.version}` : "";
    $("model-info").textContent = `${info.model}${version} · ${info.method_title} · ${info.gallery_size} photos (${info.index_kind} index)`;
    const select = $("mode");
    select.replaceChildren(...info.modes.map((m) => new Option(m, m, m === info.default_mode, m === info.default_mode)));
    $("mode-label").hidden = info.modes.length < 2;
    $("k").max = String(info.limits.max_k);
    $("k").value = String(Math.min(Number($("k").value), info.limits.max_k));
    $("key-form").hidden = true;
    window.sbir.ready = true;
    setStatus("Draw a sketch and press Search.");
  } catch (error) {
    $("model-info").textContent = "not connected";
    handleError(error, loadInfo);
  }
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.apiKey = $("api-key").value.trim();
  sessionStorage.setItem("sbir-api-key", state.apiKey);
  $("key-form").hidden = true;
  const retry = state.pending;
  state.pending = null;
  if (!state.info) await loadInfo();
  if (retry && retry !== loadInfo) await retry();
});
$("search").addEventListener("click", search);

redraw();
loadInfo();
