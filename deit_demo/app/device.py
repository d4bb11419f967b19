"""The Your device tab: the HTTP side of running DeiT in the visitor's browser, and the tab that shows it.

- `CrossOriginIsolation`: COOP/COEP on every response, so the page may use SharedArrayBuffer (WASM threads).
  `credentialless` rather than `require-corp`: cross-origin images without CORP headers still load.
- `routes(lab)`: the page's ES modules (web/), ONNX Runtime Web's files and the model files (strong ETags, cached for
  a year under URLs that name their version or sha256), the formats of a model with their sizes, and "make this
  format". All under `PREFIX`, inside /gradio_api: with SSR on, Gradio's Node proxy forwards only its own prefixes to
  Python (tests/test_device.py runs its routing function over every route).
- `build_device_tab(lab)`: the page's own UI is drawn by web/ui.js (the image never leaves the page); the benchmark's
  timings come back through one Gradio event, which times this server on the same files and draws both.

No `from __future__ import annotations` here: Gradio reads the `gr.Request` annotation to pass the visitor's session.
"""

import logging
from pathlib import Path

import gradio as gr
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from deit_demo.app.events import partial, session_of
from deit_demo.app.handlers import boundary
from deit_demo.present import charts
from deit_demo.service import MODELS, Busy, DeitDemoError, Lab, get_spec
from deit_demo.service.device import as_dict, device_table

PREFIX = "/gradio_api/deit-web"
WEB = Path(__file__).with_name("web")  # the page's ES modules, served by name
ENTRY_URL = f"{PREFIX.lstrip('/')}/ui.js"  # what the page's head loads (relative to the page); it imports the rest
YEAR = "public, max-age=31536000, immutable"
ISOLATION = [(b"cross-origin-opener-policy", b"same-origin"),
             (b"cross-origin-embedder-policy", b"credentialless")]
log = logging.getLogger(__name__)


class CrossOriginIsolation:
    """ASGI middleware: adds COOP/COEP to every HTTP response (Gradio's pages, assets and API alike)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in ISOLATION if h[0] not in names]
            await send(message)

        return await self.app(scope, receive, with_headers)


def _error(err: Exception, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": str(err)}, status_code=status, headers={"Cache-Control": "no-store"})


def _file(request: Request, path: Path, etag: str, cache: str, media_type: str) -> Response:
    """`path` with a strong ETag; 304 when the browser already holds these bytes."""
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache})
    return FileResponse(path, media_type=media_type, headers={"ETag": etag, "Cache-Control": cache})


def visitor_of(request: Request) -> str:
    """Who asks, for the door's share per visitor: the page's own id for this tab (a header it sends), else the
    client's address. Anyone can send another id; the door's queue length bounds what that buys."""
    page = request.headers.get("x-deit-visitor", "")[:64]
    return f"page:{page}" if page else f"host:{request.client.host if request.client else '?'}"


def routes(lab: Lab) -> list[Route]:
    modules = {p.name: p for p in WEB.glob("*.js")}  # served by name from this set only: no path reaches further

    def page_module(request: Request) -> Response:
        path = modules.get(f"{request.path_params['name']}.js")
        if path is None:
            return _error(DeitDemoError("No such module."), 404)
        return send(request, path, lab.device.etag(path), "no-cache")  # revalidated: it changes with the app

    def send(request: Request, path: Path, etag: str, cache: str) -> Response:
        return _file(request, path, etag, cache, lab.device.content_type(path))

    def runtime_status(request: Request) -> Response:
        return JSONResponse(lab.device.runtime_status(), headers={"Cache-Control": "no-store"})

    def runtime_file(request: Request) -> Response:
        try:
            path = lab.device.runtime_file(request.path_params["version"], request.path_params["name"])
        except DeitDemoError as err:
            return _error(err, 503 if "not installed" in str(err) else 404)
        return send(request, path, lab.device.etag(path), YEAR)

    def models(request: Request) -> Response:
        return JSONResponse({"default": lab.config.model,
                             "models": [{"key": s.key, "label": s.label, "params": s.params} for s in MODELS.values()]})

    def catalog(request: Request) -> Response:
        try:
            return JSONResponse(lab.device.catalog(request.path_params["model"]),
                                headers={"Cache-Control": "no-store"})
        except DeitDemoError as err:
            return _error(err)

    def prepare(request: Request) -> Response:
        try:
            made = lab.device.prepare(request.path_params["model"], request.path_params["variant"],
                                   visitor=visitor_of(request))
        except Busy as err:  # the door's queue, or this visitor's share of it, is full: refused at once
            return _error(err, 429)
        except DeitDemoError as err:
            return _error(err)
        except Exception as err:  # the server keeps serving; the page says what happened
            log.exception("preparing a browser format failed")
            return _error(DeitDemoError(f"Making this format failed on the server ({type(err).__name__})."), 500)
        return JSONResponse(as_dict(made), headers={"Cache-Control": "no-store"})

    def model_file(request: Request) -> Response:
        p = request.path_params
        try:
            path = lab.device.file(p["model"], p["variant"], p["sha256"])
        except DeitDemoError as err:
            return _error(err, 404)
        return send(request, path, f'"{p["sha256"]}"', YEAR)  # the store verified these bytes against the sha256

    def example(request: Request) -> Response:
        try:
            paths = get_spec(request.path_params["model"]).example_paths()
            path = paths[int(request.path_params["index"])]
        except (DeitDemoError, IndexError, ValueError):
            return _error(DeitDemoError("No such example."), 404)
        return send(request, path, lab.device.etag(path), "public, max-age=3600")

    return [Route(PREFIX + "/{name}.js", page_module),
            Route(PREFIX + "/example/{model}/{index}", example),
            Route(f"{PREFIX}/runtime", runtime_status),
            Route(PREFIX + "/ort/{version}/{name}", runtime_file),
            Route(f"{PREFIX}/models", models),
            Route(PREFIX + "/catalog/{model}", catalog),
            Route(PREFIX + "/prepare/{model}/{variant}", prepare, methods=["POST"]),
            Route(PREFIX + "/model/{model}/{variant}/{sha256:str}.onnx", model_file)]


# ------------------------------------------------------------------------------------------------------------ the tab

DEVICE_HTML = """<div id="device-root" class="device-root">Loading the Your device tab… (it needs JavaScript)</div>"""
DEVICE_CSS = """
.device-root { font-size: 0.95rem; }
.device-grid { display: flex; flex-wrap: wrap; gap: 0.5rem 1rem; align-items: end; }
.device-grid label, .device-file { display: flex; flex-direction: column; gap: 0.2rem; min-width: 0; max-width: 100%; }
.device-grid .device-wide { flex: 1 1 18rem; }
.device-root select, .device-root input[type=number] { max-width: 100%; padding: 0.25rem; border: 1px solid #ccc;
  border-radius: 4px; background: transparent; color: inherit; }
