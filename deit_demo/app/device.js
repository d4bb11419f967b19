// The Your device tab: DeiT in the visitor's browser with ONNX Runtime Web. Loaded as a module by the page's head.
// The image is decoded, resized and normalised here exactly as deit_demo.core.images.preprocess does (PIL's
// resampling, reimplemented), and classified here: no image byte is sent anywhere. Files come from this server only.

const BASE = new URL("./", import.meta.url); // .../deit-web/
const PRECISION_BITS = 22; // PIL's fixed-point resampling (libImaging/Resample.c)
const FILTERS = {
  bicubic: {support: 2.0, fn: (x) => { const a = -0.5; x = Math.abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a; return 0; }},
  bilinear: {support: 1.0, fn: (x) => { x = Math.abs(x); return x < 1 ? 1 - x : 0; }},
};
const state = {caps: null, catalog: null, models: null, sessions: new Map(), ort: {}, threads: null, lastRun: null,
               busy: false};

// ------------------------------------------------------------------------------------------------ what the device has

const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0,
  65, 0, 253, 15, 253, 98, 11]);

async function capabilities() {
  const caps = {isolated: self.crossOriginIsolated === true, cores: navigator.hardwareConcurrency || 1,
    simd: WebAssembly.validate(SIMD_PROBE), embedded: window.self !== window.top, webgpu: null, webgpuNote: ""};
  caps.maxThreads = caps.isolated ? Math.min(caps.cores, 16) : 1;
  if (navigator.gpu) {
    try {
      const adapter = await navigator.gpu.requestAdapter();
      if (adapter) {
        const info = adapter.info || {};
        const software = adapter.isFallbackAdapter || info.isFallbackAdapter || /swiftshader/i.test(info.architecture || "");
        caps.webgpu = {vendor: info.vendor || "", architecture: info.architecture || "", software,
                       f16: adapter.features.has("shader-f16")};
        caps.webgpuNote = software ? "a software adapter (slower than WASM here)" : `${info.vendor} ${info.architecture}`.trim();
      } else caps.webgpuNote = "this browser exposes WebGPU but found no adapter";
    } catch (err) { caps.webgpuNote = `WebGPU failed: ${err.message}`; }
  } else caps.webgpuNote = "not in this browser";
  const ua = navigator.userAgentData;
  caps.browser = {name: ua && ua.brands ? ua.brands.filter((b) => !/Not/.test(b.brand)).map((b) => `${b.brand} ${b.version}`).join(", ") || "browser" : (navigator.userAgent.match(/(Firefox|Chrome|Safari|Edg)\/[\d.]+/) || ["browser"])[0],
    platform: (ua && ua.platform) || navigator.platform || "?", userAgent: navigator.userAgent, cores: caps.cores,
    isolated: caps.isolated, mobile: !!(ua && ua.mobile)};
  return caps;
}

// ---------------------------------------------------------------------------------------------------------- the server

async function getJSON(path, options) {
  const response = await fetch(new URL(path, BASE), options);
  const body = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function runtime(backend) {
  if (state.ort[backend]) return state.ort[backend];
  const status = await getJSON("runtime");
  const dir = new URL(`ort/${status.version}/`, BASE);
  const file = backend === "webgpu" ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs";
  let ort;
  try {
    ort = await import(new URL(file, dir).href);
  } catch (err) {
    const now = await getJSON("runtime").catch(() => status);
    throw new Error(now.ready ? `ONNX Runtime Web did not load (${err.message}).`
      : `ONNX Runtime Web ${now.version} is not on this server${now.failure ? ` (${now.failure})` : ""}. ` +
        `Run \`${now.setup}\` in the project folder, then reload this page.`);
  }
  ort.env.wasm.wasmPaths = dir.href;
  ort.env.wasm.numThreads = state.threads;
  state.ort[backend] = ort;
  return ort;
}

async function sha256Hex(bytes) {
  if (!crypto.subtle) return null; // not a secure context (plain http on a LAN address): cannot check here
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function download(format, onProgress) {
  const started = performance.now();
  const response = await fetch(new URL(format.url, BASE));
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error || `The model file could not be downloaded (HTTP ${response.status}).`);
  }
  const total = Number(response.headers.get("Content-Length")) || format.size_bytes;
  // Written straight into one buffer of the announced size: a phone holds the file once, not twice.
  let bytes = new Uint8Array(total), received = 0;
  const reader = response.body.getReader();
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    if (received + value.length > bytes.length) { const grown = new Uint8Array((received + value.length) * 2); grown.set(bytes.subarray(0, received)); bytes = grown; }
    bytes.set(value, received); received += value.length;
    onProgress(received, total);
  }
  bytes = bytes.subarray(0, received);
  const digest = await sha256Hex(bytes);
  if (digest !== null && digest !== format.sha256) {
    throw new Error(`The ${format.key} file is damaged: its sha256 (${digest.slice(0, 12)}…) is not the server's ` +
      `(${format.sha256.slice(0, 12)}…). Nothing was run. Reload the page to download it again.`);
  }
  return {bytes, ms: performance.now() - started, verified: digest !== null};
}

