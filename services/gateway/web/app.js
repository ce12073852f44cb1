// The unCLIP page: calls the gateway's HTTP API (/v1/images/...) with `stream` on, shows the
// progress and previews of the Server-Sent Events as they arrive, keeps every result in a
// gallery, and feeds results into variations, interpolation, text diffs and inpainting.
// Plain JavaScript, no dependencies: the page's Content-Security-Policy allows nothing else.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);

/** Prompts the shapes model knows, by a short label. */
const EXAMPLES = [
  ["blue square", "a large blue square in the center on a black background"],
  ["red circle", "a small red circle in the top left on a white background"],
  ["yellow star", "a yellow star in the bottom right on a gray background"],
  ["triangle above diamond", "a green triangle above a pink diamond"],
  ["purple cross", "a large purple cross in the center on a brown background"],
];

const STAGE_NAMES = {
  "clip.encode_text": "Encoding the prompt",
  "clip.encode_image": "Encoding the image",
  "prior.sample": "Prior",
  "decoder.decode": "Decoder",
  "decoder.invert": "Inverting the image",
};

// ---- State ----

/** Every result of this visit: {id, blob, url, seed, kind, prompt, theta}. Newest last. */
const results = [];
/** The image chosen for each slot: variation, a, b, textdiff, inpaint. */
const slots = {};
/** The request running now: {controller}; one at a time. */
let running = null;
let nextId = 1;

// ---- API ----

function apiKey() {
  return localStorage.getItem("unclip.apiKey") || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** An error the server answered (its message), or one of the page's own checks. */
class ApiError extends Error {
  constructor(message, param) {
    super(message);
    this.param = param || null;
  }
}

/** The message of an error answer `response`, as the server wrote it. */
async function errorOf(response) {
  let text = "";
  try {
    text = await response.text();
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) {
      let message = body.error.message;
      const retry = response.headers.get("retry-after");
      if (response.status === 429 && retry) message += ` (retry after ${retry} s)`;
      return new ApiError(message, body.error.param);
    }
  } catch (_) {
    // Not JSON: fall through to the status line.
  }
  return new ApiError(`${response.status} ${response.statusText}${text ? ": " + text.slice(0, 300) : ""}`);
}

/** Parses a `text/event-stream` body into {event, data} objects as they arrive. */
async function* serverEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

