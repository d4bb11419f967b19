"""Classification on a real Ray cluster on this machine: a head and two worker nodes (one CPU each), every one on
127.0.0.1, started once for this module and shut down in a `finally`. No mock of Ray: the app is built with
`--cluster ADDRESS`, and answers come from Ray Serve replicas in other processes."""

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# tests/conftest.py sets Ray's environment before anything imports it: every node on 127.0.0.1, no token file
ray = pytest.importorskip("ray")
from gradio_client import Client, handle_file  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from deit_demo.app.ui import build_app, launch_kwargs  # noqa: E402
from deit_demo.service import AppConfig, ClusterSettings, Lab, ServeSettings, example_images  # noqa: E402

IMAGES = [str(p) for p in example_images()[:2]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    stores = tmp_path_factory.mktemp("node-stores")
    os.environ["DEIT_DEMO_CLUSTER_STORE"] = str(stores)  # the nodes' own stores (each node a folder of its own)
    started = time.monotonic()
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                         "labels": {"kind": "head"}})
    try:
        for i in range(2):
            made.add_node(num_cpus=1, labels={"kind": f"worker{i}"})
        made.wait_for_nodes()
        made.started_s, made.stores = time.monotonic() - started, stores
        yield made
    finally:
        if ray.is_initialized():  # the app's lab lets go first; a driver still attached would stop the head's removal
            ray.shutdown()
        made.shutdown()


@pytest.fixture(scope="module")
def app(cluster, tmp_path_factory):
    # Half a CPU per replica: the three one-CPU nodes hold the few deployments the tests make, each replica with one
    # thread (a replica's threads are its whole CPUs, at least one)
    settings = ClusterSettings(cluster.address, min_replicas=1, max_replicas=2, cpus_per_replica=0.5,
                               target_ongoing_requests=1, upscale_delay_s=0, downscale_delay_s=600,
                               deploy_deadline_s=180)
    demo = build_app(AppConfig(model="deit_tiny", weights="random", store_root=str(tmp_path_factory.mktemp("store")),
                               auto_prepare=False, isolate_conversions=False, cluster=settings,
                               serve=ServeSettings(auto_variants=("onnx_int8",))))
    try:
        demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **launch_kwargs(demo.lab))
        yield demo
    finally:
        demo.close()
        demo.lab.close()


def classify(client: Client, image: str, variant: str) -> list:
    return client.predict(handle_file(image), "", "deit_tiny", variant, api_name="/classify")


def top5(output) -> list[str]:
    value = output.get("value", output) if isinstance(output, dict) else output
    return [c["label"] for c in value["confidences"]]