// ------------------------------------------------------------------------------------------------ PIL's resampling

function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2), kk = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5); if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5); if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) { const w = filter.fn((x + xmin - center + 0.5) * ss); kk[xx * ksize + x] = w; ww += w; }
    for (let x = 0; x < xmax; x++) if (ww !== 0.0) kk[xx * ksize + x] /= ww;
    bounds[xx * 2] = xmin; bounds[xx * 2 + 1] = xmax;
  }
  const fixed = new Int32Array(kk.length); // normalize_coeffs_8bpc
  for (let i = 0; i < kk.length; i++) {
    const v = kk[i] * (1 << PRECISION_BITS);
    fixed[i] = v < 0 ? Math.trunc(-0.5 + v) : Math.trunc(0.5 + v);
  }
  return {bounds, fixed, ksize};
}

function clip8(ss) {
  if (ss >= 2 ** (PRECISION_BITS + 8)) return 255;
  if (ss <= 0) return 0;
  return Math.floor(ss / 2 ** PRECISION_BITS);
}

// RGB (3 bytes a pixel) w x h -> outW x h, then -> outW x outH: PIL's two passes, rounded to 8 bits in between.
function resampleRGB(src, w, h, outW, outH, filter) {
  let img = src, width = w;
  if (outW !== w) {
    const {bounds, fixed, ksize} = coefficients(w, outW, filter);
    const out = new Uint8ClampedArray(outW * h * 3);
    for (let y = 0; y < h; y++) {
      for (let xx = 0; xx < outW; xx++) {
        const xmin = bounds[xx * 2], xmax = bounds[xx * 2 + 1];
        let r = 1 << (PRECISION_BITS - 1), g = r, b = r;
        for (let x = 0; x < xmax; x++) {
          const k = fixed[xx * ksize + x], p = (y * w + x + xmin) * 3;
          r += img[p] * k; g += img[p + 1] * k; b += img[p + 2] * k;
        }
        const q = (y * outW + xx) * 3;
        out[q] = clip8(r); out[q + 1] = clip8(g); out[q + 2] = clip8(b);
      }
    }
    img = out; width = outW;
  }
  if (outH !== h) {
    const {bounds, fixed, ksize} = coefficients(h, outH, filter);
    const out = new Uint8ClampedArray(width * outH * 3);
    for (let yy = 0; yy < outH; yy++) {
      const ymin = bounds[yy * 2], ymax = bounds[yy * 2 + 1];
      for (let x = 0; x < width; x++) {
        let r = 1 << (PRECISION_BITS - 1), g = r, b = r;
        for (let y = 0; y < ymax; y++) {
          const k = fixed[yy * ksize + y], p = ((y + ymin) * width + x) * 3;
          r += img[p] * k; g += img[p + 1] * k; b += img[p + 2] * k;
        }
        const q = (yy * width + x) * 3;
        out[q] = clip8(r); out[q + 1] = clip8(g); out[q + 2] = clip8(b);
      }
    }
    img = out;
  }
  return img;
}

const roundHalfEven = (v) => { const f = Math.floor(v), d = v - f; return d > 0.5 ? f + 1 : d < 0.5 ? f : (f % 2 === 0 ? f : f + 1); };