function base64ToBlob(b64, type = "image/png") {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

/** The image of an API item: {b64_json} or {url}, as a Blob. */
async function imageOf(item, type = "image/png") {
  if (item.b64_json) return base64ToBlob(item.b64_json, item.mime_type || type);
  const response = await fetch(item.url, { headers: authHeaders() });
  if (!response.ok) throw await errorOf(response);
  return response.blob();
}

/**
 * Calls `path` streaming; `body` is an object (sent as JSON) or FormData (multipart). Feeds
 * progress and previews to the run card; resolves with {images: [{blob, seed, theta}],
 * animation: Blob|null}.
 */
async function callStreaming(path, body, signal) {
  const headers = authHeaders();
  let payload;
  if (body instanceof FormData) {
    body.set("stream", "true");
    payload = body;
  } else {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify({ ...body, stream: true });
  }
  const response = await fetch(path, { method: "POST", headers, body: payload, signal });
  if (!response.ok) throw await errorOf(response);

  const images = [];
  let animation = null;
  const type = response.headers.get("content-type") || "";
  if (!type.includes("text/event-stream")) {
    // A server that answered in one piece: the plain response shape.
    const json = await response.json();
    for (const item of json.data || []) images.push({ blob: await imageOf(item), seed: item.seed, theta: item.theta });
    if (json.animation) animation = await imageOf(json.animation, "image/apng");
    return { images, animation };
  }
  for await (const { event, data } of serverEvents(response)) {
    const kind = data.type || event;
    if (kind === "error") {
      const error = data.error || {};
      throw new ApiError(error.message || "the server reported an error", error.param);
    } else if (kind.endsWith(".progress")) {
      showProgress(data);
    } else if (kind.endsWith(".partial_image")) {
      showPreview(data);
    } else if (kind.endsWith(".completed")) {
      const image = { blob: await imageOf(data), seed: data.seed, theta: data.theta, index: data.index };
      images.push(image);
      showCompleted(image);
    } else if (kind.endsWith(".animation")) {
      animation = await imageOf(data, "image/apng");
    }
  }
  if (!images.length) throw new ApiError("the stream ended before any image arrived");
  images.sort((a, b) => (a.index ?? 0) - (b.index ?? 0));
  return { images, animation };
}

// ---- The run card: progress, previews, cancel ----

let progressValue = 0;

function stageName(stage) {
  if (STAGE_NAMES[stage]) return STAGE_NAMES[stage];
  const up = /^decoder\.upsample\[(\d+)\]$/.exec(stage || "");
  if (up) return `Upsampler ${Number(up[1]) + 1}`;
  return stage || "working";
}

function setProgress(value) {
  progressValue = Math.max(progressValue, Math.min(1, value));
  $("#progress").value = progressValue;
  $("#run-percent").textContent = `${Math.round(progressValue * 100)}%`;
}

function showProgress(p) {
  const total = p.calls_total || 0;
  if (total > 0) {
    const within = p.total > 0 && p.step < p.total ? p.step / p.total : 0;
    setProgress((p.calls_done + within) / total);
  }
  let text = stageName(p.stage);
  if (p.total > 1) text += ` · step ${p.step} of ${p.total}`;
  $("#run-stage").textContent = text;
}

function addPreview(blob, label) {
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.src = URL.createObjectURL(blob);
  img.alt = label;
  const caption = document.createElement("figcaption");
  caption.textContent = label;
  figure.append(img, caption);
  $("#previews").append(figure);
}

/** The stage whose previews the run card shows: a later stage's previews replace them. */
let previewStage = null;

function showPreview(p) {
  if (!p.b64_json) return;
  if (p.stage !== previewStage) {
    previewStage = p.stage;
    $("#previews").replaceChildren();
  }
  const label = `${stageName(p.stage)}${p.size ? " · " + p.size : ""}`;
  addPreview(base64ToBlob(p.b64_json), label);
}

function showCompleted(image) {
  if (previewStage !== "completed") {
    previewStage = "completed";
    $("#previews").replaceChildren();
  }
  addPreview(image.blob, `seed ${image.seed}`);
}

function startRun(title) {
  const controller = new AbortController();
  running = { controller };
  progressValue = 0;
  setProgress(0);
  $("#run-title").textContent = title;
  $("#run-stage").textContent = "starting";
  $("#previews").replaceChildren();
  previewStage = null;
  $("#run").hidden = false;
  $("#notice").hidden = true;
  $("#cancel").disabled = false;
  for (const button of document.querySelectorAll("form .primary")) button.disabled = true;
  return controller.signal;
}

function endRun(outcome) {
  running = null;
  for (const button of document.querySelectorAll("form .primary")) button.disabled = false;
  $("#cancel").disabled = true;
  if (outcome === "done") {
    setProgress(1);
    $("#run-stage").textContent = "done";
    $("#run").hidden = true;
  } else {
    $("#run").hidden = true;
    if (outcome === "cancelled") notice("Cancelled: the request was aborted, nothing was added.");
  }
  checkHealth();
}

function notice(text) {
  const el = $("#notice");
  el.textContent = text;
  el.hidden = false;
}

function showError(form, error) {
  const el = $(".error", form);
  el.textContent = error ? error.message || String(error) : "";
  el.hidden = !error;
  if (error && error.param) {
    const field = form.querySelector(`[name="${CSS.escape(error.param)}"]`);
    if (field) field.focus();
  }
}

/** Runs `work(signal)` as the one request of the page, reporting failures in `form`. */
async function runForm(form, title, work) {
  if (running) return;
  showError(form, null);
  const signal = startRun(title);
  try {
    await work(signal);
    endRun("done");
  } catch (error) {
    if (error && error.name === "AbortError") {
      endRun("cancelled");
    } else {
      endRun("failed");
      showError(form, error);
    }
  }
}

// ---- Results and the gallery ----

function addResult({ blob, seed, kind, prompt, theta }) {
  const result = { id: nextId++, blob, url: URL.createObjectURL(blob), seed, kind, prompt: prompt || "", theta };
  results.push(result);
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  card.dataset.id = String(result.id);
  card.classList.add("fresh");
  const img = $("img", card);
  img.src = result.url;
  img.alt = result.prompt || kind;
  $(".caption", card).textContent = result.prompt || "(uploaded image)";
  $(".caption", card).title = result.prompt;
  $(".kind", card).textContent = theta === undefined || theta === null ? kind : `${kind} θ=${Number(theta).toFixed(2)}`;
  $(".seed", card).textContent = seed ?? "–";
  const download = $(".act-download", card);
  download.href = result.url;
  download.download = `unclip-${kind}-${seed ?? result.id}.png`;
  $(".act-vary", card).addEventListener("click", () => {
    choose("variation", result);
    selectTab("variations");
    $("#form-variations").requestSubmit();
  });
  $(".act-inpaint", card).addEventListener("click", () => { choose("inpaint", result); selectTab("inpaint"); });
  $(".act-textdiff", card).addEventListener("click", () => { choose("textdiff", result); selectTab("textdiff"); });
  $(".act-a", card).addEventListener("click", () => { choose("a", result); selectTab("interpolate"); });
  $(".act-b", card).addEventListener("click", () => { choose("b", result); selectTab("interpolate"); });
  $("#gallery").prepend(card);
  setTimeout(() => card.classList.remove("fresh"), 2500);
  $("#empty").hidden = true;
  $("#clear-gallery").hidden = false;
  return result;
}

/** Adds a batch to the gallery, first image first (the gallery shows the newest batch on top). */
function addResults(images, kind, prompt) {
  return images
    .slice()
    .reverse()
    .map((image) => addResult({ ...image, kind, prompt }))
    .reverse();
}

// ---- Slots: the input image of each tool ----

/** Puts `result` ({blob, url, prompt, seed}) into slot `name` and updates the tool's fields. */
function choose(name, result) {
  slots[name] = result;
  renderSlot(name);
  if (name === "textdiff") {
    if (result.prompt) $("#td-source").value = result.prompt;
  }
  if (name === "inpaint") {
    if (result.prompt && !$("#edit-prompt").value) $("#edit-prompt").value = result.prompt;
    loadPainter(result);
  }
  if (name === "variation" || name === "textdiff" || name === "inpaint") {
    const form = document.querySelector(`.tab-panel[data-tab="${name === "variation" ? "variations" : name}"]`);
    showError(form, null);
  }
}

function renderSlot(name) {
  const slot = document.querySelector(`.slot[data-slot="${name}"]`);
  const result = slots[name];
  const parts = [];
  if (result) {
    const img = document.createElement("img");
    img.src = result.url;
    img.alt = "the chosen image";
    parts.push(img);
  }
  const text = document.createElement("div");
  text.className = "slot-text";
  const title = document.createElement("strong");
  title.textContent = result
    ? result.prompt || result.name || "uploaded image"
    : "No image yet";
  const sub = document.createElement("span");
  sub.textContent = result
    ? (result.seed !== undefined && result.seed !== null ? `seed ${result.seed} · ` : "") + "or upload another:"
    : "Use a result's button below, or upload one:";
  const file = document.createElement("input");
  file.type = "file";
  file.accept = "image/png,image/jpeg,image/webp";
  file.setAttribute("aria-label", `Upload an image (${name})`);
  file.addEventListener("change", () => {
    const picked = file.files && file.files[0];
    if (!picked) return;
    choose(name, { blob: picked, url: URL.createObjectURL(picked), prompt: "", name: picked.name, seed: null });
  });
  text.append(title, sub, file);
  parts.push(text);
  slot.replaceChildren(...parts);
}

function need(name, what) {
  const result = slots[name];
  if (!result) throw new ApiError(`Choose ${what} first: use a result's button, or upload a file.`);
  return result;
}

// ---- Tabs ----

function selectTab(tab) {
  for (const button of document.querySelectorAll(".tabs button")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === tab));
  }
  for (const panel of document.querySelectorAll(".tab-panel")) panel.hidden = panel.dataset.tab !== tab;
  if (location.hash !== `#${tab}`) history.replaceState(null, "", `#${tab}`);
}

