// DiffuseTV's page: plain JavaScript, no build step, no network beyond this server.
// Requests go through fetch() so that an API key can be sent (EventSource and <img> cannot send headers).

const MAX_SEED = 2 ** 53 - 1;
const KEY_STORE = "diffusetv.key";
const HISTORY_STORE = "diffusetv.history";
const DDIM = "ddim"; // the default sampler, and the only one that takes eta > 0
const SAMPLER_NAMES = { ddim: "DDIM", dpmpp_2m: "DPM-Solver++(2M)", unipc: "UniPC" };
const $ = (id) => document.getElementById(id);

export const state = {
  events: [], progress: [], jobId: null, objectUrls: [], models: [], info: {}, prompts: {},
  picture: null, masked: false, inversion: null, ends: { a: null, b: null },
};
window.diffusetv = state; // for people poking around, and for the browser tests

function authHeaders() {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      detail = Array.isArray(body.detail) ? body.detail.map((d) => `${d.loc.at(-1)}: ${d.msg}`).join("; ") : body.detail;
    } catch (_) { /* not JSON */ }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response;
}

// Seeds are integers up to 2^53 - 1, which a JavaScript number holds exactly.
function parseSeed(text) {
  const trimmed = String(text).trim();
  if (!/^\d{1,16}$/.test(trimmed)) return null;
  const value = Number(trimmed);
  return Number.isSafeInteger(value) && value <= MAX_SEED ? value : null;
}

function randomSeed() {
  const [hi, lo] = crypto.getRandomValues(new Uint32Array(2));
  return (hi & 0x1fffff) * 2 ** 32 + lo; // 53 random bits
}

// Server-Sent Events over fetch: parse the stream, resume with Last-Event-ID if it breaks.
async function followEvents(jobId, onEvent) {
  let lastId = null;
  for (let attempt = 0; attempt < 20; attempt++) {
    const headers = lastId ? { "Last-Event-ID": lastId } : {};
    let response;
    try {
      response = await api(`/jobs/${jobId}/events`, { headers });
    } catch (error) {
      if (error.status && error.status < 500) throw error;
      await new Promise((r) => setTimeout(r, 1000));
      continue;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const fields = {};
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const at = line.indexOf(": ");
          fields[line.slice(0, at)] = line.slice(at + 2);
        }
        if (!fields.event) continue;
        lastId = fields.id;
        const data = JSON.parse(fields.data);
        state.events.push({ event: fields.event, data });
        if (onEvent(fields.event, data) === "end") return data;
      }
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error("lost the event stream");
}

const FINAL = new Set(["succeeded", "failed", "canceled"]);

function describe(status, data) {
  if (status === "queued") return data.queue_position != null ? `Queued: ${data.queue_position} ahead` : "Queued";
  if (status === "running") return "Running…";
  return status[0].toUpperCase() + status.slice(1);
}

