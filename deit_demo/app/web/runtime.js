// ONNX Runtime Web and the sessions it runs: the runtime loaded from this server, a model file downloaded by its
// sha256 and checked against it, and one session per (model, format, backend). A session carries its model's
// spec, so a tensor made for one model is never run through another's session.

import {noise} from "./preprocess.js";

export const BASE = new URL("./", import.meta.url); // the server's routes for this page live beside its modules
const runtimes = {};
const sessions = new Map();
const settings = {threads: 1};
// This tab's own id: the server's job door caps how many files one visitor may have queued
const VISITOR = (crypto.randomUUID && crypto.randomUUID()) || `${Date.now()}-${Math.random()}`.slice(0, 36);

export async function getJSON(path, options) {
  const response = await fetch(new URL(path, BASE), options);
  const body = await response.json().catch(() => ({error: `The server answered HTTP ${response.status}.`}));
  if (!response.ok) throw new Error(body.error || `The server answered HTTP ${response.status}.`);
  return body;
}

// WASM's thread count, fixed when ONNX Runtime Web loads: set once, before the first session
export function setThreads(threads) { settings.threads = threads; }
export function threadsOf(backend) { return backend === "wasm" ? settings.threads : 1; }

export async function loadRuntime(backend) {
  if (runtimes[backend]) return runtimes[backend];
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
  ort.env.wasm.numThreads = settings.threads;
  runtimes[backend] = ort;
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
    if (received + value.length > bytes.length) {
      const grown = new Uint8Array((received + value.length) * 2);
      grown.set(bytes.subarray(0, received));
      bytes = grown;
    }
    bytes.set(value, received);
    received += value.length;
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

export const mb = (bytes) => `${(bytes / 2 ** 20).toFixed(bytes < 10 * 2 ** 20 ? 1 : 0)} MB`;

// A runtime's own error ("failed to call OrtRun(). ERROR_CODE: 2") inside a sentence that says what failed
function failed(what, err) {
  const detail = String((err && err.message) || err).slice(0, 200);
  return new Error(`${what} failed on your device. Reload the page to try again, or pick another format ` +
    `(ONNX Runtime Web said: ${detail}).`);
}

function sessionId(model, key, backend, options) {
  return `${model}/${key}/${backend}${Object.keys(options).length ? JSON.stringify(options) : ""}`;
}

export function hasSession(model, key, backend, options = {}) {
  return sessions.has(sessionId(model, key, backend, options));
}

async function createSession(catalog, key, backend, say, options) {
  const spec = catalog.model;
  say(`Making sure the server has ${key} (made the first time anyone asks; checked against the original)…`);
  const format = await getJSON(`prepare/${spec.key}/${key}`, {method: "POST", headers: {"x-deit-visitor": VISITOR}});
  if (format.status !== "ok") throw new Error(`${key} could not be made on the server: ${format.reason}`);
  const ort = await loadRuntime(backend);
  const file = await download(format, (got, total) => say(`Downloading ${key}: ${mb(got)} of ${mb(total)}…`));
  say(`Starting ${key} on ${backend}…`);
  const entry = {ort, format, backend, spec, model: spec.key, warm: false, downloadMs: file.ms,
                 verified: file.verified, threads: threadsOf(backend)};
  const t0 = performance.now();
  try {
    entry.session = await ort.InferenceSession.create(file.bytes, {
      executionProviders: [backend], graphOptimizationLevel: "all", ...options});
  } catch (err) {
    throw failed(`Starting ${key} of ${spec.label} on ${backend}`, err);
  }
  entry.loadMs = performance.now() - t0;
  entry.firstMs = (await runTensor(entry, noise(spec.input_size))).ms; // the cold call: compiles and allocates
  return entry;
}

// The session of `key` for `catalog`'s model on `backend`, made once (callers asking at once share one)
export async function ensureSession(catalog, key, backend, say = () => {}, options = {}) {
  const id = sessionId(catalog.model.key, key, backend, options);
  if (!sessions.has(id)) {
    const made = createSession(catalog, key, backend, say, options);
    sessions.set(id, made);
    made.catch(() => sessions.delete(id)); // a failure is not remembered: the next try starts again
  }
  return sessions.get(id);
}

// One forward pass: the logits and its wall time
export async function runTensor(entry, data) {
  const size = entry.spec.input_size;
  if (data.length !== 3 * size * size) {
    throw new Error(`This image was prepared for another model than ${entry.spec.label}: choose it again.`);
  }
  const x = new entry.ort.Tensor("float32", data, [1, 3, size, size]);
  const t0 = performance.now();
  let out;
  try {
    out = await entry.session.run({[entry.session.inputNames[0]]: x});
  } catch (err) {
    throw failed(`Running ${entry.format.key} of ${entry.spec.label}`, err);
  }
  return {logits: Array.from(out[entry.session.outputNames[0]].data), ms: performance.now() - t0};
}

export function top5(logits, labels) {
  const max = Math.max(...logits);
  const exps = logits.map((v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e, i) => ({label: labels[i] || `class ${i}`, index: i, p: e / sum}))
    .sort((a, b) => b.p - a.p).slice(0, 5);
}