// ---- Form values ----

/** The number in input `id`, or undefined when it is empty. */
function number(id) {
  const value = $(id).value.trim();
  if (value === "") return undefined;
  const parsed = Number(value);
  if (!Number.isFinite(parsed)) throw new ApiError(`${$(id).name || id.slice(1)} must be a number, got ${value}`);
  return parsed;
}

function appendNumber(form, field, id) {
  const value = number(id);
  if (value !== undefined) form.append(field, String(value));
}

// ---- Generate ----

async function generate(signal) {
  const prompt = $("#prompt").value.trim();
  if (!prompt) throw new ApiError("Write a prompt first.", "prompt");
  const body = { prompt, n: number("#n") ?? 1 };
  const fields = {
    seed: "#seed",
    decoder_steps: "#steps",
    decoder_guidance_scale: "#guidance",
    prior_steps: "#prior-steps",
    prior_guidance_scale: "#prior-guidance",
    best_of: "#best-of",
    upsampler_steps: "#upsampler-steps",
  };
  for (const [field, id] of Object.entries(fields)) {
    const value = number(id);
    if (value !== undefined) body[field] = value;
  }
  const negative = $("#negative").value.trim();
  if (negative) body.negative_prompt = negative;
  const { images } = await callStreaming("/v1/images/generations", body, signal);
  addResults(images, "generated", prompt);
}