function staticTv() {
  const li = document.createElement("li");
  li.className = "tv";
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 32;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", "static: pure noise, where every picture starts");
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(32, 32);
  for (let i = 0; i < image.data.length; i += 4) {
    const v = Math.random() * 255;
    image.data[i] = image.data[i + 1] = image.data[i + 2] = v;
    image.data[i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
  li.append(canvas);
  return li;
}

// `inverting`: an inversion's previews count 2 × steps: its x going back to static, then the reconstruction.
function tvFor(step, steps, url, inverting = false) {
  const li = document.createElement("li");
  li.className = "tv";
  const img = document.createElement("img");
  showPreview(img, url);
  const half = steps / 2;
  img.alt = !inverting ? `the model's guess at the clean picture after step ${step} of ${steps}`
    : step <= half ? `the picture run backwards towards static, step ${step} of ${half}`
      : `the reconstruction from the found static, step ${step - half} of ${half}`;
  const label = document.createElement("span");
  label.textContent = `${step}/${steps}`;
  li.append(img, label);
  return li;
}

// A preview is a data: URL where results are kept in Redis, else the API's URL of its PNG (/jobs/{id}/previews/…),
// which is fetched with the key as a result is (blobUrl: an <img> cannot send it). Its television is already in the
// row, so the previews stay in step order whatever order they arrive in.
function showPreview(img, url) {
  if (url.startsWith("data:")) {
    img.src = url;
    return;
  }
  blobUrl(url).then((blob) => { img.src = blob; }, () => { img.alt += " (not available)"; });
}

// The first television of a job from a picture shows the picture.
function pictureTv() {
  const li = document.createElement("li");
  li.className = "tv";
  const img = document.createElement("img");
  img.src = $("picture").src;
  img.alt = "the picture it starts from";
  li.append(img);
  return li;
}

async function blobUrl(path) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  state.objectUrls.push(url);
  return url;
}

function sameAgainHref(params, model) {
  const q = new URLSearchParams({ seed: String(params.seed), steps: String(params.steps), eta: String(params.eta) });
  if (model) q.set("model", `${model.name}@${model.version}`);
  if (params.sampler && params.sampler !== DDIM) q.set("sampler", params.sampler);
  if (params.prompt) {
    q.set("prompt", params.prompt);
    q.set("guidance", String(params.guidance));
  }
  if (params.negative_prompt) q.set("negative_prompt", params.negative_prompt);
  q.set("run", "1");
  return `/?${q}`;
}

// A job in words, for the history and the result's alt text.
function jobWords(done) {
  const p = done.params;
  const model = `${done.model.name}@${done.model.version}`;
  const away = p.negative_prompt ? ` away from “${p.negative_prompt}”` : "";
  const prompt = p.prompt ? `“${p.prompt}”${away} at guidance ${p.guidance}, ` : "";
  const steps = `${p.steps} ${p.sampler && p.sampler !== DDIM ? `${SAMPLER_NAMES[p.sampler] ?? p.sampler} ` : ""}steps`;
  if (done.kind === "invert") return `inversion of a picture, ${prompt}${steps}, ${model}`;
  const from = p.latent ? "from an inverted latent, "
    : p.image ? `${p.mask ? "inpainting" : "image-to-image"} at strength ${p.strength}, ` : "";
  const seed = p.seed != null ? `seed ${p.seed}, ` : "";
  return `${from}${prompt}${seed}${steps}, eta ${p.eta}, ${model}`;
}

function remember(entry) {
  const history = JSON.parse(localStorage.getItem(HISTORY_STORE) || "[]").filter((h) => h.id !== entry.id);
  history.unshift(entry);
  localStorage.setItem(HISTORY_STORE, JSON.stringify(history.slice(0, 20)));
  renderHistory();
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  for (const h of JSON.parse(localStorage.getItem(HISTORY_STORE) || "[]")) {
    const li = document.createElement("li");
    const prompt = h.prompt ? `“${h.prompt}” at guidance ${h.guidance}, ` : "";
    const words = h.label ?? `${prompt}seed ${h.seed}, ${h.steps} steps, eta ${h.eta}, ${h.model}`;
    let text = document.createElement("span");
    if (h.href) {
      text = document.createElement("a");
      text.href = h.href;
    }
    text.textContent = words;
    if (h.thumb) {
      const img = document.createElement("img");
      img.src = h.thumb;
      img.alt = "";
      li.append(img);
    }
    li.append(text, ` — ${h.status} `);
    if (h.status === "succeeded") {
      const use = document.createElement("button");
      use.type = "button";
      use.className = "use";
      use.textContent = "Use this result";
      use.setAttribute("aria-label", `Use this result as the picture: ${words}`);
      use.addEventListener("click", () => useJob(h.id));
      li.append(use);
    }
    list.append(li);
  }
}

function thumbnail(img) {
  try {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 32;
    canvas.getContext("2d").drawImage(img, 0, 0, 32, 32);
    return canvas.toDataURL("image/png");
  } catch (_) {
    return null;
  }
}

function postJson(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

// The seed box's value, or null after saying what is wrong with it.
function checkedSeed() {
  const seed = parseSeed($("seed").value);
  $("seed-error").textContent = seed === null ? "Enter a whole number from 0 to 9007199254740991." : "";
  if (seed === null) $("seed").focus();
  return seed;
}

// The run settings that every generation takes (the seed aside). A sampler other than DDIM runs at eta 0.
function runFields() {
  const sampler = $("sampler").value || DDIM;
  const eta = sampler === DDIM ? Number($("eta").value) : 0;
  const body = { steps: Number($("steps").value), eta, previews: $("previews").checked };
  if ($("model").value) body.model = $("model").value;
  if (sampler !== DDIM) body.sampler = sampler; // DDIM, the default, is left out
  return Object.assign(body, textBody("model", "prompt", null, "guidance", "negative-prompt"));
}

async function generate(event) {
  event?.preventDefault();
  const seed = checkedSeed();
  if (seed === null) return;
  await runJob("/generate", { seed, ...runFields() }, staticTv());
}

// Post a job, fill the televisions from its previews, show and remember its image; the finished job, or null.
async function runJob(path, body, firstTv) {
  const inverting = path === "/invert";
  for (const id of ["prompt-error", "picture-error"]) $(id).textContent = "";
  for (const button of document.querySelectorAll("button.run")) button.disabled = true;
  $("result").hidden = true;
  $("tvs").replaceChildren(firstTv);
  $("tvs").setAttribute("aria-label", inverting
    ? "The row of televisions: the picture turning into static, then back into the picture"
    : "The row of televisions, from static to picture");
  $("progress").value = 0;
  state.progress = [];
  try {
    const job = await (await postJson(path, body)).json();
    state.jobId = job.id;
    document.body.dataset.jobId = job.id;
    $("status").textContent = describe(job.status, job);
    const final = await followEvents(job.id, (name, data) => {
      if (name === "status") {
        $("status").textContent = describe(data.status, data);
        if (FINAL.has(data.status)) return "end";
      } else if (name === "progress") {
        $("progress").value = data.step / data.steps;
        state.progress.push(data.step);
      } else if (name === "preview") {
        $("progress").value = data.step / data.steps;
        state.progress.push(data.step);
        $("tvs").append(tvFor(data.step, data.steps, data.url, inverting));
      }
      return null;
    });
    const done = await (await api(`/jobs/${job.id}`)).json();
    document.body.dataset.ended = job.id;
    if (final.status !== "succeeded") {
      $("status").textContent = `${describe(final.status, final)}${done.error ? ": " + done.error : ""}`;
      return null;
    }
    await showResult(done);
    return done;
  } catch (error) {
    $("status").textContent = `Error: ${error.message}`;
    if (/^(prompt|guidance|negative_prompt):/.test(error.message)) $("prompt-error").textContent = error.message;
    if (/^(image|mask|strength|harmonize|latent):/.test(error.message)) $("picture-error").textContent = error.message;
    return null;
  } finally {
    for (const button of document.querySelectorAll("button.run")) button.disabled = false;
  }
}

async function showResult(done) {
  const p = done.params;
  $("progress").value = 1;
  const url = await blobUrl(done.image_url);
  const img = $("result-image");
  img.src = url;
  img.alt = `${done.kind === "invert" ? "reconstructed picture" : "generated image"}: ${jobWords(done)}`;
  await img.decode().catch(() => {});
  $("result-params").textContent = JSON.stringify({ ...p, model: done.model, engine: done.engine });
  $("download").href = url;
  $("download").download = p.seed != null && !p.image && !p.latent
    ? `diffusetv-${p.seed}-${p.steps}-${p.eta}.png` : `diffusetv-${done.id}.png`;
  const plain = done.kind === "generate" && p.seed != null && !p.image && !p.latent; // a link can say all of it
  $("same-again").hidden = !plain;
  if (plain) $("same-again").href = sameAgainHref(p, done.model);
  $("result").hidden = false;
  state.doneId = done.id;
  document.body.dataset.done = done.id;
  remember({ id: done.id, seed: p.seed != null ? String(p.seed) : null, steps: p.steps, eta: p.eta,
    model: `${done.model.name}@${done.model.version}`, status: "succeeded", prompt: p.prompt, guidance: p.guidance,
    label: jobWords(done), href: plain ? sameAgainHref(p, done.model) : null, thumb: thumbnail(img) });
}

async function interpolate(event) {
  event.preventDefault();
  const a = parseSeed($("seed-a").value), b = parseSeed($("seed-b").value);
  const [imageA, imageB] = [state.ends.a, state.ends.b];
  const bad = (!imageA && a === null) || (!imageB && b === null);
  $("interpolate-error").textContent = bad ? "Seeds are whole numbers from 0 to 9007199254740991." : "";
  if (bad) return;
  const body = { frames: Number($("frames").value), steps: Number($("i-steps").value) };
  Object.assign(body, imageA ? { image_a: imageA } : { seed_a: a }, imageB ? { image_b: imageB } : { seed_b: b });
  if ($("i-model").value) body.model = $("i-model").value;
  if ($("i-sampler").value && $("i-sampler").value !== DDIM) body.sampler = $("i-sampler").value;
  Object.assign(body, textBody("i-model", "i-prompt", "i-prompt-b", "i-guidance", "i-negative-prompt"));
  $("interpolate").disabled = true;
  $("i-result").hidden = true;
  $("i-progress").value = 0;
  try {
    const job = await (await api("/interpolate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    })).json();
    document.body.dataset.interpolationId = job.id;
    const final = await followEvents(job.id, (name, data) => {
      if (name === "status") {
        $("i-status").textContent = describe(data.status, data);
        if (FINAL.has(data.status)) return "end";
      } else if (name === "progress") {
        $("i-progress").value = data.step / data.steps;
      }
      return null;
    });
    if (final.status !== "succeeded") throw new Error(final.status);
    const done = await (await api(`/jobs/${job.id}`)).json();
    const [strip, animation] = [$("strip"), $("animation")];
    strip.src = await blobUrl(done.strip_url);
    const walk = done.params.prompt_b ? ` and from “${done.params.prompt}” to “${done.params.prompt_b}”` : "";
    const [from, to] = [imageA ? "picture A" : `seed ${a}`, imageB ? "picture B" : `seed ${b}`];
    strip.alt = `${body.frames} frames walking from ${from} to ${to}${walk}`;
    animation.src = await blobUrl(done.image_url);
    animation.alt = `the same walk as an animation, ${body.frames} frames`;
    await strip.decode().catch(() => {});
    $("i-params").textContent = JSON.stringify(done.params);
    $("i-progress").value = 1;
    $("i-result").hidden = false;
    document.body.dataset.interpolationDone = job.id;
  } catch (error) {
    $("i-status").textContent = `Error: ${error.message}`;
  } finally {
    $("interpolate").disabled = false;
  }
}

// ---- The image tab: a picture in, a mask painted over it, and what to do with them.

const PICTURE_SIDE = 256; // the picture's displayed long side, in CSS pixels; the mask is painted at that size

// A file as a data URL, read in the browser: the API gets the file's own bytes.
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// The picture to send (`value`: a data URL or {job: id}), shown at PICTURE_SIDE with an empty mask over it.
async function setPicture(value, url, name) {
  const img = $("picture");
  img.src = url;
  try {
    await img.decode();
  } catch (_) {
    state.picture = null;
    img.hidden = $("mask").hidden = true;
    $("drop-hint").hidden = false;
    $("picture-error").textContent = `${name} is not a picture this browser can show.`;
    return;
  }
  const scale = PICTURE_SIDE / Math.max(img.naturalWidth, img.naturalHeight);
  img.width = Math.round(img.naturalWidth * scale);
  img.height = Math.round(img.naturalHeight * scale);
  img.alt = `the picture: ${name}`;
  const mask = $("mask");
  mask.width = img.width;
  mask.height = img.height;
  state.picture = { value, name };
  img.hidden = mask.hidden = false;
  $("drop-hint").hidden = true;
  $("picture-error").textContent = "";
  clearMask();
}

async function pictureFromFile(file) {
  if (!file) return;
  try {
    const url = await readFile(file);
    await setPicture(url, url, file.name);
  } catch (error) {
    $("picture-error").textContent = `Could not read ${file.name}: ${error.message}`;
  }
}

// "Use this result": a finished job's image becomes the picture, sent as {job: id}.
async function useJob(id) {
  selectTab($("tab-image"));
  try {
    await setPicture({ job: id }, await blobUrl(`/jobs/${id}/image.png`), `the result of job ${id}`);
  } catch (error) {
    $("picture-error").textContent = `Error: ${error.message}`;
  }
}

function clearMask() {
  const mask = $("mask");
  mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
  state.masked = false;
  $("harmonize-field").hidden = true;
}

// The brush: pointer strokes in the overlay's colour; what is painted repaints (maskDataUrl).
function setUpBrush() {
  const mask = $("mask");
  const ctx = mask.getContext("2d");
  let last = null;
  const at = (e) => {
    const box = mask.getBoundingClientRect();
    return [(e.clientX - box.left) * (mask.width / box.width), (e.clientY - box.top) * (mask.height / box.height)];
  };
  const stroke = (from, to) => {
    ctx.strokeStyle = "#ff2d6f";
    ctx.lineWidth = Number($("brush").value);
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...from);
    ctx.lineTo(...to);
    ctx.stroke();
    state.masked = true;
    $("harmonize-field").hidden = false;
  };
  mask.addEventListener("pointerdown", (e) => {
    mask.setPointerCapture(e.pointerId);
    last = at(e);
    stroke(last, last);
  });
  mask.addEventListener("pointermove", (e) => {
    if (!last) return;
    const point = at(e);
    stroke(last, point);
    last = point;
  });
  for (const name of ["pointerup", "pointercancel"]) mask.addEventListener(name, () => { last = null; });
}

// The mask as the API reads it: a PNG, white = repaint on black = keep, at the picture's displayed size.
function maskDataUrl() {
  const mask = $("mask");
  const pixels = mask.getContext("2d").getImageData(0, 0, mask.width, mask.height);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    d[i] = d[i + 1] = d[i + 2] = d[i + 3] >= 128 ? 255 : 0; // the brush's soft edge: painted from half on
    d[i + 3] = 255;
  }
  const out = document.createElement("canvas");
  out.width = mask.width;
  out.height = mask.height;
  out.getContext("2d").putImageData(pixels, 0, 0);
  return out.toDataURL("image/png");
}

function needPicture() {
  if (!state.picture) $("picture-error").textContent = "Pick or drop a picture first.";
  return state.picture;
}

async function generateFromPicture(event) {
  event?.preventDefault();
  if (!needPicture()) return;
  const seed = checkedSeed();
  if (seed === null) return;
  const body = { seed, ...runFields(), image: state.picture.value, strength: Number($("strength").value) };
  if (state.masked) {
    body.mask = maskDataUrl();
    body.harmonize = ($("sampler").value || DDIM) === DDIM ? Number($("harmonize").value) : 0;
  }
  await runJob("/generate", body, pictureTv());
}

// An inversion runs with the prompt alone (the API inverts at guidance 1, where a negative prompt does nothing), with
// the sampler, and always shows its televisions.
async function invert() {
  if (!needPicture()) return;
  const { steps, model, prompt, sampler } = runFields();
  const body = { image: state.picture.value, steps, previews: true, ...(model && { model }), ...(prompt && { prompt }),
    ...(sampler && { sampler }) };
  $("from-latent").hidden = $("latent-download").hidden = true;
  const done = await runJob("/invert", body, pictureTv());
  if (!done) return;
  state.inversion = { id: done.id, steps: done.params.steps };
  const link = $("latent-download");
  link.href = await blobUrl(done.latent_url);
  link.download = `diffusetv-${done.id}.safetensors`;
  link.hidden = $("from-latent").hidden = false;
}

// From the inversion's latent: its steps; a prompt now (none at inversion) edits the picture.
async function generateFromLatent() {
  const body = { ...runFields(), latent: { job: state.inversion.id }, steps: state.inversion.steps };
  const seed = parseSeed($("seed").value);
  if (seed !== null) body.seed = seed; // only eta > 0 draws from it
  await runJob("/generate", body, staticTv());
}

function setUpImageTab() {
  const stage = $("stage");
  $("picture-file").addEventListener("change", (e) => pictureFromFile(e.target.files[0]));
  stage.addEventListener("dragover", (e) => {
    e.preventDefault();
    stage.classList.add("over");
  });
  stage.addEventListener("dragleave", () => stage.classList.remove("over"));
  stage.addEventListener("drop", (e) => {
    e.preventDefault();
    stage.classList.remove("over");
    pictureFromFile(e.dataTransfer.files[0]);
  });
  setUpBrush();
  $("clear-mask").addEventListener("click", clearMask);
  $("strength").addEventListener("input", () => { $("strength-value").value = $("strength").value; });
  $("image-form").addEventListener("submit", generateFromPicture);
  $("invert").addEventListener("click", invert);
  $("from-latent").addEventListener("click", generateFromLatent);
  $("use-result").addEventListener("click", () => useJob(state.doneId));
  for (const end of ["a", "b"]) {
    $(`picture-${end}`).addEventListener("change", async (e) => {
      const file = e.target.files[0];
      state.ends[end] = file ? await readFile(file) : null;
      showEnd(end);
    });
    $(`clear-${end}`).addEventListener("click", () => {
      state.ends[end] = null;
      $(`picture-${end}`).value = "";
      showEnd(end);
    });
  }
}

// An interpolation's end: a picture when one is picked (its seed box is then unused), else the seed.
function showEnd(end) {
  const picture = state.ends[end];
  const thumb = $(`picture-${end}-thumb`);
  thumb.hidden = !picture;
  if (picture) thumb.src = picture;
  else thumb.removeAttribute("src");
  thumb.alt = picture ? `the picture for ${end.toUpperCase()}` : "";
  $(`clear-${end}`).hidden = !picture;
  $(`seed-${end}`).disabled = Boolean(picture);
}

// A text model's fields: only what was typed (an empty prompt is none; an empty guidance is the model's default; a
// negative prompt without a prompt is sent, for the API to say what is missing).
function textBody(modelId, promptId, promptBId, guidanceId, negativeId) {
  const info = state.info[$(modelId).value];
  if (!info || info.conditioning !== "text") return {};
  const body = {};
  const prompt = $(promptId).value.trim();
  if (prompt) body.prompt = prompt;
  const promptB = promptBId ? $(promptBId).value.trim() : "";
  if (prompt && promptB) body.prompt_b = promptB;
  const guidance = $(guidanceId).value.trim();
  if (prompt && guidance !== "") body.guidance = Number(guidance);
  const negative = $(negativeId).value.trim();
  if (negative) body.negative_prompt = negative;
  return body;
}

// The samplers the model runs (GET /models), the one chosen kept where the model runs it too.
function showSamplers(modelId, samplerId) {
  const info = state.info[$(modelId).value];
  const offered = info?.samplers?.length ? info.samplers : [DDIM];
  const select = $(samplerId);
  const keep = offered.includes(select.value) ? select.value : offered.includes(DDIM) ? DDIM : offered[0];
  select.replaceChildren(...offered.map((name) => new Option(SAMPLER_NAMES[name] ?? name, name)));
  select.value = keep;
  showEta();
}

// Eta and harmonize are DDIM's alone: another sampler greys them out (and the bodies send 0).
function showEta() {
  const ddim = ($("sampler").value || DDIM) === DDIM;
  $("eta").disabled = !ddim;
  $("harmonize").disabled = !ddim;
  $("eta-hint").hidden = ddim;
}

// The prompt fields show for a text model, with its captions as suggestions and its default guidance.
async function showTextFields(selectId, fieldsetId, guidanceId) {
  const info = state.info[$(selectId).value];
  const text = Boolean(info && info.conditioning === "text");
  $(fieldsetId).hidden = !text;
  if (!text) return;
  $(guidanceId).placeholder = `default ${info.default_guidance}`;
  if (!state.prompts[info.ref]) {
    try {
      state.prompts[info.ref] = (await (await api(`/models/${encodeURIComponent(info.ref)}/prompts`)).json()).prompts;
    } catch (_) {
      state.prompts[info.ref] = [];
    }
  }
  $("prompt-suggestions").replaceChildren(...state.prompts[info.ref].map((p) => new Option(p)));
}

// Only models that a live worker serves are offered: any other would be answered 503.
async function loadModels() {
  try {
    const list = await (await api("/models")).json();
    const served = list.models.filter((m) => m.served);
    for (const select of [$("model"), $("i-model")]) {
      select.replaceChildren(...served.map((m) => {
        const option = new Option(`${m.ref}${m.default ? " (default)" : ""}`, m.ref);
        option.selected = m.default;
        return option;
      }));
    }
    state.models = served.map((m) => m.ref);
    state.info = Object.fromEntries(served.map((m) => [m.ref, m]));
    if (!served.length) $("status").textContent = "No model is being served right now; try again shortly.";
  } catch (error) {
    $("status").textContent = `Could not list models: ${error.message}`;
  }
}

function selectTab(tab) {
  for (const t of document.querySelectorAll("[role=tab]")) {
    const selected = t === tab;
    t.setAttribute("aria-selected", String(selected));
    t.tabIndex = selected ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !selected;
  }
  const slot = $(tab.getAttribute("aria-controls")).querySelector(".settings-slot");
  if (slot) slot.append($("run-settings")); // one set of seed, steps, model and prompt for both tabs
  $("run-view").hidden = !slot;
  tab.focus();
}

function setUpTabs() {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (e) => {
      const i = tabs.indexOf(tab);
      if (e.key === "ArrowRight") selectTab(tabs[(i + 1) % tabs.length]);
      if (e.key === "ArrowLeft") selectTab(tabs[(i + tabs.length - 1) % tabs.length]);
    });
  }
}

