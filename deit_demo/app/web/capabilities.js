// What the visitor's device offers ONNX Runtime Web: WASM SIMD, threads (only where the page is cross-origin
// isolated), WebGPU and its adapter, and which browser this is (sent back with the device's timings).

const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8,
  0, 65, 0, 253, 15, 253, 98, 11]);
const MAX_THREADS = 16;

async function webgpu() {
  if (!navigator.gpu) return {webgpu: null, webgpuNote: "not in this browser"};
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return {webgpu: null, webgpuNote: "this browser exposes WebGPU but found no adapter"};
    const info = adapter.info || {};
    const software = Boolean(adapter.isFallbackAdapter || info.isFallbackAdapter
      || /swiftshader/i.test(info.architecture || ""));
    return {webgpu: {vendor: info.vendor || "", architecture: info.architecture || "", software,
                     f16: adapter.features.has("shader-f16")},
            webgpuNote: software ? "a software adapter (slower than WASM here)"
              : `${info.vendor} ${info.architecture}`.trim()};
  } catch (err) {
    return {webgpu: null, webgpuNote: `WebGPU failed: ${err.message}`};
  }
}

function browserName() {
  const ua = navigator.userAgentData;
  if (ua && ua.brands) {
    const brands = ua.brands.filter((b) => !/Not/.test(b.brand)).map((b) => `${b.brand} ${b.version}`);
    return brands.join(", ") || "browser";
  }
  return (navigator.userAgent.match(/(Firefox|Chrome|Safari|Edg)\/[\d.]+/) || ["browser"])[0];
}

export async function capabilities() {
  const ua = navigator.userAgentData;
  const caps = {isolated: self.crossOriginIsolated === true, cores: navigator.hardwareConcurrency || 1,
                simd: WebAssembly.validate(SIMD_PROBE), embedded: window.self !== window.top, ...await webgpu()};
  caps.maxThreads = caps.isolated ? Math.min(caps.cores, MAX_THREADS) : 1;
  caps.browser = {name: browserName(), platform: (ua && ua.platform) || navigator.platform || "?",
                  userAgent: navigator.userAgent, cores: caps.cores, isolated: caps.isolated,
                  mobile: Boolean(ua && ua.mobile)};
  return caps;
}

// ONNX Runtime Web's own default would take half the cores; one per core is what a visitor's device can give.
// `?threads=N` in the page's address pins it (benchmarks do).
export function threadsFor(caps, search) {
  const asked = Number(new URLSearchParams(search).get("threads"));
  return Number.isInteger(asked) && asked >= 1 ? Math.min(asked, caps.maxThreads) : caps.maxThreads;
}

export function threadsNote(caps, threads) {
  if (caps.isolated) return `${threads} of ${caps.cores} cores`;
  if (caps.embedded) {
    return "1 thread: this page is embedded in another page, which is not cross-origin isolated. Open the app at " +
      "its own address (on Hugging Face: the Space's *.hf.space URL) for one thread per core.";
  }
  return "1 thread: this page is not cross-origin isolated (the server did not send COOP/COEP headers).";
}

export function describeBackend(caps, backend, threads) {
  if (backend !== "wasm") return `WebGPU (${caps.webgpuNote})`;
  return `WASM (SIMD${caps.simd ? "" : " missing"}, ${threads} thread${threads > 1 ? "s" : ""})`;
}