// An image file's bytes -> the (1, 3, S, S) float32 tensor of core.images.preprocess, for `spec`.
async function preprocess(blob, spec) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none"});
  } catch (err) {
    throw new Error("This is not an image this browser can decode (or the file is damaged).");
  }
  const w = bitmap.width, h = bitmap.height;
  if (w * h > 40e6) throw new Error(`The image is ${w}x${h} pixels; the limit is 40 megapixels.`);
  const canvas = new OffscreenCanvas(w, h);
  const context = canvas.getContext("2d", {willReadFrequently: true});
  context.fillStyle = "#fff"; context.fillRect(0, 0, w, h); // transparency on white, as the server does
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, w, h).data;
  const rgb = new Uint8ClampedArray(w * h * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
  return tensorFromRGB(rgb, w, h, spec);
}

function tensorFromRGB(rgb, w, h, spec) {
  const short = Math.min(w, h), long = Math.max(w, h);
  const newShort = spec.resize_size, newLong = Math.trunc(newShort * long / short);
  const [rw, rh] = w <= h ? [newShort, newLong] : [newLong, newShort];
  const filter = FILTERS[spec.interpolation] || FILTERS.bicubic;
  const resized = (rw === w && rh === h) ? rgb : resampleRGB(rgb, w, h, rw, rh, filter);
  const crop = spec.input_size;
  const top = roundHalfEven((rh - crop) / 2.0), left = roundHalfEven((rw - crop) / 2.0);
  const out = new Float32Array(3 * crop * crop);
  const f = Math.fround, c255 = f(255);
  const mean = spec.mean.map(f), std = spec.std.map(f);
  for (let y = 0; y < crop; y++) {
    for (let x = 0; x < crop; x++) {
      const sy = y + top, sx = x + left;
      const inside = sy >= 0 && sy < rh && sx >= 0 && sx < rw; // PIL's crop pads outside with black
      for (let c = 0; c < 3; c++) {
        const v = inside ? resized[(sy * rw + sx) * 3 + c] : 0;
        out[c * crop * crop + y * crop + x] = f(f(f(v / c255) - mean[c]) / std[c]);
      }
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------------ running a format

function chosenBackend() { return document.getElementById("device-backend").value; }

async function ensureSession(model, key, backend, say, options = {}) {
  const id = `${model}/${key}/${backend}${Object.keys(options).length ? JSON.stringify(options) : ""}`;
  if (state.sessions.has(id)) return state.sessions.get(id);
  say(`Making sure the server has ${key} (made the first time anyone asks; checked against the original)…`);
  const format = await getJSON(`prepare/${model}/${key}`, {method: "POST"});
  if (format.status !== "ok") throw new Error(`${key} could not be made on the server: ${format.reason}`);
  const ort = await runtime(backend);
  const file = await download(format, (got, total) => say(`Downloading ${key}: ${mb(got)} of ${mb(total)}…`));
  say(`Starting ${key} on ${backend}…`);
  const t0 = performance.now();
  const session = await ort.InferenceSession.create(file.bytes, {
    executionProviders: [backend], graphOptimizationLevel: "all", ...options});
  const loadMs = performance.now() - t0;
  const spec = state.catalog.model;
  const x = new ort.Tensor("float32", noise(spec.input_size), [1, 3, spec.input_size, spec.input_size]);
  const t1 = performance.now();
  await session.run({[session.inputNames[0]]: x});
  const entry = {session, ort, format, backend, loadMs, downloadMs: file.ms, firstMs: performance.now() - t1,
                 verified: file.verified};
  state.sessions.set(id, entry);
  return entry;
}

function noise(size) { // a fixed pseudo-random input, the same on every device
  const out = new Float32Array(3 * size * size); let s = 12345;
  for (let i = 0; i < out.length; i++) { s = (s * 1103515245 + 12345) >>> 0; out[i] = (s / 2 ** 32) * 4 - 2; }
  return out;
}

async function runTensor(entry, data) {
  const size = state.catalog.model.input_size;
  const x = new entry.ort.Tensor("float32", data, [1, 3, size, size]);
  const t0 = performance.now();
  const out = await entry.session.run({[entry.session.inputNames[0]]: x});
  return {logits: Array.from(out[entry.session.outputNames[0]].data), ms: performance.now() - t0};
}

function top5(logits, labels) {
  const max = Math.max(...logits);
  const exps = logits.map((v) => Math.exp(v - max)); const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e, i) => ({label: labels[i] || `class ${i}`, index: i, p: e / sum}))
    .sort((a, b) => b.p - a.p).slice(0, 5);
}

// ---------------------------------------------------------------------------------------- Auto, and the benchmark

function timings() { try { return JSON.parse(localStorage.getItem("deit-device-timings") || "{}"); } catch { return {}; } }

function runsHere(f, backend) {
  return f.backends.includes(backend) && !(backend === "webgpu" && f.precision === "fp16" && !state.caps.webgpu.f16);
}

function autoFormat(backend) {
  const formats = state.catalog.formats.filter((f) => runsHere(f, backend) && !f.lossy && f.passed !== false);
  const mine = timings()[`${state.catalog.model.key}/${backend}`] || {};
  const timed = formats.filter((f) => mine[f.key]).sort((a, b) => mine[a.key] - mine[b.key]);
  if (timed.length) return {key: timed[0].key, why: "the fastest that passed its check, as timed on your device"};
  const order = state.catalog.preference.filter((k) => formats.some((f) => f.key === k));
  const key = order[0] || (formats[0] && formats[0].key);
  return {key, why: backend === "wasm" ? "the fastest in our WASM benchmark; time yours to choose from your own"
    : "the only format for this backend"};
}

function resolveFormat() {
  const picked = document.getElementById("device-format").value;
  return picked === "auto" ? autoFormat(chosenBackend()).key : picked;
}

// Warm-up, then interleaved blocks with the first call of each dropped: the server's method (measure.timing).
async function timeFormats(model, keys, backend, warmup, runs, block, options = {}, say = () => {}) {
  const entries = {};
  for (const key of keys) entries[key] = await ensureSession(model, key, backend, say, options);
  const x = noise(state.catalog.model.input_size), samples = Object.fromEntries(keys.map((k) => [k, []]));
  for (const key of keys) for (let i = 0; i < warmup; i++) await runTensor(entries[key], x);
  const kept = Math.max(1, block - 1);
  while (Math.min(...keys.map((k) => samples[k].length)) < runs) {
    for (const key of keys) {
      for (let i = 0; i < kept + (block > 1 ? 1 : 0); i++) {
        const {ms} = await runTensor(entries[key], x);
        if (block > 1 && i === 0) continue;
        if (samples[key].length < runs) samples[key].push(ms);
      }
      say(`Timing on your device: ${key} ${samples[key].length}/${runs}…`);
    }
  }
  return Object.fromEntries(keys.map((k) => [k, {samples_ms: samples[k], load_ms: entries[k].loadMs,
    first_ms: entries[k].firstMs, download_ms: entries[k].downloadMs, size_bytes: entries[k].format.size_bytes,
    threads: backend === "wasm" ? state.threads : 1}]));
}

async function benchmark() {
  const spec = state.catalog.model, backend = chosenBackend();
  const warmup = int("device-warmup", 3, 0), runs = int("device-runs", 10), block = int("device-block", 3);
  const keys = [...document.querySelectorAll("#device-bench-formats input:checked")].map((i) => i.value);
  if (!keys.length) keys.push(resolveFormat());
  const say = status();
  try {
    const timed = await timeFormats(spec.key, keys, backend, warmup, runs, block, {}, say);
    const stored = timings(), slot = `${spec.key}/${backend}`;
    stored[slot] = stored[slot] || {};
    for (const key of keys) stored[slot][key] = median(timed[key].samples_ms);
    localStorage.setItem("deit-device-timings", JSON.stringify(stored));
    state.lastRun = {model: spec.key, backend, threads: backend === "wasm" ? state.threads : 1,
      browser: state.caps.browser, formats: keys.map((k) => ({variant: k, ...timed[k]}))};
    say(`Timed on your device: ${keys.map((k) => `${k} ${median(timed[k].samples_ms).toFixed(1)} ms`).join(", ")}. ` +
        "Now timing the same files on this server…", "ok");
    refreshFormats();
    return JSON.stringify(state.lastRun);
  } catch (err) {
    say(err.message, "error");
    return "";
  }
}

const median = (v) => { const s = [...v].sort((a, b) => a - b), m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const mb = (bytes) => `${(bytes / 2 ** 20).toFixed(bytes < 10 * 2 ** 20 ? 1 : 0)} MB`;
function int(id, fallback, low = 1) { const v = Number(document.getElementById(id).value); return Number.isInteger(v) && v >= low ? v : fallback; }

// --------------------------------------------------------------------------------------------------------- the UI

function status() {
  const line = document.getElementById("device-status");
  return (text, kind = "") => { line.textContent = text; line.dataset.kind = kind; };
}

async function classify(file) {
  const say = status(), spec = state.catalog.model, backend = chosenBackend(), key = resolveFormat();
  const answer = document.getElementById("device-answer");
  answer.innerHTML = "";
  try {
    const format = state.catalog.formats.find((f) => f.key === key);
    if (format && format.size_bytes > state.catalog.ask_first_bytes && !state.sessions.has(`${spec.key}/${key}/${backend}`)
        && document.getElementById("device-classify").dataset.asked !== key) {
      document.getElementById("device-classify").dataset.asked = key;
      say(`${key} is ${mb(format.size_bytes)}: choose the image again to download it, or pick a smaller format.`, "ask");
      return;
    }
    const entry = await ensureSession(spec.key, key, backend, say);
    const tensor = await preprocess(file, spec);
    const {logits, ms} = await runTensor(entry, tensor);
    const rows = top5(logits, spec.labels);
    answer.innerHTML = rows.map((r) => `<div class="device-row"><span>${escapeHtml(r.label)}</span>` +
      `<meter min="0" max="1" value="${r.p}"></meter><b>${(100 * r.p).toFixed(1)}%</b></div>`).join("");
    const auto = document.getElementById("device-format").value === "auto" ? `Auto → ${key}` : key;
    const warn = entry.format.passed === false ? " This format failed its check on the server: its answers may differ from the original's." : "";
    say(`${auto} on ${describeBackend(backend)}: ${ms.toFixed(1)} ms on your device. The image stayed on your device.${warn}` +
        (spec.distilled ? " (Distilled model: the two heads averaged, as the exported model answers.)" : ""), "ok");
    return {top5: rows, ms, format: key};
  } catch (err) {
    say(err.message, "error");
    throw err;
  }
}

const escapeHtml = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));