async function main() {
  setUpTabs();
  $("api-key").value = localStorage.getItem(KEY_STORE) || "";
  $("save-key").addEventListener("click", () => {
    const key = $("api-key").value.trim();
    key ? localStorage.setItem(KEY_STORE, key) : localStorage.removeItem(KEY_STORE);
    loadModels();
  });
  $("random-seed").addEventListener("click", () => { $("seed").value = String(randomSeed()); });
  $("generate-form").addEventListener("submit", generate);
  $("model").addEventListener("change", () => {
    showSamplers("model", "sampler");
    showTextFields("model", "text-fields", "guidance");
  });
  $("i-model").addEventListener("change", () => {
    showSamplers("i-model", "i-sampler");
    showTextFields("i-model", "i-text-fields", "i-guidance");
  });
  $("sampler").addEventListener("change", showEta);
  $("interpolate-form").addEventListener("submit", interpolate);
  setUpImageTab();
  const query = new URLSearchParams(location.search);
  $("seed").value = query.get("seed") ?? String(randomSeed());
  if (query.get("steps")) $("steps").value = query.get("steps");
  if (query.get("eta")) $("eta").value = query.get("eta");
  $("seed-a").value = String(randomSeed());
  $("seed-b").value = String(randomSeed());
  renderHistory();
  await loadModels();
  if (query.get("model")) $("model").value = query.get("model");
  showSamplers("model", "sampler");
  showSamplers("i-model", "i-sampler");
  if (state.info[$("model").value]?.samplers?.includes(query.get("sampler"))) $("sampler").value = query.get("sampler");
  showEta();
  if (query.get("prompt")) $("prompt").value = query.get("prompt");
  if (query.get("guidance")) $("guidance").value = query.get("guidance");
  if (query.get("negative_prompt")) $("negative-prompt").value = query.get("negative_prompt");
  await showTextFields("model", "text-fields", "guidance");
  await showTextFields("i-model", "i-text-fields", "i-guidance");
  document.body.dataset.ready = "1";
  // A link fills the form and nothing more: starting a job (with this browser's stored key) takes a press of Generate.
  if (query.get("run") === "1") $("generate").focus();
}

main();