// ---- Variations ----

async function vary(signal) {
  const source = need("variation", "an image to vary");
  const form = new FormData();
  form.append("image", source.blob, "image.png");
  appendNumber(form, "n", "#var-n");
  appendNumber(form, "seed", "#var-seed");
  form.append("mode", $("#var-mode").value);
  appendNumber(form, "eta", "#var-eta");
  const { images } = await callStreaming("/v1/images/variations", form, signal);
  addResults(images, "variation", source.prompt);
}

// ---- Interpolation and text diffs: frames, a slider, the animation ----

let sequence = null;

function showSequence(title, frames, animation, label) {
  for (const frame of sequence ? sequence.frames : []) URL.revokeObjectURL(frame.url);
  sequence = {
    frames: frames.map((f) => ({ ...f, url: URL.createObjectURL(f.blob) })),
    label,
    animationUrl: animation ? URL.createObjectURL(animation) : null,
  };
  $("#sequence-title").textContent = title;
  const slider = $("#frame-slider");
  slider.max = String(frames.length - 1);
  slider.value = "0";
  const strip = $("#strip");
  strip.replaceChildren(
    ...sequence.frames.map((frame, i) => {
      const img = document.createElement("img");
      img.src = frame.url;
      img.alt = label(frame, i);
      img.title = label(frame, i);
      img.addEventListener("click", () => showFrame(i));
      return img;
    }),
  );
  const download = $("#download-animation");
  $("#show-animation").disabled = !sequence.animationUrl;
  download.hidden = !sequence.animationUrl;
  if (sequence.animationUrl) {
    $("#animation").src = sequence.animationUrl;
    download.href = sequence.animationUrl;
  }
  $("#sequence").hidden = false;
  showView("frames");
  showFrame(0);
}

function showFrame(i) {
  if (!sequence) return;
  const frame = sequence.frames[i];
  $("#frame").src = frame.url;
  $("#frame").alt = sequence.label(frame, i);
  $("#frame-slider").value = String(i);
  $("#frame-label").textContent = sequence.label(frame, i);
  document.querySelectorAll("#strip img").forEach((img, k) => img.classList.toggle("current", k === i));
}

function showView(view) {
  const animation = view === "animation";
  $("#animation").hidden = !animation;
  $("#frame").hidden = animation;
  $("#scrub").hidden = animation;
  $("#show-frames").setAttribute("aria-pressed", String(!animation));
  $("#show-animation").setAttribute("aria-pressed", String(animation));
}

async function interpolate(signal) {
  const a = need("a", "image A");
  const b = need("b", "image B");
  const form = new FormData();
  form.append("image_a", a.blob, "a.png");
  form.append("image_b", b.blob, "b.png");
  appendNumber(form, "frames", "#int-frames");
  appendNumber(form, "seed", "#int-seed");
  const { images, animation } = await callStreaming("/v1/images/interpolations", form, signal);
  const last = Math.max(1, images.length - 1);
  showSequence("Interpolation A → B", images, animation, (_, i) => `t = ${(i / last).toFixed(2)} · frame ${i + 1} of ${images.length}`);
}

