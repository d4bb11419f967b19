// The Your device tab: DeiT in the visitor's browser with ONNX Runtime Web. Loaded as a module by the page's head;
// Gradio's benchmark event imports it again by the same URL (one instance) and calls benchmark(). The image is
// decoded and preprocessed here exactly as the server does, and classified here: no image byte is sent anywhere.

import {capabilities, describeBackend, threadsFor} from "./capabilities.js";
import {autoFormat, rememberTimings} from "./formats.js";
import {imageTensor} from "./image.js";
import {BASE, ensureSession, getJSON, hasSession, mb, runTensor, setThreads, top5} from "./runtime.js";
import {median, timeFormats, warmCall} from "./timing.js";
import * as view from "./view.js";

const state = {caps: null, threads: 1, catalog: null, current: Promise.resolve(null), catalogToken: 0,
               classifyToken: 0};
const $ = (id) => document.getElementById(id);
const backend = () => $("device-backend").value;

function resolveFormat(catalog) {
  const picked = $("device-format").value;
  return picked === "auto" ? autoFormat(catalog, backend(), state.caps).key : picked;
}

function refreshFormats() {
  if (!state.catalog) return;
  view.showFormats(state.catalog, backend(), state.caps, autoFormat(state.catalog, backend(), state.caps));
}

// Answers come back in any order: only the latest pick's catalog is shown (null for a superseded or failed one)
async function loadCatalog(model, token) {
  view.say(`Reading ${model}'s browser formats…`);
  let catalog;
  try {
    catalog = await getJSON(`catalog/${model}`);
  } catch (err) {
    if (token === state.catalogToken) view.say(`${model}'s formats could not be read: ${err.message}`, "error");
    return null;
  }
  if (token !== state.catalogToken) return null;
  state.catalog = catalog;
  refreshFormats();
  view.showExamples(catalog, classifyExample);
  view.showRuntime(catalog.runtime);
  view.showTimingDefaults(catalog.timing);
  view.say(catalog.banner ? catalog.banner : "Ready: choose an image to classify it on your device.");
  return catalog;
}

function pickModel(model) {
  state.current = loadCatalog(model, ++state.catalogToken);
  return state.current;
}

async function classifyExample(example) {
  try {
    const response = await fetch(new URL(example.url, BASE));
    if (!response.ok) throw new Error(`The example could not be fetched (HTTP ${response.status}).`);
    await classify(await response.blob());
  } catch (err) {
    view.say(err.message, "error");
  }
}

// A big file is downloaded only once the visitor has chosen the image a second time
function askFirst(catalog, key) {
  const format = catalog.formats.find((f) => f.key === key);
  const input = $("device-classify");
  if (!format || format.size_bytes <= catalog.ask_first_bytes || hasSession(catalog.model.key, key, backend())
      || input.dataset.asked === key) return false;
  input.dataset.asked = key;
  view.say(`${key} is ${mb(format.size_bytes)}: choose the image again to download it, or pick a smaller format.`,
           "ask");
  return true;
}

async function classify(file) {
  const token = ++state.classifyToken;
  const catalog = await state.current;
  if (!catalog) return;
  const spec = catalog.model, where = backend(), key = resolveFormat(catalog);
  const current = () => token === state.classifyToken && catalog === state.catalog;
  view.showAnswer([]);
  try {
    if (askFirst(catalog, key)) return;
    const entry = await ensureSession(catalog, key, where, (text) => current() && view.say(text));
    const tensor = await imageTensor(file, spec);
    const answer = await runTensor(entry, tensor);
    if (!current()) return;
    view.showAnswer(top5(answer.logits, spec.labels));
    let ms = answer.ms, timed = "warm";
    if (!entry.warm) { // the first calls of a new session pay for compiling and allocating: not the device's speed
      view.say("Answered; timing a warm call on your device…");
      ms = (await warmCall(() => runTensor(entry, tensor), catalog.timing)).ms;
      entry.warm = true;
      timed = `warm; the first call took ${entry.firstMs.toFixed(1)} ms: it includes warm-up`;
      if (!current()) return;
    }
    const auto = $("device-format").value === "auto" ? `Auto → ${key}` : key;
    const warn = entry.format.passed === false
      ? " This format failed its check on the server: its answers may differ from the original's." : "";
    const heads = spec.distilled ? " (Distilled model: the two heads averaged, as the exported model answers.)" : "";
    view.say(`${auto} on ${describeBackend(state.caps, where, entry.threads)}: ${ms.toFixed(1)} ms on your device ` +
             `(${timed}). The image stayed on your device.${warn}${heads}`, "ok");
  } catch (err) {
    if (current()) view.say(err.message, "error");
  }
}

// Called by the Gradio event (app/device.py BENCH_JS): your device's timings as JSON for the server, or "".
export async function benchmark() {
  const catalog = await state.current;
  if (!catalog) return "";
  const spec = catalog.model, where = backend(), timing = view.readTiming(catalog.timing);
  const keys = view.tickedFormats();
  if (!keys.length) keys.push(resolveFormat(catalog));
  try {
    const timed = await timeFormats(catalog, keys, where, timing, {say: view.say});
    rememberTimings(spec.key, where, Object.fromEntries(keys.map((k) => [k, median(timed[k].samples_ms)])));
    const run = {model: spec.key, backend: where, threads: timed[keys[0]].threads, browser: state.caps.browser,
                 formats: keys.map((k) => ({variant: k, ...timed[k]}))};
    view.say(`Timed on your device: ${keys.map((k) => `${k} ${median(timed[k].samples_ms).toFixed(1)} ms`)
      .join(", ")}. Now timing the same files on this server…`, "ok");
    refreshFormats();
    return JSON.stringify(run);
  } catch (err) {
    view.say(err.message, "error");
    return "";
  }
}

async function mount(root) {
  root.dataset.mounted = "1";
  try {
    state.caps = await capabilities();
    state.threads = threadsFor(state.caps, location.search);
    setThreads(state.threads);
    const models = await getJSON("models");
    view.renderTab(root, state.caps, state.threads, models);
    $("device-model").addEventListener("change", () => pickModel($("device-model").value));
    $("device-backend").addEventListener("change", refreshFormats);
    $("device-classify").addEventListener("change", (event) => {
      if (event.target.files[0]) classify(event.target.files[0]);
    });
    await pickModel(models.default);
  } catch (err) {
    root.textContent = `The Your device tab could not start: ${err.message}`;
  }
  root.dataset.ready = "1"; // tests and benchmarks wait for this
}

const mountWhenThere = () => {
  const root = document.getElementById("device-root");
  if (root && !root.dataset.mounted) mount(root);
};
new MutationObserver(mountWhenThere).observe(document.documentElement, {childList: true, subtree: true});
mountWhenThere();
