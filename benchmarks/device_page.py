"""Drives the Your device tab in headless Chromium (Debian's /usr/bin/chromium, never a downloaded browser): open the
tab, run a format on given tensors or image files in the page, time it. Shared by benchmarks/browser.py and the tests.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import threading

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@contextlib.contextmanager
def device_page(playwright, url: str, *, threads: int | None = None, viewport=(1280, 900), args=()):
    """A page on the Your device tab, mounted and ready (`?threads=N` pins ONNX Runtime Web's thread count)."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS + list(args))
    try:
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        page = context.new_page()
        page.goto(url.rstrip("/") + "/" + (f"?threads={threads}" if threads else ""))
        page.get_by_role("tab", name="Classify").wait_for(timeout=30_000)
        if page.get_by_role("tab", name="Your device").count():
            page.get_by_role("tab", name="Your device").click()
        else:  # on a phone Gradio folds the tabs that do not fit into a "More tabs" menu
            page.get_by_role("button", name="More tabs").click()
            page.locator("button:visible", has_text="Your device").last.click()
        page.locator("#device-root[data-ready]").wait_for(state="attached", timeout=60_000)
        yield page
    finally:
        browser.close()


def png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# The page's own modules, imported by URL from the page (the same instances its tab runs): nothing on `window`
MODULES = """const web = (name) => import(new URL(`gradio_api/deit-web/${name}.js`, document.baseURI).href);
  const [runtime, image, timing] = await Promise.all([web("runtime"), web("image"), web("timing")]);
  const catalog = await runtime.getJSON(`catalog/${model}`);"""


def _in_page(params: str, body: str) -> str:
    """A function for page.evaluate that imports the page's modules and reads `model`'s catalog, then runs `body`."""
    return f"async ([{params}]) => {{\n  {MODULES}\n{body}\n}}"


RUN_FILES = _in_page("model, key, backend, files",
                     """  const entry = await runtime.ensureSession(catalog, key, backend);
  const out = [];
  for (const b64 of files) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const tensor = await image.imageTensor(new Blob([bytes]), catalog.model);
    out.push((await runtime.runTensor(entry, tensor)).logits);
  }
  return out;""")

RUN_TENSORS = _in_page("model, key, backend, tensors",
                       """  const entry = await runtime.ensureSession(catalog, key, backend);
  const out = [];
  for (const t of tensors) out.push((await runtime.runTensor(entry, Float32Array.from(t))).logits);
  return out;""")

PREPROCESS = _in_page("model, b64", """  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return Array.from(await image.imageTensor(new Blob([bytes]), catalog.model));""")

TIME = _in_page("model, keys, backend, warmup, runs, block, options", """  return await timing.timeFormats(
    catalog, keys, backend, {warmup, runs, block}, {options});""")


def logits_for_files(page, model: str, key: str, files_b64: list[str], backend: str = "wasm") -> list[list[float]]:
    return page.evaluate(RUN_FILES, [model, key, backend, files_b64])


def logits_for_tensors(page, model: str, key: str, tensors: list[list[float]], backend: str = "wasm"):
    return page.evaluate(RUN_TENSORS, [model, key, backend, tensors])


def preprocess_in_page(page, model: str, file_b64: str) -> list[float]:
    return page.evaluate(PREPROCESS, [model, file_b64])


def time_in_page(page, model: str, keys: list[str], *, backend: str = "wasm", warmup: int = 3, runs: int = 10,
                 block: int = 3, options: dict | None = None) -> dict:
    """{key: {samples_ms, load_ms, first_ms, ...}} timed in the page the way the tab's benchmark times."""
    return page.evaluate(TIME, [model, keys, backend, warmup, runs, block, options or {}])


@contextlib.contextmanager
def serve_bytes(data: bytes):
    """`data` at every path of a loopback server (yields its base URL), with the CORS header a cross-origin-isolated
    page needs to fetch it: a stand-in npm registry, or a file the page loads."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
