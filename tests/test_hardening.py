"""Reliability through the app's API: every bad input gets a readable answer, the next request still works, memory
stays flat, and the store and model cache stay under their caps."""

import time

import psutil
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from deit_demo.app.ui import build_app, launch_kwargs
from deit_demo.core.artifacts import ArtifactStore
from deit_demo.core.model_cache import ModelCache
from deit_demo.service.config import AppConfig
from deit_demo.variants import get_variant
from deit_demo.variants.pipeline import convert_variant, example_images
from tests.image_corpus import corpus

CASES = corpus()
CAT = str(example_images()[1])


@pytest.fixture(scope="module")
def app(store):
    demo = build_app(AppConfig(model="deit_tiny", store_root=str(store.root), auto_prepare=False))
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **launch_kwargs(demo.lab))
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def client(app):
    return Client(app.local_url, verbose=False)


def classify(client, path="", url="", model="deit_tiny"):
    return client.predict(handle_file(path) if path else None, url, model, "original", api_name="/classify")


@pytest.mark.parametrize("name,data,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_through_the_api(name, data, expected, client, tmp_path):
    path = tmp_path / ("upload.svg" if name == "SVG" else "upload.jpg")
    path.write_bytes(data)
    start = time.perf_counter()
    if expected == "ok":
        out = classify(client, str(path))
        assert "for the forward pass" in out[1]
    else:
        with pytest.raises(Exception) as caught:
            classify(client, str(path))
        message = str(caught.value)
        if name == "over the 20 MB cap":
            lowered = message.lower()
            assert "exceeds the maximum file size" in lowered or "413" in message or "too large" in lowered
        else:
            assert isinstance(caught.value, AppError)
            assert pytest.importorskip("re").search(expected, message), message
    assert time.perf_counter() - start < 15
    assert "for the forward pass" in classify(client, CAT)[1]  # the next request still works


@pytest.mark.parametrize("url,reason", [
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://100.100.100.200/", "carrier-grade NAT"),
    ("http://[::ffff:127.0.0.1]:7860/", "embeds 127.0.0.1"),
    ("http://0x7f000001/", "loopback"),
    ("file:///etc/passwd", "Only http"),
    ("http://u:p@example.com/x.jpg", "credentials"),
    ("<script>alert(1)</script>", "neither an http"),
])
def test_hostile_urls_through_the_api(url, reason, client):
    with pytest.raises(AppError, match=reason) as caught:
        classify(client, url=url)
    assert "<script>" not in str(caught.value)  # user text is escaped before it reaches an error message


@pytest.mark.slow
def test_memory_flat_over_200_identical_requests(app, client):
    # The server's request path is what could leak; deit_digits keeps the forward pass out of the test's time.
    process = psutil.Process()
    for _ in range(20):
        classify(client, CAT, model="deit_digits")
    warm_rss = process.memory_info().rss
    for _ in range(200):
        classify(client, CAT, model="deit_digits")
    growth = process.memory_info().rss / warm_rss - 1
    assert growth < 0.05, f"RSS grew {growth:.1%} over 200 identical requests"


def test_model_cache_stays_under_its_cap():
    cache = ModelCache(max_models=2)
    for key in ("deit_tiny", "deit_tiny_distilled", "deit_digits", "deit_tiny"):
        cache.get(key, "random")
        assert len(cache) <= 2


def test_artifact_store_stays_under_its_cap_when_filled(tmp_path):
    from deit_demo.core.models import load_model

    loaded = load_model("deit_digits")
    store = ArtifactStore(tmp_path, cap_bytes=1_500_000)
    for key in ("original", "scripted", "scripted_int8", "lite", "onnx_fp32", "onnx_int8"):
        convert_variant(get_variant(key), loaded, store)
        assert sum(size for _, size, _ in store.artifacts()) <= store.cap_bytes or len(store.artifacts()) == 1
    assert 1 <= len(store.artifacts()) < 6
