// The tab's DOM, built with createElement and textContent: labels, titles and messages from the server or the
// visitor's file are text, never markup.

import {needsF16} from "./formats.js";
import {mb} from "./runtime.js";
import {threadsNote} from "./capabilities.js";

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

const $ = (id) => document.getElementById(id);

function number(id, label, min, max) {
  return el("label", {}, `${label} `, el("input", {id, type: "number", min, max}));
}

export function renderTab(root, caps, threads, models) {
  const backends = [el("option", {value: "wasm"}, "WASM (CPU)")];
  if (caps.webgpu) backends.push(el("option", {value: "webgpu"}, `WebGPU: ${caps.webgpuNote}`));
  const webgpu = caps.webgpu ? (caps.webgpu.software ? "software" : "hardware") : "none";
  root.replaceChildren(
    el("div", {className: "device-grid"},
       el("label", {}, "Model ", el("select", {id: "device-model"},
          ...models.models.map((m) => el("option", {value: m.key}, `${m.label} (${m.key})`)))),
       el("label", {}, "Backend ", el("select", {id: "device-backend"}, ...backends)),
       el("label", {className: "device-wide"}, "Format ", el("select", {id: "device-format"}))),
    el("p", {id: "device-caps", dataset: {webgpu, f16: caps.webgpu && caps.webgpu.f16 ? "yes" : "no"}},
       `Your device: ${caps.browser.name} on ${caps.browser.platform}, ${caps.cores} cores; WASM SIMD ` +
       `${caps.simd ? "yes" : "no"}; threads: ${threadsNote(caps, threads)}; WebGPU: ${caps.webgpuNote}.`),
    el("p", {id: "device-runtime"}),
    el("label", {className: "device-file"}, "Classify privately: ",
       el("input", {type: "file", id: "device-classify", accept: "image/*"})),
    el("div", {id: "device-examples"}),
    el("p", {id: "device-status", role: "status", "aria-live": "polite"}),
    el("div", {id: "device-answer"}),
    el("details", {id: "device-bench-settings", open: true}, el("summary", {}, "Benchmark on your device"),
       el("div", {id: "device-bench-formats"}),
       el("div", {className: "device-grid"}, number("device-warmup", "Warm-up", 0, 50),
          number("device-runs", "Timed runs", 1, 500), number("device-block", "Block", 1, 20))));
  $("device-model").value = models.default;
}

export function say(text, kind = "") {
  const line = $("device-status");
  line.textContent = text;
  line.dataset.kind = kind;
}

export function showAnswer(rows) {
  $("device-answer").replaceChildren(...rows.map((r) => el("div", {className: "device-row"},
    el("span", {}, r.label), el("meter", {min: 0, max: 1, value: r.p}), el("b", {}, `${(100 * r.p).toFixed(1)}%`))));
}

// The format list for `backend` (Auto first) and the benchmark's boxes; the visitor's choices are kept
export function showFormats(catalog, backend, caps, auto) {
  const select = $("device-format"), keep = select.value;
  const options = [el("option", {value: "auto"}, `Auto → ${auto.key} (${auto.why})`)], boxes = [];
  for (const f of catalog.formats.filter((f) => f.backends.includes(backend))) {
    const size = `${f.size_exact ? "" : "≈ "}${mb(f.size_bytes)}`;
    if (needsF16(f, backend) && !caps.webgpu.f16) {
      options.push(el("option", {value: f.key, disabled: true},
                      `${f.key}: needs WebGPU's shader-f16, which this adapter lacks`));
      continue;
    }
    const check = f.passed === false ? ", failed its check" : f.lossy ? `, lossy: ToMe r=${f.r}` : "";
    options.push(el("option", {value: f.key}, `${f.key}: ${f.title}, ${size}${check}`));
    boxes.push(el("label", {}, el("input", {type: "checkbox", value: f.key, checked: f.key === auto.key}),
                  ` ${f.key} (${size})`));
  }
  select.replaceChildren(...options);
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  const bench = $("device-bench-formats");
  const ticked = [...bench.querySelectorAll("input:checked")].map((i) => i.value);
  bench.replaceChildren(...boxes);
  if (ticked.length) bench.querySelectorAll("input").forEach((i) => { i.checked = ticked.includes(i.value); });
}

export function showExamples(catalog, onPick) {
  const examples = catalog.model.examples;
  const buttons = examples.map((e) => {
    const button = el("button", {type: "button", className: "device-example"}, e.name);
    button.addEventListener("click", () => onPick(e));
    return button;
  });
  $("device-examples").replaceChildren(...(buttons.length ? ["or an example (from this server): ", ...buttons] : []));
}

export function showRuntime(rt) {
  $("device-runtime").textContent = rt.ready ? `ONNX Runtime Web ${rt.version} (${rt.source}).`
    : `ONNX Runtime Web ${rt.version} is not installed on this server yet; it is fetched from the npm registry on ` +
      `first use${rt.failure ? ` (last try: ${rt.failure})` : ""}. To install it yourself: \`${rt.setup}\`.`;
}

// The benchmark's settings default to the server's timing method, until the visitor changes them
export function showTimingDefaults(spec) {
  const fields = {"device-warmup": spec.warmup, "device-runs": spec.runs, "device-block": spec.block};
  for (const [id, value] of Object.entries(fields)) if ($(id).value === "") $(id).value = String(value);
}

export function readTiming(spec) {
  const read = (id, fallback, low) => {
    const v = Number($(id).value);
    return Number.isInteger(v) && v >= low ? v : fallback;
  };
  return {warmup: read("device-warmup", spec.warmup, 0), runs: read("device-runs", spec.runs, 1),
          block: read("device-block", spec.block, 1)};
}

export function tickedFormats() {
  return [...document.querySelectorAll("#device-bench-formats input:checked")].map((i) => i.value);
}