def test_every_node_and_every_ray_listener_is_on_loopback(cluster, app):
    assert [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]] == ["127.0.0.1"] * 3
    import psutil

    ours = [p for p in psutil.Process().children(recursive=True) if p.is_running()]
    listening = [(p.name(), c.laddr.ip) for p in ours for c in p.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return (getattr(address, "ipv4_mapped", None) or address).is_loopback

    assert listening and all(loopback(ip) for _, ip in listening), sorted(set(listening))


@pytest.mark.parametrize("variant", ["original", "onnx_fp32"])
def test_the_apps_answers_through_the_cluster_have_the_in_process_top5(app, store, variant):
    client = Client(app.local_url, verbose=False)
    local = Lab(AppConfig(model="deit_tiny", weights="random", store_root=str(store.root), auto_prepare=False,
                          isolate_conversions=False))
    for image in IMAGES:
        out = classify(client, image, variant)
        assert "served by Ray Serve" in out[1] and f"deit_tiny/{variant}" in out[1], out[1]
        expected = [f"{p.label} ({p.index})" for p in local.classify(image, "deit_tiny", variant)[1].heads["logits"]]
        assert top5(out[2]) == expected


def test_a_replica_that_cannot_load_is_reported_and_auto_falls_back(app, cluster):
    # A real fault on every node: where each node's store should be, a file (no node can write the variant's file,
    # root or not). Auto's verified choice cannot start there; the original keeps answering, saying why.
    lab = app.lab
    choice = lab.server.auto.prepare("deit_tiny")  # on a worker node, its files committed here
    assert choice.variant == "onnx_int8", choice.sentence()  # verified and faster there: what Auto would serve
    node_ids = [n["NodeID"][:12] for n in ray.nodes() if n["Alive"]]
    blocked = [cluster.stores / node for node in node_ids]
    for path in blocked:
        if path.is_dir():
            path.rename(path.with_name(path.name + ".aside"))
        path.write_text("not a folder")
    try:
        started = time.monotonic()
        note = ""
        while time.monotonic() - started < 200:
            _, answer = lab.classify(IMAGES[0], "deit_tiny", "auto")
            note = answer.note
            if "could not start" in note:
                break
            assert answer.variant == "original", note  # never the unverified or unstarted one
            time.sleep(1)
        assert answer.variant == "original" and "onnx_int8 of deit_tiny could not start on the cluster" in note, note
        assert "Not a directory" in note or "File exists" in note, note  # the replica's own reason
        assert not any("onnx-int8" in app_name for app_name in ray.serve.status().applications)  # nothing left
    finally:
        for path in blocked:
            if path.is_file():
                path.unlink()
            aside = path.with_name(path.name + ".aside")
            if aside.is_dir():
                aside.rename(path)
    # The fault mended, a visitor who asks for it by name starts it; from then on Auto's answers come from it
    lab.classify(IMAGES[0], "deit_tiny", "onnx_int8")
    _, answer = lab.classify(IMAGES[0], "deit_tiny", "auto")
    assert answer.variant == "onnx_int8" and answer.note.startswith("Auto → onnx_int8: same top-1"), answer.note
    assert "replica(s) of deit_tiny/onnx_int8" in answer.note


def test_autoscaling_adds_a_replica_under_load(app):
    from deit_demo.cluster.server import replica_count

    lab = app.lab
    lab.classify(IMAGES[0], "deit_tiny", "original")
    target = lab.server._deployed[("deit_tiny", "original", None)]
    assert replica_count(target.app) >= 1
    stop, errors = threading.Event(), []

    def visitor():
        while not stop.is_set():
            try:
                lab.classify(IMAGES[1], "deit_tiny", "original")
            except Exception as err:  # noqa: BLE001 - any failure fails the test below
                errors.append(err)

    visitors = [threading.Thread(target=visitor) for _ in range(6)]
    for t in visitors:
        t.start()
    try:
        deadline = time.monotonic() + 90
        while replica_count(target.app) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        scaled = replica_count(target.app)
    finally:
        stop.set()
        for t in visitors:
            t.join(60)
    assert scaled == 2 and not errors, (scaled, errors[:1])


def test_a_replica_killed_mid_load_loses_no_visitor_and_is_replaced(app):
    from ray.serve import context

    lab = app.lab
    client = Client(app.local_url, verbose=False)
    classify(client, IMAGES[0], "original")
    target = lab.server._deployed[("deit_tiny", "original", None)]
    # the calls go over Serve's gRPC channel (cluster.server.direct), whose dead replica must read as a RayActorError
    assert target.handle.handle_options._by_reference is False
    details = context._get_global_client().get_serve_details()["applications"][target.app]["deployments"]
    pids = [r["pid"] for d in details.values() for r in d["replicas"] if r.get("pid") and r["state"] == "RUNNING"]
    assert pids, details
    answers, errors, victim = [], [], pids[0]

    def visitor(n):
        mine = Client(app.local_url, verbose=False)
        for _ in range(6):
            try:
                answers.append(top5(classify(mine, IMAGES[n % 2], "original")[2]))
            except Exception as err:  # noqa: BLE001
                errors.append(err)

    visitors = [threading.Thread(target=visitor, args=(n,)) for n in range(8)]
    for t in visitors:
        t.start()
    time.sleep(1.5)
    os.kill(victim, signal.SIGKILL)
    for t in visitors:
        t.join(300)
    assert not errors and len(answers) == 48, errors[:1]
    print(f"48 of 48 answered; {lab.server.retried} call(s) retried after the kill")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        details = context._get_global_client().get_serve_details()["applications"][target.app]["deployments"]
        now = {r.get("pid") for d in details.values() for r in d["replicas"] if r["state"] == "RUNNING"}
        if now and victim not in now:
            break
        time.sleep(0.5)
    assert now and victim not in now, now


def test_an_address_where_nothing_listens_is_one_clear_line_within_30_s(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "deit_demo", "classify", IMAGES[0], "--model", "deit_tiny",
                          "--weights", "random", "--store", str(tmp_path), "--cluster", f"127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert time.monotonic() - started < 30
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith(
        f"error: No Ray cluster answers at 127.0.0.1:{port}"), out.stderr[-800:]
