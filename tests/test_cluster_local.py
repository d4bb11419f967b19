"""`--cluster local` as a user runs it, each in a process of its own: `deit-demo serve` answers plain HTTP with the
in-process top-5, and stopping it (or the app) stops every Ray process it started."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from deit_demo.service import AppConfig, Lab, example_images

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("ray")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], tmp_path: Path, ready: str, timeout_s: float = 240) -> tuple[subprocess.Popen, str]:
    """A command in its own process group, and its output up to the line that says it is ready."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "DEIT_DEMO_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if ready in line:
            return proc, "".join(seen)
    proc.kill()
    raise AssertionError(f"never said {ready!r}:\n{''.join(seen)[-3000:]}")


def stop_and_check_nothing_stays(proc: subprocess.Popen) -> float:
    """SIGINT (Ctrl-C), then no process it started may stay: Ray's head, raylet, workers and replicas included."""
    family = psutil.Process(proc.pid).children(recursive=True)
    assert any("raylet" in p.name() or "gcs_server" in p.name() for p in family), [p.name() for p in family]
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family):
        time.sleep(0.5)
    left = [p.name() for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in family:  # never leave a cluster behind, whatever the assertion says
        if p.is_running():
            p.kill()
    assert not left, f"still running after the stop: {left}"
    return time.monotonic() - began


def test_deit_demo_serve_answers_plain_http_and_stops_everything_it_started(tmp_path, store):
    port, image = free_port(), example_images()[0]
    proc, said = start([sys.executable, "-m", "deit_demo", "serve", "--model", "deit_tiny", "--variant", "onnx_int8",
                        "--weights", "random", "--store", str(store.root), "--port", str(port),
                        "--replicas", "1:1"], tmp_path, "serving deit_tiny/onnx_int8")
    try:
        url = f"http://127.0.0.1:{port}/"
        got = requests.post(url, data=image.read_bytes(), timeout=60)
        assert got.status_code == 200, got.text
        answer = got.json()
        local = Lab(AppConfig(model="deit_tiny", weights="random", store_root=str(store.root),
                              auto_prepare=False, isolate_conversions=False))
        expected = local.classify(str(image), "deit_tiny", "onnx_int8")[1].heads["logits"]
        assert [p["index"] for p in answer["heads"]["logits"]] == [p.index for p in expected]
        assert answer["variant"] == "onnx_int8" and answer["weights"] == "random" and answer["forward_ms"] > 0
        bad = requests.post(url, data=b"not an image", timeout=60)
        assert bad.status_code == 400 and "not an image" in bad.json()["error"]
        asked = requests.post(url, data=json.dumps({"url": "file:///etc/passwd"}),
                              headers={"content-type": "application/json"}, timeout=60)
        assert asked.status_code == 400, asked.text  # only public http(s) images are fetched
    finally:
        stop_and_check_nothing_stays(proc)


def test_the_app_with_a_local_cluster_stops_every_ray_process_it_started(tmp_path):
    port = free_port()
    proc, said = start([sys.executable, "app.py", "--cluster", "local", "--model", "deit_tiny", "--weights", "random",
                        "--auto", "none", "--store", str(tmp_path / "store"), "--port", str(port)], tmp_path,
                       "Running on local URL")
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=30).status_code == 200
    stop_and_check_nothing_stays(proc)
