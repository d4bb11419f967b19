"""The app driven through its API with gradio_client, launched in-process on 127.0.0.1."""

import pytest

gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from deit_demo.app.ui import build_app, launch_kwargs  # noqa: E402
from deit_demo.present.report import CONVERT_COLUMNS  # noqa: E402
from deit_demo.serve.settings import ServeSettings  # noqa: E402
from deit_demo.service.config import AppConfig  # noqa: E402
from deit_demo.variants.pipeline import example_images  # noqa: E402
from deit_demo.variants.torchscript import xnnpack_enabled  # noqa: E402

FAST = ("onnx_int8_static", "mobile_optimized")  # Auto's candidates here: quick on deit_tiny; the second unavailable


@pytest.fixture(scope="module")
def app(store):
    config = AppConfig(model="deit_tiny", weights="hub", store_root=str(store.root),
                       serve=ServeSettings(auto_variants=FAST))
    demo = build_app(config)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                **launch_kwargs(demo.lab))
    yield demo
    demo.close()


def confidences(output) -> list:
    """A gr.Label value from a plain return or a gr.update."""
    value = output.get("value", output) if isinstance(output, dict) else output
    return value["confidences"]


@pytest.fixture(scope="module")
def client(app):
    return Client(app.local_url, verbose=False)


def test_modules_gradio_retries_are_marked_missing_only_where_they_are(monkeypatch):
    import sys

    from deit_demo.app.process import mark_missing_imports

    monkeypatch.delitem(sys.modules, "deit_demo_no_such_module", raising=False)
    monkeypatch.setitem(sys.modules, "json", sys.modules["json"])  # restored after, whatever happens
    assert mark_missing_imports(("json", "deit_demo_no_such_module")) == ["deit_demo_no_such_module"]
    assert sys.modules["json"] is not None and sys.modules["deit_demo_no_such_module"] is None
    with pytest.raises(ImportError):
        import deit_demo_no_such_module  # noqa: F401
    monkeypatch.delitem(sys.modules, "deit_demo_no_such_module")


def test_no_model_loaded_before_first_request_and_building_the_app_changes_nothing_process_wide():
    import sys

    from deit_demo.app.process import GIL_SWITCH_INTERVAL_S, configure_server_process

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)  # Python's default
        demo = build_app(AppConfig(model="deit_tiny", auto_prepare=False))
        assert len(demo.lab.models) == 0
        assert sys.getswitchinterval() == 0.005  # the library leaves the process as it found it
        configure_server_process()  # what app.py calls where the server's process starts
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_S) == 0.001
    finally:
        sys.setswitchinterval(before)


@pytest.mark.parametrize("path", example_images(), ids=lambda p: p.name)
def test_classify_each_example_offline_falls_back_to_random_with_banner(client, path):
    banner, timing, main, second, third = client.predict(handle_file(str(path)), "", "deit_tiny", "original",
                                                         api_name="/classify")
    assert "RANDOM weights" in banner and "labels meaningless" in banner
    assert "ms" in timing
    assert len(confidences(main)) == 5
    assert sum(c["confidence"] for c in confidences(main)) < 1.0


def test_classify_distilled_shows_three_heads(client):
    out = client.predict(handle_file(str(example_images()[0])), "", "deit_tiny_distilled", "original",
                         api_name="/classify")
    labels = out[2:]
    assert all(len(confidences(label)) == 5 for label in labels)
    assert confidences(labels[0]) != confidences(labels[1])


def test_classify_through_a_converted_variant(client):
    out = client.predict(handle_file(str(example_images()[0])), "", "deit_tiny", "scripted", api_name="/classify")
    assert "scripted" in out[1] and len(confidences(out[2])) == 5


def test_bad_input_gives_readable_error_and_next_call_works(client, tmp_path):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="link-local"):
        client.predict(None, "http://169.254.169.254/latest/meta-data/", "deit_tiny", "original", api_name="/classify")
    with pytest.raises(AppError, match="Upload an image"):
        client.predict(None, "", "deit_tiny", "original", api_name="/classify")
    if not xnnpack_enabled():
        with pytest.raises(AppError, match="unavailable here"):
            client.predict(handle_file(str(example_images()[0])), "", "deit_tiny", "mobile_optimized",
                           api_name="/classify")
    fake = tmp_path / "fake.jpg"
    fake.write_text("this is text, not a picture")
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(str(fake)), "", "deit_tiny", "original", api_name="/classify")
    out = client.predict(handle_file(str(example_images()[0])), "", "deit_tiny", "original", api_name="/classify")
    assert len(confidences(out[2])) == 5