function describeBackend(backend) {
  return backend === "wasm" ? `WASM (SIMD${state.caps.simd ? "" : " missing"}, ${state.threads} thread${state.threads > 1 ? "s" : ""})`
    : `WebGPU (${state.caps.webgpuNote})`;
}

function refreshFormats() {
  const select = document.getElementById("device-format"), backend = chosenBackend();
  const keep = select.value;
  const auto = autoFormat(backend);
  const options = [`<option value="auto">Auto → ${auto.key} (${auto.why})</option>`];
  const boxes = [];
  for (const f of state.catalog.formats.filter((f) => f.backends.includes(backend))) {
    const size = `${f.size_exact ? "" : "≈ "}${mb(f.size_bytes)}`;
    if (backend === "webgpu" && f.precision === "fp16" && !state.caps.webgpu.f16) {
      options.push(`<option value="${f.key}" disabled>${f.key}: needs WebGPU's shader-f16, which this adapter lacks</option>`);
      continue;
    }
    const check = f.passed === false ? ", failed its check" : f.lossy ? `, lossy: ToMe r=${f.r}` : "";
    options.push(`<option value="${f.key}">${f.key}: ${escapeHtml(f.title)}, ${size}${check}</option>`);
    boxes.push(`<label><input type="checkbox" value="${f.key}"${f.key === auto.key ? " checked" : ""}> ${f.key} (${size})</label>`);
  }
  select.innerHTML = options.join("");
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  const bench = document.getElementById("device-bench-formats"), ticked = [...bench.querySelectorAll("input:checked")].map((i) => i.value);
  bench.innerHTML = boxes.join("");
  if (ticked.length) bench.querySelectorAll("input").forEach((i) => { i.checked = ticked.includes(i.value); });
}