async function textDiff(signal) {
  const source = need("textdiff", "an image");
  const sourceCaption = $("#td-source").value.trim();
  const targetCaption = $("#td-target").value.trim();
  if (!sourceCaption) throw new ApiError("Write the caption of the image.", "source_caption");
  if (!targetCaption) throw new ApiError("Write the target caption.", "target_caption");
  const form = new FormData();
  form.append("image", source.blob, "image.png");
  form.append("source_caption", sourceCaption);
  form.append("target_caption", targetCaption);
  appendNumber(form, "frames", "#td-frames");
  appendNumber(form, "max_theta", "#td-theta");
  appendNumber(form, "seed", "#td-seed");
  const { images, animation } = await callStreaming("/v1/images/text-diffs", form, signal);
  const frames = images.map((image) => ({ ...image, prompt: targetCaption }));
  showSequence(`“${sourceCaption}” → “${targetCaption}”`, frames, animation, (frame, i) =>
    `θ = ${Number(frame.theta ?? 0).toFixed(2)} · frame ${i + 1} of ${frames.length}`);
}

// ---- Inpainting: paint the mask on the image ----

const painter = { image: null, paint: null, drawing: false, last: null, painted: false };

function loadPainter(result) {
  const img = new Image();
  img.addEventListener("load", () => {
    const canvas = $("#mask-canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    painter.image = img;
    painter.paint = document.createElement("canvas");
    painter.paint.width = img.naturalWidth;
    painter.paint.height = img.naturalHeight;
    painter.painted = false;
    $("#painter").hidden = false;
    drawPainter();
  });
  img.src = result.url;
}

function drawPainter() {
  const canvas = $("#mask-canvas");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!painter.image) return;
  ctx.drawImage(painter.image, 0, 0);
  ctx.globalAlpha = 0.6;
  ctx.drawImage(painter.paint, 0, 0);
  ctx.globalAlpha = 1;
}

function canvasPoint(event) {
  const canvas = $("#mask-canvas");
  const box = canvas.getBoundingClientRect();
  return {
    x: ((event.clientX - box.left) / box.width) * canvas.width,
    y: ((event.clientY - box.top) / box.height) * canvas.height,
  };
}

function brushRadius() {
  return (Number($("#brush").value) / 100) * $("#mask-canvas").width / 2;
}

function strokeTo(point) {
  const ctx = painter.paint.getContext("2d");
  ctx.globalCompositeOperation = $("#erase").checked ? "destination-out" : "source-over";
  ctx.strokeStyle = "#ff2d75";
  ctx.fillStyle = "#ff2d75";
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.lineWidth = brushRadius() * 2;
  const from = painter.last || point;
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(point.x, point.y);
  ctx.stroke();
  ctx.beginPath();
  ctx.arc(point.x, point.y, brushRadius(), 0, Math.PI * 2);
  ctx.fill();
  painter.last = point;
  painter.painted = true;
  drawPainter();
}

function setUpPainter() {
  const canvas = $("#mask-canvas");
  canvas.addEventListener("pointerdown", (event) => {
    if (!painter.image) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    painter.drawing = true;
    painter.last = null;
    strokeTo(canvasPoint(event));
  });
  canvas.addEventListener("pointermove", (event) => {
    if (painter.drawing) strokeTo(canvasPoint(event));
  });
  const stop = () => { painter.drawing = false; painter.last = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  $("#clear-mask").addEventListener("click", () => {
    if (!painter.paint) return;
    painter.paint.getContext("2d").clearRect(0, 0, painter.paint.width, painter.paint.height);
    painter.painted = false;
    drawPainter();
  });
}

/** The mask as OpenAI reads one: opaque where the image stays, transparent where painted. */
function maskBlob() {
  const mask = document.createElement("canvas");
  mask.width = painter.paint.width;
  mask.height = painter.paint.height;
  const ctx = mask.getContext("2d");
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, mask.width, mask.height);
  ctx.globalCompositeOperation = "destination-out";
  ctx.drawImage(painter.paint, 0, 0);
  return new Promise((resolve) => mask.toBlob(resolve, "image/png"));
}