.device-root input[type=number] { width: 6rem; }
#device-status[data-kind=error] { color: #c0392b; font-weight: 600; }
#device-status[data-kind=ask] { color: #b9770e; font-weight: 600; }
#device-answer .device-row { display: grid; grid-template-columns: minmax(0, 1fr) 6rem 4rem; gap: 0.5rem;
  align-items: center; }
#device-answer meter { width: 100%; }
.device-example { margin: 0.15rem; padding: 0.1rem 0.5rem; border: 1px solid #ccc; border-radius: 4px; }
#device-bench-formats { display: flex; flex-wrap: wrap; gap: 0.25rem 1rem; margin: 0.5rem 0; }
"""
# The page's module, imported again by the URL the head loaded it from: one instance, nothing on `window`
BENCH_JS = (f"async () => {{ const ui = await import(new URL('{ENTRY_URL}', document.baseURI).href); "
            "return [await ui.benchmark()]; }")


@boundary("timing this server beside your device")
def device_benchmark(lab: Lab, result_json, request: gr.Request = None):
    """Your device's timings (sent by the page) beside this server's for the same model and files."""
    run, server = lab.device_benchmark(result_json, visitor=session_of(request))
    files = lab.save_device(run, server, lab.session_dir(session_of(request)))
    return charts.device_chart(run.rows, server), device_table(run, server), [str(f) for f in files]


def build_device_tab(lab: Lab) -> None:
    gr.Markdown("Run DeiT **in your own browser** with ONNX Runtime Web: your image is classified on your device and "
                "never sent to this server. Then time it here and on this server, side by side.")
    gr.HTML(DEVICE_HTML, elem_id="device-html")
    result = gr.Textbox(visible=False, elem_id="device-result")
    run = gr.Button("Benchmark on your device, then on this server", variant="primary", elem_id="device-bench")
    chart = gr.Plot(label="Your device against this server", elem_id="device-chart")
    table = gr.Markdown(elem_id="device-table")
    files = gr.File(label="Results (JSON, for compare and the Decide tab)", file_count="multiple",
                    elem_id="device-files")
    run.click(partial(device_benchmark, lab), [result], [chart, table, files], js=BENCH_JS,
              api_name="device_benchmark", concurrency_id="heavy", concurrency_limit=1, time_limit=1800)