async function loadCatalog(model) {
  const say = status();
  say(`Reading ${model}'s browser formats…`);
  state.catalog = await getJSON(`catalog/${model}`);
  refreshFormats();
  const examples = document.getElementById("device-examples");
  examples.innerHTML = state.catalog.model.examples.length ? "or an example (from this server): " +
    state.catalog.model.examples.map((e, i) => `<button type="button" class="device-example" data-index="${i}">${escapeHtml(e.name)}</button>`).join(" ") : "";
  examples.querySelectorAll("button").forEach((button) => button.addEventListener("click", async () => {
    const e = state.catalog.model.examples[Number(button.dataset.index)];
    try {
      const response = await fetch(new URL(e.url, BASE));
      if (!response.ok) throw new Error(`The example could not be fetched (HTTP ${response.status}).`);
      await classify(await response.blob());
    } catch (err) { status()(err.message, "error"); }
  }));
  const rt = state.catalog.runtime;
  document.getElementById("device-runtime").textContent = rt.ready
    ? `ONNX Runtime Web ${rt.version} (${rt.source}).`
    : `ONNX Runtime Web ${rt.version} is not installed on this server yet; it is fetched from the npm registry on first ` +
      `use${rt.failure ? ` (last try: ${rt.failure})` : ""}. To install it yourself: \`${rt.setup}\`.`;
  say(state.catalog.banner ? state.catalog.banner : "Ready: choose an image to classify it on your device.");
}