async function inpaint(signal) {
  const source = need("inpaint", "an image to inpaint");
  if (!painter.image || !painter.painted) throw new ApiError("Paint over the part of the image to regenerate first.");
  const prompt = $("#edit-prompt").value.trim();
  if (!prompt) throw new ApiError("Write a prompt for the edited image.", "prompt");
  const form = new FormData();
  form.append("image", source.blob, "image.png");
  form.append("mask", await maskBlob(), "mask.png");
  form.append("prompt", prompt);
  appendNumber(form, "n", "#edit-n");
  appendNumber(form, "seed", "#edit-seed");
  const { images } = await callStreaming("/v1/images/edits", form, signal);
  addResults(images, "inpainted", prompt);
}

// ---- Gateway status ----

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (!response.ok) throw await errorOf(response);
    const body = await response.json();
    const model = body.data && body.data[0];
    $("#model").textContent = model ? model.id : "no model";
  } catch (error) {
    $("#model").textContent = "model ?";
    $("#model").title = error.message;
  }
}

async function checkHealth() {
  const health = $("#health");
  try {
    const response = await fetch("/readyz");
    const ok = response.ok;
    health.className = `health ${ok ? "ok" : "bad"}`;
    $("#health-text").textContent = ok ? "ready" : "not ready";
    health.title = ok ? "The gateway's stages are ready" : "The gateway answers but its stages are not ready";
  } catch (_) {
    health.className = "health bad";
    $("#health-text").textContent = "unreachable";
    health.title = "The gateway did not answer";
  }
}

// ---- Wiring ----

function setUp() {
  for (const [label, example] of EXAMPLES) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.title = example;
    button.addEventListener("click", () => { $("#prompt").value = example; $("#prompt").focus(); });
    $("#examples").append(button);
  }

  for (const button of document.querySelectorAll(".tabs button")) {
    button.addEventListener("click", () => selectTab(button.dataset.tab));
  }
  const initial = location.hash.slice(1);
  if (document.querySelector(`.tab-panel[data-tab="${CSS.escape(initial)}"]`)) selectTab(initial);

  const forms = [
    ["#form-generate", "Generating", generate],
    ["#form-variations", "Making variations", vary],
    ["#form-interpolate", "Interpolating", interpolate],
    ["#form-textdiff", "Making a text diff", textDiff],
    ["#form-inpaint", "Inpainting", inpaint],
  ];
  for (const [id, title, work] of forms) {
    const form = $(id);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      runForm(form, title, work);
    });
  }
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#form-generate").requestSubmit();
  });
  $("#cancel").addEventListener("click", () => running && running.controller.abort());

  for (const name of ["variation", "a", "b", "textdiff", "inpaint"]) renderSlot(name);
  setUpPainter();

  $("#frame-slider").addEventListener("input", () => showFrame(Number($("#frame-slider").value)));
  $("#show-frames").addEventListener("click", () => showView("frames"));
  $("#show-animation").addEventListener("click", () => showView("animation"));
  $("#keep-frame").addEventListener("click", () => {
    if (!sequence) return;
    const frame = sequence.frames[Number($("#frame-slider").value)];
    addResult({ blob: frame.blob, seed: frame.seed, kind: "frame", prompt: frame.prompt, theta: frame.theta });
  });
  $("#clear-gallery").addEventListener("click", () => {
    for (const result of results) URL.revokeObjectURL(result.url);
    results.length = 0;
    $("#gallery").replaceChildren();
    $("#empty").hidden = false;
    $("#clear-gallery").hidden = true;
  });

  const key = $("#api-key");
  key.value = apiKey();
  $("#key-box").classList.toggle("set", Boolean(key.value));
  key.addEventListener("input", () => {
    const value = key.value.trim();
    if (value) localStorage.setItem("unclip.apiKey", value);
    else localStorage.removeItem("unclip.apiKey");
    $("#key-box").classList.toggle("set", Boolean(value));
  });
  key.addEventListener("change", loadModel);

  loadModel();
  checkHealth();
  setInterval(checkHealth, 15000);
}

setUp();
