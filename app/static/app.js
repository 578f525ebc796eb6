// DiffuseTV's page: plain JavaScript, no build step, no network beyond this server.
// Requests go through fetch() so that an API key can be sent (EventSource and <img> cannot send headers).

const MAX_SEED = 2 ** 53 - 1;
const KEY_STORE = "diffusetv.key";
const HISTORY_STORE = "diffusetv.history";
const $ = (id) => document.getElementById(id);

export const state = { events: [], progress: [], jobId: null, objectUrls: [], models: [], info: {}, prompts: {} };
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

function tvFor(step, steps, url) {
  const li = document.createElement("li");
  li.className = "tv";
  const img = document.createElement("img");
  img.src = url;
  img.alt = `the model's guess at the clean picture after step ${step} of ${steps}`;
  const label = document.createElement("span");
  label.textContent = `${step}/${steps}`;
  li.append(img, label);
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
  if (params.prompt) {
    q.set("prompt", params.prompt);
    q.set("guidance", String(params.guidance));
  }
  q.set("run", "1");
  return `/?${q}`;
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
    const a = document.createElement("a");
    a.href = h.href;
    const prompt = h.prompt ? `“${h.prompt}” at guidance ${h.guidance}, ` : "";
    a.textContent = `${prompt}seed ${h.seed}, ${h.steps} steps, eta ${h.eta}, ${h.model}`;
    if (h.thumb) {
      const img = document.createElement("img");
      img.src = h.thumb;
      img.alt = "";
      li.append(img);
    }
    li.append(a, ` — ${h.status}`);
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

async function generate(event) {
  event?.preventDefault();
  const seed = parseSeed($("seed").value);
  $("seed-error").textContent = seed === null ? "Enter a whole number from 0 to 9007199254740991." : "";
  if (seed === null) return $("seed").focus();
  const body = { seed, steps: Number($("steps").value), eta: Number($("eta").value), previews: $("previews").checked };
  if ($("model").value) body.model = $("model").value;
  Object.assign(body, textBody("model", "prompt", null, "guidance"));
  $("prompt-error").textContent = "";
  $("generate").disabled = true;
  $("result").hidden = true;
  $("tvs").replaceChildren(staticTv());
  $("progress").value = 0;
  state.progress = [];
  try {
    const job = await (await api("/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    })).json();
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
        $("tvs").append(tvFor(data.step, data.steps, data.url));
      }
      return null;
    });
    const done = await (await api(`/jobs/${job.id}`)).json();
    if (final.status === "succeeded") {
      $("progress").value = 1;
      const url = await blobUrl(done.image_url);
      const img = $("result-image");
      img.src = url;
      const asked = done.params.prompt ? `“${done.params.prompt}”, ` : "";
      img.alt = `generated image: ${asked}seed ${done.params.seed}, ${done.params.steps} steps, eta ${done.params.eta}`;
      await img.decode().catch(() => {});
      $("result-params").textContent = JSON.stringify({ ...done.params, model: done.model, engine: done.engine });
      $("download").href = url;
      $("download").download = `diffusetv-${done.params.seed}-${done.params.steps}-${done.params.eta}.png`;
      $("same-again").href = sameAgainHref(done.params, done.model);
      $("result").hidden = false;
      document.body.dataset.done = job.id;
      remember({ id: job.id, seed: String(done.params.seed), steps: done.params.steps, eta: done.params.eta,
        model: `${done.model.name}@${done.model.version}`, status: "succeeded",
        prompt: done.params.prompt, guidance: done.params.guidance,
        href: sameAgainHref(done.params, done.model), thumb: thumbnail(img) });
    } else {
      $("status").textContent = `${describe(final.status, final)}${done.error ? ": " + done.error : ""}`;
    }
  } catch (error) {
    $("status").textContent = `Error: ${error.message}`;
    if (/^(prompt|guidance):/.test(error.message)) $("prompt-error").textContent = error.message;
  } finally {
    $("generate").disabled = false;
  }
}

async function interpolate(event) {
  event.preventDefault();
  const a = parseSeed($("seed-a").value), b = parseSeed($("seed-b").value);
  $("interpolate-error").textContent = a === null || b === null ? "Seeds are whole numbers from 0 to 9007199254740991." : "";
  if (a === null || b === null) return;
  const body = { seed_a: a, seed_b: b, frames: Number($("frames").value), steps: Number($("i-steps").value) };
  if ($("i-model").value) body.model = $("i-model").value;
  Object.assign(body, textBody("i-model", "i-prompt", "i-prompt-b", "i-guidance"));
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
    strip.alt = `${body.frames} frames walking from seed ${a} to seed ${b}${walk}`;
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

// A text model's fields: only what was typed (an empty prompt is none; an empty guidance is the model's default).
function textBody(modelId, promptId, promptBId, guidanceId) {
  const info = state.info[$(modelId).value];
  if (!info || info.conditioning !== "text") return {};
  const body = {};
  const prompt = $(promptId).value.trim();
  if (prompt) body.prompt = prompt;
  const promptB = promptBId ? $(promptBId).value.trim() : "";
  if (prompt && promptB) body.prompt_b = promptB;
  const guidance = $(guidanceId).value.trim();
  if (prompt && guidance !== "") body.guidance = Number(guidance);
  return body;
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
  $("model").addEventListener("change", () => showTextFields("model", "text-fields", "guidance"));
  $("i-model").addEventListener("change", () => showTextFields("i-model", "i-text-fields", "i-guidance"));
  $("interpolate-form").addEventListener("submit", interpolate);
  const query = new URLSearchParams(location.search);
  $("seed").value = query.get("seed") ?? String(randomSeed());
  if (query.get("steps")) $("steps").value = query.get("steps");
  if (query.get("eta")) $("eta").value = query.get("eta");
  $("seed-a").value = String(randomSeed());
  $("seed-b").value = String(randomSeed());
  renderHistory();
  await loadModels();
  if (query.get("model")) $("model").value = query.get("model");
  if (query.get("prompt")) $("prompt").value = query.get("prompt");
  if (query.get("guidance")) $("guidance").value = query.get("guidance");
  await showTextFields("model", "text-fields", "guidance");
  await showTextFields("i-model", "i-text-fields", "i-guidance");
  document.body.dataset.ready = "1";
  // A link fills the form and nothing more: starting a job (with this browser's stored key) takes a press of Generate.
  if (query.get("run") === "1") $("generate").focus();
}

main();
