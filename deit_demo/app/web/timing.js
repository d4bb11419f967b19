// How the page times: the server's method (deit_demo/measure/timing.py, time_interleaved) with the numbers the
// server sends in each catalog (`timing`: runs, warmup, block). Each runner is warmed up, then all are timed in
// interleaved blocks of `block` consecutive calls, the first call of each block dropped: switching runtime on every
// call makes their thread pools fight, and the first call after a switch pays for it. No DOM: Node tests the loop.

import {noise} from "./preprocess.js";
import {ensureSession, runTensor} from "./runtime.js";

export function median(values) {
  const s = [...values].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

// {name: async () => ms of one call} -> {name: [ms, ...]}, `spec.runs` samples each
export async function timeInterleaved(runners, spec, onBlock = () => {}) {
  const names = Object.keys(runners);
  const samples = Object.fromEntries(names.map((name) => [name, []]));
  for (const name of names) for (let i = 0; i < spec.warmup; i++) await runners[name]();
  const calls = Math.max(1, spec.block - 1) + (spec.block > 1 ? 1 : 0);
  while (Math.min(...names.map((name) => samples[name].length)) < spec.runs) {
    for (const name of names) {
      for (let i = 0; i < calls; i++) {
        const ms = await runners[name]();
        if (spec.block > 1 && i === 0) continue;
        if (samples[name].length < spec.runs) samples[name].push(ms);
      }
      onBlock(name, samples[name].length, spec.runs);
    }
  }
  return samples;
}

// One call after the spec's warm-up: what an answer reports as the device's speed, never the cold first call
export async function warmCall(run, spec) {
  for (let i = 0; i < spec.warmup; i++) await run();
  return run();
}

// Each format of `catalog`'s model on `backend`, timed on the same fixed input, as the tab's benchmark times them
export async function timeFormats(catalog, keys, backend, spec, {options = {}, say = () => {}} = {}) {
  const entries = {};
  for (const key of keys) entries[key] = await ensureSession(catalog, key, backend, say, options);
  const x = noise(catalog.model.input_size);
  const runners = Object.fromEntries(keys.map((key) => [key, async () => (await runTensor(entries[key], x)).ms]));
  const samples = await timeInterleaved(runners, spec,
    (key, done, total) => say(`Timing on your device: ${key} ${done}/${total}…`));
  return Object.fromEntries(keys.map((key) => {
    const entry = entries[key];
    entry.warm = true;
    return [key, {samples_ms: samples[key], load_ms: entry.loadMs, first_ms: entry.firstMs,
                  download_ms: entry.downloadMs, size_bytes: entry.format.size_bytes, threads: entry.threads}];
  }));
}
