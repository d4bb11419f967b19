// Which browser format Auto runs here: the fastest that passed its check as timed on this device (kept in the
// browser's storage), else the server's order of preference. Lossy formats are offered, never chosen.

const STORE = "deit-device-timings";

function stored() {
  try {
    return JSON.parse(localStorage.getItem(STORE) || "{}");
  } catch {
    return {};
  }
}

// medians: {format key: ms} timed on this device for `model` on `backend`
export function rememberTimings(model, backend, medians) {
  const all = stored(), slot = `${model}/${backend}`;
  all[slot] = {...(all[slot] || {}), ...medians};
  try {
    localStorage.setItem(STORE, JSON.stringify(all));
  } catch { /* private browsing: Auto falls back to the server's order */ }
}

export function needsF16(format, backend) { return backend === "webgpu" && format.precision === "fp16"; }

export function runsHere(format, backend, caps) {
  return format.backends.includes(backend) && !(needsF16(format, backend) && !caps.webgpu.f16);
}

export function autoFormat(catalog, backend, caps) {
  const formats = catalog.formats.filter((f) => runsHere(f, backend, caps) && !f.lossy && f.passed !== false);
  const mine = stored()[`${catalog.model.key}/${backend}`] || {};
  const timed = formats.filter((f) => mine[f.key]).sort((a, b) => mine[a.key] - mine[b.key]);
  if (timed.length) return {key: timed[0].key, why: "the fastest that passed its check, as timed on your device"};
  const order = catalog.preference.filter((k) => formats.some((f) => f.key === k));
  const key = order[0] || (formats[0] && formats[0].key);
  return {key, why: backend === "wasm" ? "the fastest in our WASM benchmark; time yours to choose from your own"
    : "the only format for this backend"};
}
