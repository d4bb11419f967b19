"""The Your device tab: DeiT in a real browser (Debian's Chromium, Playwright, offline) with ONNX Runtime Web from
web/node_modules, against the server's own preprocessing, ONNX Runtime and answers."""

import base64
import hashlib
import http.server
import importlib.util
import io
import json
import re
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from deit_demo.app import device as device_routes
from deit_demo.core.errors import DeitDemoError
from deit_demo.core.images import load_image, preprocess
from deit_demo.core.models import MODELS
from deit_demo.measure.bench import BenchSettings
from deit_demo.serve.browser import RUNTIME_FILES, WEB, Runtime, integrity_matches
from deit_demo.service.device import browser_keys, parse_device_run
from deit_demo.train import synth
from deit_demo.variants.onnx import ort_runner

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("device_page", ROOT / "benchmarks" / "device_page.py")
device_page = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(device_page)
DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
SYNTH = MODELS["deit_synth"]


# ------------------------------------------------------------------------------------------- without a browser


def _tarball(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in RUNTIME_FILES:
            archive.add(DIST / name, arcname=f"package/dist/{name}")
    return buffer.getvalue()


@pytest.fixture
def registry(tmp_path):
    """A loopback npm registry serving a tarball of the runtime's files; yields (url, tarball bytes)."""
    if not all((DIST / n).is_file() for n in RUNTIME_FILES):
        pytest.fail("ONNX Runtime Web is not installed: run scripts/test.sh (it runs npm ci --prefix web)")
    data = _tarball(tmp_path)
    with device_page.serve_bytes(data) as url:
        yield url, data


def _lockfile(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "package-lock.json"
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    path.write_text(json.dumps({"packages": {"node_modules/onnxruntime-web": {"version": "1.30.0",
                                                                            "integrity": integrity}}}))
    return path


def test_the_runtime_is_fetched_once_and_checked_against_the_lockfile(tmp_path, registry):
    url, data = registry
    runtime = Runtime(local=tmp_path / "none", cache=tmp_path / "cache", registry=url,
                      lockfile=_lockfile(tmp_path, data))
    assert runtime.status()["ready"] is False
    folder = runtime.fetch()
    assert sorted(p.name for p in folder.iterdir()) == sorted(RUNTIME_FILES)
    assert (folder / "ort.wasm.min.mjs").read_bytes() == (DIST / "ort.wasm.min.mjs").read_bytes()
    assert runtime.status() == {**runtime.status(), "ready": True, "source": "fetched from the npm registry, sha512 "
                                "checked"}


def test_a_tarball_that_does_not_match_the_lockfile_is_refused(tmp_path, registry):
    url, data = registry
    runtime = Runtime(local=tmp_path / "none", cache=tmp_path / "cache", registry=url,
                      lockfile=_lockfile(tmp_path, data + b"tampered"))
    with pytest.raises(DeitDemoError, match="does not match the lockfile's sha512.*npm ci --prefix web"):
        runtime.fetch()
    assert not (tmp_path / "cache").exists()
    assert integrity_matches(data, "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode())


def test_no_registry_and_no_local_copy_says_what_to_run(tmp_path):
    runtime = Runtime(local=tmp_path / "none", cache=tmp_path / "cache", registry="http://127.0.0.1:9")
    with pytest.raises(DeitDemoError, match=r"Run `npm ci --prefix web` in the project folder"):
        runtime.file("ort.wasm.min.mjs")
    with pytest.raises(DeitDemoError, match="not one of"):
        runtime.file("../../etc/passwd")


# Gradio's Node front proxy (SSR) sends a path to Python only if its own routing function says so
CLASSIFY_ROUTES = """
const {classifyRoute} = await import(process.argv[2]);
const paths = JSON.parse(process.argv[3]);
const setups = [{}, {hasWorkers: true, numWorkers: 2, queryString: "upload_id=x"}];
console.log(JSON.stringify(Object.fromEntries(paths.map((p) => [p, setups.map((s) => classifyRoute(p, s).route)]))));
"""


def test_every_route_the_app_adds_reaches_python_through_gradios_ssr_proxy(tmp_path):
    import gradio

    node = shutil.which("node")
    if node is None:
        pytest.fail("Node is not installed: run scripts/test.sh (it installs nodejs)")
    proxy = Path(gradio.__file__).parent / "templates" / "node" / "build" / "proxy_routes.js"
    assert proxy.is_file(), "Gradio's SSR proxy moved: find its routing function again"
    # every route's template with its parameters filled in, and the module the page's head loads
    paths = [re.sub(r"\{[^}]*\}", "x", route.path) for route in device_routes.routes(None)]
    paths.append("/" + device_routes.ENTRY_URL)
    runner = tmp_path / "classify_routes.mjs"
    runner.write_text(CLASSIFY_ROUTES)
    out = subprocess.run([node, str(runner), proxy.as_uri(), json.dumps(paths)], capture_output=True, text=True,
                         timeout=60, check=True)
    routed = json.loads(out.stdout)
    assert len(routed) == len(set(paths)) >= 8
    assert {path: where for path, where in routed.items() if where != ["python", "python"]} == {}


GOOD = {"model": "deit_synth", "backend": "wasm", "threads": 2, "browser": {"name": "Chrome", "cores": 8},
        "formats": [{"variant": "web_int8", "samples_ms": [3.0, 3.5, 4.0], "load_ms": 10, "first_ms": 5}]}


@pytest.mark.parametrize("change, message", [
    ({"model": "resnet"}, "Unknown model"),
    ({"backend": "webgl"}, "Unknown backend"),
    ({"threads": 0}, "thread count"),
    ({"formats": []}, "no timed formats"),
    ({"formats": [{"variant": "original", "samples_ms": [1.0]}]}, "not a browser format"),
    ({"formats": [{"variant": "web_int8", "samples_ms": []}]}, "no samples"),
    ({"formats": [{"variant": "web_int8", "samples_ms": [float("nan")]}]}, "bad sample"),
    ({"formats": [{"variant": "web_int8", "samples_ms": ["1"]}]}, "bad sample"),
])
def test_a_bad_device_result_gets_a_clear_error(change, message):
    assert parse_device_run(json.dumps(GOOD)).rows[0].latency.median_ms == 3.5
    with pytest.raises(DeitDemoError, match=message):
        parse_device_run(json.dumps({**GOOD, **change}))
    with pytest.raises(DeitDemoError, match="not JSON"):
        parse_device_run("{")


# ------------------------------------------------------------------------------------------------ in the browser

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def app(store):
    from deit_demo.app.ui import build_app, launch_kwargs
    from deit_demo.serve.settings import ServeSettings
    from deit_demo.service.config import AppConfig

    demo = build_app(AppConfig(model="deit_synth", store_root=str(store.root), auto_prepare=False,
                               serve=ServeSettings(auto_variants=())))
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **launch_kwargs(demo.lab))
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="module")
def page(app, playwright):
    with device_page.device_page(playwright, app.local_url) as page:
        yield page


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.mark.browser
def test_the_page_is_cross_origin_isolated_and_files_are_cached_by_etag(app, page):
    assert page.evaluate("crossOriginIsolated") is True
    caps = page.locator("#device-caps").inner_text()
    assert "not cross-origin isolated" not in caps and "threads: 1 thread" not in caps  # one thread per core here
    home = requests.get(app.local_url, timeout=10)
    assert home.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert home.headers["Cross-Origin-Embedder-Policy"] == "credentialless"
    web = f"{app.local_url}{device_routes.PREFIX.lstrip('/')}"
    version = app.lab.device.runtime.pin.version
    wasm = requests.get(f"{web}/ort/{version}/ort-wasm-simd-threaded.wasm", timeout=10)
    assert wasm.status_code == 200 and wasm.headers["Content-Type"] == "application/wasm"
    assert wasm.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    etag = wasm.headers["ETag"]
    assert etag == f'"{hashlib.sha256(wasm.content).hexdigest()}"'
    again = requests.get(f"{web}/ort/{version}/ort-wasm-simd-threaded.wasm", headers={"If-None-Match": etag},
                         timeout=10)
    assert again.status_code == 304 and not again.content
    made = requests.post(f"{web}/prepare/deit_synth/web_int8", timeout=300).json()
    model = requests.get(f"{web}/{made['url']}", timeout=10)
    assert model.headers["ETag"] == f'"{made["sha256"]}"' == f'"{hashlib.sha256(model.content).hexdigest()}"'
    assert requests.get(f"{web}/model/deit_synth/web_int8/{'0' * 64}.onnx", timeout=10).status_code == 404


def test_each_page_module_is_served_with_a_strong_etag_and_nothing_else_is(app):
    web = f"{app.local_url}{device_routes.PREFIX.lstrip('/')}"
    modules = sorted(p.name for p in device_routes.WEB.glob("*.js"))
    assert {"ui.js", "preprocess.js", "runtime.js", "timing.js", "capabilities.js"} <= set(modules)
    for name in modules:
        got = requests.get(f"{web}/{name}", timeout=10)
        assert got.status_code == 200 and got.headers["Content-Type"].startswith("text/javascript"), name
        assert got.headers["ETag"] == f'"{hashlib.sha256(got.content).hexdigest()}"'
        assert got.headers["Cache-Control"] == "no-cache"
        again = requests.get(f"{web}/{name}", headers={"If-None-Match": got.headers["ETag"]}, timeout=10)
        assert again.status_code == 304 and not again.content
    for wrong in ("nothing.js", "..%2Fdevice.py", "..%2F..%2Fservice%2Flab.js", "%2E%2E/device.js", "../ui.py"):
        assert requests.get(f"{web}/{wrong}", timeout=10).status_code == 404, wrong


@pytest.mark.browser
def test_classifies_an_example_in_the_page_and_no_image_byte_leaves_it(app, page):
    example = SYNTH.example_paths()[0]
    sent = []
    page.on("request", lambda r: sent.append((r.url, r.post_data_buffer or b"")))
    page.locator("#device-examples button").first.click()  # a bundled example: fetched from the server, run here
    page.wait_for_function("document.querySelector('#device-status').dataset.kind === 'ok'", timeout=180_000)
    assert page.locator("#device-answer .device-row").count() == 5
    page.evaluate("document.querySelector('#device-status').dataset.kind = ''")
    page.set_input_files("#device-classify", str(example))  # the visitor's own file
    page.wait_for_function("['ok', 'error'].includes(document.querySelector('#device-status').dataset.kind)",
                           timeout=180_000)
    status = page.locator("#device-status").inner_text()
    assert "stayed on your device" in status, status
    top = page.locator("#device-answer .device-row span").first.inner_text()
    _, server = app.lab.classify(example, "deit_synth", "original")
    assert top == server.heads["average"][0].label  # the exported model answers with the two heads averaged
    image = example.read_bytes()
    assert sent, "the page fetched the model and runtime it needed"
    assert not [u for u, body in sent if image[:64] in body or "upload" in u], "image bytes left the page"
    assert not [u for u, body in sent if body and "/deit-web/prepare/" not in u
                and ("/gradio_api/" not in u or "/deit-web/" in u)], "only the page's own requests carry a body"


@pytest.mark.browser
@pytest.mark.parametrize("model, path", [("deit_synth", SYNTH.example_paths()[0]),
                                         ("deit_tiny", MODELS["deit_tiny"].example_paths()[0])])
def test_the_page_preprocesses_exactly_as_the_server(page, model, path):
    mine = np.array(device_page.preprocess_in_page(page, model, _b64(path)), dtype=np.float32)
    server = preprocess(load_image(path), MODELS[model]).numpy().ravel()
    # A PNG decodes to the same pixels everywhere: equal to the last bit. A JPEG's decoder may differ by a level.
    tolerance = 1e-6 if path.suffix == ".png" else 2.5 / 255 / min(MODELS[model].std)
    assert np.abs(mine - server).max() <= tolerance


@pytest.mark.browser
def test_browser_logits_match_onnx_runtime_on_the_same_tensor(app, page):
    made = app.lab.device.prepare("deit_synth", "onnx_fp32")
    path = app.lab.device.file("deit_synth", "onnx_fp32", made.sha256)
    tensors = [preprocess(load_image(p), SYNTH) for p in SYNTH.example_paths()[:3]]
    native = ort_runner(path, threads=1)
    page_logits = device_page.logits_for_tensors(page, "deit_synth", "onnx_fp32",
                                                 [t.numpy().ravel().tolist() for t in tensors])
    for tensor, logits in zip(tensors, page_logits):
        assert np.abs(np.array(logits) - native(tensor).numpy().ravel()).max() <= 1e-3


@pytest.mark.browser
@pytest.mark.slow
def test_top1_in_the_browser_matches_the_server_on_200_held_out_images(app, page):
    images, labels = zip(*[synth.render("test", i) for i in range(200)])
    files = [device_page.png_base64(im) for im in images]
    x = torch.cat([preprocess(im, SYNTH) for im in images])
    for key in browser_keys():
        made = app.lab.device.prepare("deit_synth", key)
        if "wasm" not in made.backends:
            continue
        native = ort_runner(app.lab.device.file("deit_synth", key, made.sha256), threads=1)
        server_top1 = float((native(x).argmax(1) == torch.tensor(labels)).float().mean())
        page_top1 = float(np.mean([int(np.argmax(lg)) == y for lg, y in
                                   zip(device_page.logits_for_files(page, "deit_synth", key, files), labels)]))
        assert abs(page_top1 - server_top1) <= 0.01, (key, page_top1, server_top1)


@pytest.mark.browser
def test_a_three_run_benchmark_draws_your_device_beside_this_server(app, page):
    page.locator("#device-runs").fill("3")
    page.locator("#device-warmup").fill("1")
    page.locator("#device-bench").click()
    page.locator("#device-table table").wait_for(timeout=300_000)
    page.locator("#device-chart .main-svg").first.wait_for(timeout=30_000)
    table = page.locator("#device-table").inner_text()
    assert "web_int8" in table and "×" in table
    page.screenshot(path=str(ROOT / "test-artifacts" / "screenshots" / "device.png"), full_page=True)


def test_device_results_are_overlaid_with_the_server_by_compare(app, tmp_path):
    from deit_demo.measure.decide import compare
    from deit_demo.measure.results import load_results

    run = parse_device_run(json.dumps(GOOD))
    _, server = app.lab.benchmark("deit_synth", BenchSettings(variants=["web_int8"], runs=3, warmup=1, profile=False))
    mine, theirs = app.lab.save_device(run, server, tmp_path)
    latency, machines = compare([load_results(mine), load_results(theirs)])
    row = next(r for r in latency if r["variant"] == "web_int8")
    assert row[f"{mine.name} ms"] == "3.50" and float(row[f"{theirs.name} ms"]) > 0
    assert machines[0]["cpu"] == "browser: Chrome (?)" and machines[0]["usable CPUs"] == 8
    assert not machines[1]["cpu"].startswith("browser")


@pytest.mark.browser
def test_webgpu_runs_where_the_browser_has_it_and_fp16_only_where_the_adapter_can(app, playwright):
    # Headless Chromium's WebGPU is SwiftShader, a software adapter without shader-f16: fp32 runs (slowly), and the
    # page says so; fp16 is not offered.
    t = preprocess(load_image(SYNTH.example_paths()[0]), SYNTH)
    made = app.lab.device.prepare("deit_synth", "onnx_fp32")
    native = ort_runner(app.lab.device.file("deit_synth", "onnx_fp32", made.sha256), threads=1)(t).numpy().ravel()
    with device_page.device_page(playwright, app.local_url, args=["--enable-unsafe-webgpu"]) as page:
        caps = page.locator("#device-caps")
        if caps.get_attribute("data-webgpu") == "none":
            pytest.skip("this Chromium has no WebGPU adapter at all")
        assert "WebGPU: a software adapter" in page.locator("#device-caps").inner_text()
        page.select_option("#device-backend", "webgpu")
        fp16 = page.locator("#device-format option[value=web_fp16]")
        assert fp16.is_disabled() == (caps.get_attribute("data-f16") == "no")
        logits = device_page.logits_for_tensors(page, "deit_synth", "onnx_fp32", [t.numpy().ravel().tolist()],
                                                backend="webgpu")[0]
        assert np.abs(np.array(logits) - native).max() <= 1e-3


@pytest.mark.browser
def test_a_corrupt_model_file_gives_a_clear_message_and_the_server_keeps_serving(app, playwright):
    with device_page.device_page(playwright, app.local_url) as page:
        page.route("**/deit-web/model/**", lambda route: route.fulfill(status=200, body=b"not a model" * 100))
        page.set_input_files("#device-classify", str(SYNTH.example_paths()[0]))
        page.wait_for_function("document.querySelector('#device-status').dataset.kind === 'error'", timeout=180_000)
        assert "is damaged" in page.locator("#device-status").inner_text()
    assert requests.get(app.local_url, timeout=10).status_code == 200


@pytest.mark.browser
def test_no_runtime_on_the_server_says_what_to_run(app, playwright, tmp_path, monkeypatch):
    monkeypatch.setattr(app.lab.device, "runtime", Runtime(local=tmp_path / "a", cache=tmp_path / "b",
                                                        registry="http://127.0.0.1:9"))
    with device_page.device_page(playwright, app.local_url) as page:
        assert "npm ci --prefix web" in page.locator("#device-runtime").inner_text()
        page.set_input_files("#device-classify", str(SYNTH.example_paths()[0]))
        page.wait_for_function("document.querySelector('#device-status').dataset.kind === 'error'", timeout=180_000)
        assert "Run `npm ci --prefix web`" in page.locator("#device-status").inner_text()
    assert requests.get(app.local_url, timeout=10).status_code == 200


@pytest.mark.browser
def test_the_tab_fits_a_phone(app, playwright):
    with device_page.device_page(playwright, app.local_url, viewport=(390, 844)) as page:
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 392


@pytest.mark.browser
def test_inside_an_embedding_page_without_isolation_it_runs_on_one_thread_and_says_how_to_get_more(app, playwright):
    parent = (b"<!doctype html><iframe id=f src='%s' style='width:1200px;height:900px'></iframe>"
              % app.local_url.encode())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(parent)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # another origin: another port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser = playwright.chromium.launch(executable_path=device_page.CHROMIUM, args=device_page.ARGS)
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        frame = page.frame_locator("#f")
        frame.get_by_role("tab", name="Your device").click()
        caps = frame.locator("#device-caps")
        caps.wait_for(timeout=60_000)
        assert "1 thread: this page is embedded in another page" in caps.inner_text()
        assert "Open the app at its own address" in caps.inner_text()
    finally:
        browser.close()
        server.shutdown()


def test_a_format_is_checked_once_per_file_not_once_per_page_session(app, monkeypatch):
    from deit_demo.service import formats as lab_module

    first = app.lab.device.prepare("deit_synth", "onnx_fp32")
    assert first.ready and first.passed
    calls, real = [], lab_module.run_conversion
    monkeypatch.setattr(lab_module, "run_conversion", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = app.lab.device.prepare("deit_synth", "onnx_fp32")  # a new page session asks again
    assert again == first and calls == []
    folder = app.lab.device.file("deit_synth", "onnx_fp32", first.sha256).parent

    shutil.rmtree(folder)  # the file is gone: it is made and checked again
    remade = app.lab.device.prepare("deit_synth", "onnx_fp32")
    assert len(calls) == 1 and remade.ready


# ------------------------------------------------------------------------------ defects found walking the tab


def _settled(page, timeout=180_000) -> str:
    page.wait_for_function("['ok', 'error'].includes(document.querySelector('#device-status').dataset.kind)",
                           timeout=timeout)
    return page.locator("#device-status").inner_text()


@pytest.mark.browser
def test_a_late_catalog_answer_never_replaces_the_model_picked_last(app, playwright):
    # deit_tiny's formats are held back until the visitor has picked deit_synth again and its list is shown: the late
    # answer must not swap the examples, formats or labels under the select that says DeiT-synth.
    with device_page.device_page(playwright, app.local_url) as page:
        held = []
        page.route("**/catalog/deit_tiny", lambda route: held.append(route))
        page.select_option("#device-model", "deit_tiny")
        for _ in range(300):
            if held:
                break
            page.wait_for_timeout(100)
        assert held, "the page asked for deit_tiny's formats"
        page.select_option("#device-model", "deit_synth")
        page.wait_for_function("!document.querySelector('#device-status').textContent.startsWith('Reading')",
                               timeout=60_000)
        with page.expect_response("**/catalog/deit_tiny", timeout=120_000):
            held[0].continue_()
        page.wait_for_timeout(1000)  # the late answer has arrived; the page has had time to (wrongly) take it
        assert page.locator("#device-model").input_value() == "deit_synth"
        names = page.locator("#device-examples button").all_inner_texts()
        assert names == [p.stem.replace("_", " ") for p in SYNTH.example_paths()[:8]], names
        page.locator("#device-examples button").first.click()
        status = _settled(page)
        assert page.locator("#device-status").get_attribute("data-kind") == "ok", status
        assert page.locator("#device-answer .device-row span").first.inner_text() in SYNTH.labels


@pytest.mark.browser
def test_the_first_answer_reports_a_warm_call_and_names_the_cold_one_apart(app, playwright):
    with device_page.device_page(playwright, app.local_url) as page:
        page.set_input_files("#device-classify", str(SYNTH.example_paths()[0]))
        status = _settled(page)
        # the first call of a new session pays for compiling and allocating: it is not the device's speed
        found = re.search(r"([\d.]+) ms on your device \(warm; the first call took ([\d.]+) ms", status)
        assert found, status


@pytest.mark.browser
def test_a_device_table_timed_while_the_server_is_busy_says_so(app, playwright):
    from deit_demo.core import activity

    started, release = threading.Event(), threading.Event()

    def auto_preparing():
        with activity.ACTIVITY.doing("Auto preparing deit_base"):
            started.set()
            release.wait(600)

    other = threading.Thread(target=auto_preparing, daemon=True)
    with device_page.device_page(playwright, app.local_url) as page:
        other.start()
        started.wait(10)
        try:
            page.locator("#device-runs").fill("3")
            page.locator("#device-warmup").fill("1")
            page.locator("#device-bench").click()
            page.locator("#device-table table").wait_for(timeout=300_000)
            table = page.locator("#device-table").inner_text()
        finally:
            release.set()
            other.join()
    assert "busy" in table and "Auto preparing deit_base" in table, table


def test_the_page_is_sent_the_servers_timing_method_with_each_catalog(app):
    from deit_demo.measure.timing import TimingSettings

    defaults = TimingSettings()
    assert app.lab.device.catalog("deit_synth")["timing"] == {"runs": defaults.runs, "warmup": defaults.warmup,
                                                                "block": defaults.block}