def test_convert_tiny(client):
    status, table, files = client.predict("deit_tiny", ["original", "scripted", "scripted_int8", "mobile_optimized"],
                                          api_name="/convert")
    assert table["headers"] == CONVERT_COLUMNS
    rows = {row[0]: dict(zip(CONVERT_COLUMNS, row)) for row in table["data"]}
    assert rows["original"]["status"].startswith("ok") and rows["scripted"]["status"].startswith("ok")
    assert float(rows["scripted"]["max diff"]) < 1e-4 and rows["scripted"]["top-1 agreement"] == "100%"
    expected = "unavailable" if not xnnpack_enabled() else "ok"
    assert rows["mobile_optimized"]["status"].startswith(expected)
    assert any(str(f).endswith(".csv") for f in files) and any(str(f).endswith(".pt") for f in files)


@pytest.mark.parametrize("api,args,message", [
    ("/convert", ("deit_tiny", None), "The 'Variants' input expects a list of choices (got None)"),
    ("/convert", ("deit_tiny", []), "Choose at least one variant"),
    ("/convert", (None, ["original"]), "Choose a model"),
    ("/benchmark", ("deit_tiny", ["original"], None, 0, 1, "1", None), "The 'Timed runs' input expects a number"),
    ("/benchmark", ("deit_tiny", ["original"], 2, 0, 1, "x" * 5000, None), "5002 characters"),
    ("/sweep", (["deit_tiny"], ["original"], "1", "1", 2, 0, "y" * 5000, "", ""), "latency budget must be a positive"),
    ("/sweep", ("deit_tiny", ["original"], "1", "1", 2, 0, "", "", ""), "Models"),
    ("/tome_sweep", ("deit_tiny", "z" * 5000, False, 2, 0, 1), "r values must be whole numbers"),
])
def test_any_input_from_any_client_gets_a_clear_short_message(client, api, args, message):
    # Gradio's own preprocessing used to fail first, with "The upstream Gradio app has raised an exception"; a huge
    # string was echoed back whole.
    with pytest.raises(AppError) as raised:
        client.predict(*args, api_name=api)
    text = str(raised.value)
    assert message in text and "upstream" not in text and len(text) < 400, text


def test_short_benchmark(client):
    out = client.predict("deit_tiny", ["original", "scripted_int8"], 3, 1, 1, "1", api_name="/benchmark")
    status, table = out[0], out[1]
    assert "done" in status and "| original |" in table and "| scripted_int8 |" in table
    figure = out[2]["plot"] if isinstance(out[2], dict) and "plot" in out[2] else out[2]
    import json

    bars = json.loads(figure) if isinstance(figure, str) else figure
    assert [trace["x"] for trace in bars["data"]][0] == ["original", "scripted_int8"]
    assert all(y > 0 for y in bars["data"][0]["y"])
    assert any(str(f).endswith(".html") for f in out[-1])