function render(root) {
  const caps = state.caps;
  const threadsNote = caps.isolated ? `${state.threads} of ${caps.cores} cores`
    : caps.embedded ? "1 thread: this page is embedded in another page, which is not cross-origin isolated. " +
      "Open the app at its own address (on Hugging Face: the Space's *.hf.space URL) for one thread per core."
    : "1 thread: this page is not cross-origin isolated (the server did not send COOP/COEP headers).";
  root.innerHTML = `
  <div class="device-grid">
    <label>Model <select id="device-model"></select></label>
    <label>Backend <select id="device-backend"><option value="wasm">WASM (CPU)</option>${caps.webgpu
      ? `<option value="webgpu">WebGPU: ${escapeHtml(caps.webgpuNote)}</option>` : ""}</select></label>
    <label class="device-wide">Format <select id="device-format"></select></label>
  </div>
  <p id="device-caps">Your device: ${escapeHtml(caps.browser.name)} on ${escapeHtml(caps.browser.platform)}, ${caps.cores} cores;
    WASM SIMD ${caps.simd ? "yes" : "no"}; threads: ${escapeHtml(threadsNote)}; WebGPU: ${escapeHtml(caps.webgpuNote)}.</p>
  <p id="device-runtime"></p>
  <label class="device-file">Classify privately: <input type="file" id="device-classify" accept="image/*"></label>
  <div id="device-examples"></div>
  <p id="device-status" role="status" aria-live="polite"></p>
  <div id="device-answer"></div>
  <details id="device-bench-settings" open><summary>Benchmark on your device</summary>
    <div id="device-bench-formats"></div>
    <div class="device-grid">
      <label>Warm-up <input id="device-warmup" type="number" min="0" max="50" value="3"></label>
      <label>Timed runs <input id="device-runs" type="number" min="1" max="500" value="10"></label>
      <label>Block <input id="device-block" type="number" min="1" max="20" value="3"></label>
    </div>
  </details>`;
  const models = document.getElementById("device-model");
  models.innerHTML = state.models.models.map((m) => `<option value="${m.key}">${escapeHtml(m.label)} (${m.key})</option>`).join("");
  models.value = state.models.default;
  models.addEventListener("change", () => loadCatalog(models.value).catch((e) => status()(e.message, "error")));
  document.getElementById("device-backend").addEventListener("change", refreshFormats);
  document.getElementById("device-classify").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) classify(file).catch(() => {});
  });
}

async function mount(root) {
  root.dataset.mounted = "1";
  try {
    state.caps = await capabilities();
    const asked = Number(new URLSearchParams(location.search).get("threads")); // ?threads=N
    // ORT Web's own default would take half the cores; one per core is what a visitor's device can give
    state.threads = Number.isInteger(asked) && asked >= 1 ? Math.min(asked, state.caps.maxThreads) : state.caps.maxThreads;
    state.models = await getJSON("models");
    render(root);
    await loadCatalog(state.models.default);
    window.deitDevice.ready = true;
  } catch (err) {
    root.textContent = `The Your device tab could not start: ${err.message}`;
    window.deitDevice.ready = true;
  }
}

window.deitDevice = {ready: false, benchmark, timeFormats, classify, preprocess, tensorFromRGB, runTensor, ensureSession, state,
  lastRun: () => state.lastRun, describeBackend, loadCatalog};

const mountWhenThere = () => {
  const root = document.getElementById("device-root");
  if (root && !root.dataset.mounted) mount(root);
};
new MutationObserver(mountWhenThere).observe(document.documentElement, {childList: true, subtree: true});
mountWhenThere();