def test_bad_benchmark_settings_are_refused(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Batch sizes"):
        client.predict("deit_tiny", ["original"], 3, 1, 1, "zero", api_name="/benchmark")


def test_convert_digits_reports_accuracy_per_variant(client):
    status, table, files = client.predict("deit_digits", ["original", "scripted", "scripted_int8"], api_name="/convert")
    assert "Accuracy: top-1 on digits test split (360 labelled images)" in status
    rows = {row[0]: dict(zip(CONVERT_COLUMNS, row)) for row in table["data"]}
    accuracy = {key: float(rows[key]["accuracy"].rstrip("%")) for key in ("original", "scripted", "scripted_int8")}
    assert accuracy["original"] >= 85 and accuracy["scripted"] == accuracy["original"]
    assert abs(accuracy["scripted_int8"] - accuracy["original"]) <= 1.0


@pytest.mark.slow
def test_app_py_share_without_network_says_so_in_one_line_and_serves(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DEIT_DEMO_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "app.py", "--share", "--offline", "--model", "deit_tiny", "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        lines = []
        deadline = time.time() + 120
        while time.time() < deadline and not any("share link" in line for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        share_lines = [line for line in lines if "share" in line.lower()]
        assert len(share_lines) == 1 and "still serving locally" in share_lines[0], lines
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
    finally:
        proc.kill()
        proc.wait()
    bad = subprocess.run([sys.executable, "app.py", "--model", "resnet"], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=120)
    assert bad.returncode != 0 and "Unknown model 'resnet'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_visitors_jobs_and_files_are_their_own(app, client):
    import time
    import urllib.request

    other = Client(app.local_url, verbose=False)
    job = client.submit("deit_tiny", ["original"], 40, 0, 1, "1", api_name="/benchmark")
    time.sleep(3)  # A's benchmark is running when B presses Stop
    other.predict(api_name="/stop_benchmark")
    status, *_, files = job.result()
    assert status.startswith("✅ done"), status  # B's Stop stopped nothing of A's
    assert files and all(str(app.lab.sessions_root) not in str(f) for f in files)  # served from Gradio's cache
    job = client.submit("deit_tiny", ["original"], 200, 0, 1, "1", api_name="/benchmark")
    time.sleep(3)
    client.predict(api_name="/stop_benchmark")
    assert job.result()[0].startswith("⏹️ stopped")  # A's own Stop stops A
    written = [p for p in app.lab.sessions_root.rglob("*.json")]
    assert written  # A's results are in A's session folder, which no visitor can fetch by path
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as refused:
        no_proxy.open(f"{app.local_url}gradio_api/file={written[0]}", timeout=10)
    assert refused.value.code in (403, 404)


def test_agents_get_classification_and_the_catalog_as_mcp_tools(app, monkeypatch):
    import asyncio
    import json

    pytest.importorskip("mcp")
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    async def talk():
        async with streamablehttp_client(f"{app.local_url.rstrip('/')}/gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = (await session.list_tools()).tools
                called = await session.call_tool("classify_image", {"image": "chelsea_cat.jpg", "model": "deit_tiny",
                                                                    "top_k": 3})
                catalog = await session.call_tool("list_models", {})
                refused = await session.call_tool("classify_image", {"image": "/etc/passwd", "model": "deit_tiny"})
                return tools, called, catalog, refused

    tools, called, catalog, refused = asyncio.run(talk())
    by_name = {t.name: t for t in tools}
    assert set(by_name) == {"classify_image", "list_models"}  # convert and benchmark are not tools
    assert "an http(s) URL" in json.dumps(by_name["classify_image"].inputSchema) + by_name["classify_image"].description
    import ast

    text = called.content[0].text  # Gradio sends a tool's dict as its Python literal
    result = json.loads(text) if text.startswith('{"') else ast.literal_eval(text)
    assert result["model"] == "deit_tiny" and len(result["heads"]["logits"]) == 3 and result["weights"] == "random"
    assert "deit_synth" in catalog.content[0].text and "DeiT III paper" in catalog.content[0].text
    assert refused.isError or "bundled example" in refused.content[0].text


def test_classify_defaults_to_auto_and_names_the_variant_it_used(app, client):
    app.lab.server.auto.wait("deit_tiny", timeout_s=600)  # started in the background when the app was built
    out = client.predict(handle_file(str(example_images()[0])), "", "deit_tiny", "auto", api_name="/classify")
    choice = app.lab.server.auto.choice(app.lab.model("deit_tiny"))
    assert f"({choice.variant}, DeiT-Ti" in out[1] and choice.sentence() in out[1]
    assert "mobile_optimized" in choice.rejected


def test_the_load_benchmarks_browser_like_visitor_gets_answers_in_one_session(app):
    # benchmarks/load.py's default visitor speaks the browser's queue protocol (one session, join, event stream)
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "load.py"
    spec = importlib.util.spec_from_file_location("load_benchmark", path)
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    predict = load.http_predict(app.local_url)
    for image in example_images()[:2]:
        out = predict(image, "deit_tiny", "original")
        assert "for the forward pass (original" in out[1] and len(confidences(out[2])) == 5
    with pytest.raises(RuntimeError, match="error"):
        predict(Path(__file__), "deit_tiny", "original")  # not an image: the visitor sees Gradio's error event
