"""Decide across a fleet, on a real Ray cluster on this machine: a head and two worker nodes labelled as two kinds,
every node on 127.0.0.1, shut down in a `finally`. No mock of Ray: jobs run as tasks on the worker nodes."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from deit_demo.service import (  # noqa: E402
    AppConfig,
    BenchSettings,
    Cancelled,
    ClusterSettings,
    Lab,
    SweepSettings,
    expand,
    load_results,
    node_kinds,
    run_fleet,
    save_fleet,
)

ROOT = Path(__file__).resolve().parents[1]
QUICK = dict(models=["deit_tiny"], variants=["original", "onnx_int8"], runs=3, warmup=1, weights="random")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    os.environ["DEIT_DEMO_CLUSTER_STORE"] = str(tmp_path_factory.mktemp("fleet-stores"))
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                         "labels": {"role": "head"}})
    try:
        made.workers = [made.add_node(num_cpus=1, labels={"tier": name}) for name in ("a", "b")]
        made.wait_for_nodes()
        yield made
    finally:
        if ray.is_initialized():
            ray.shutdown()
        made.shutdown()


@pytest.fixture(scope="module")
def lab(cluster, tmp_path_factory):
    made = Lab(AppConfig(model="deit_tiny", weights="random", store_root=str(tmp_path_factory.mktemp("front-store")),
                         auto_prepare=False, isolate_conversions=False,
                         cluster=ClusterSettings(cluster.address)))
    try:
        yield made
    finally:
        made.close()


def test_node_kinds_name_what_decides_speed_and_count_their_nodes(lab):
    kinds = node_kinds(lab)
    assert len(kinds) == 3 and sum(len(k.nodes) for k in kinds) == 3
    labels = sorted(json.dumps(k.facts["labels"]) for k in kinds)
    assert labels == ['{"role": "head"}', '{"tier": "a"}', '{"tier": "b"}']
    head = next(k for k in kinds if k.facts["labels"] == {"role": "head"})
    assert head.serves and not any(k.serves for k in kinds if k is not head)  # the front end's node is said
    for kind in kinds:
        assert kind.facts["cpus"] == 1 and kind.facts["cpu"] in kind.name and "avx2" in kind.facts["isa"]


def test_the_cli_lists_the_kinds(cluster, tmp_path):
    out = subprocess.run([sys.executable, "-m", "deit_demo", "nodes", "--cluster", cluster.address],
                         capture_output=True, text=True, timeout=180, cwd=ROOT,
                         env={**os.environ, "DEIT_DEMO_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-1500:]
    assert "tier=a" in out.stdout and "tier=b" in out.stdout and "serves visitors" in out.stdout


def test_a_sweep_on_each_kind_gives_a_file_per_kind_and_a_combined_one_compare_overlays(lab, tmp_path):
    arrived = {}
    outcome = run_fleet(lab, "sweep", SweepSettings(**QUICK), on_rows=lambda k, rows: arrived.setdefault(k.name, 1))
    kinds = {r.kind.facts["labels"].get("tier") for r in outcome.kinds}
    assert kinds == {"a", "b"} and all(r.payload is not None for r in outcome.kinds), [r.error for r in outcome.kinds]
    assert set(arrived) == {r.kind.name for r in outcome.kinds}  # rows came in per node while it ran
    files = save_fleet(outcome, tmp_path / "sweep")
    assert len(files) == 3
    for result in outcome.kinds:
        part = result.payload
        assert part["node_kind"] == result.kind.name and part["node"] in result.kind.nodes
        assert part["machine"]["cpu"] and part["run"]["packages"] and part["recommendation"]["sentence"]
        assert {(r["model"], r["variant"]) for r in part["rows"]} == {("deit_tiny", "original"),
                                                                       ("deit_tiny", "onnx_int8")}
        assert all(r["threads"] == 1 for r in part["rows"] if r.get("median_ms"))  # the node's CPUs, not more
    assert all(line.startswith("on ") and ("Recommend" in line or "deit_tiny" in line)
               for line in outcome.recommendations()), outcome.recommendations()
    combined = load_results(files[-1])
    parts = expand(combined)
    assert [p["node_kind"] for p in parts] == [r.kind.name for r in outcome.kinds]
    out = subprocess.run([sys.executable, "-m", "deit_demo", "compare", str(files[-1])], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.count("tier=") >= 2 and "speed-up" in out.stdout


def test_heavy_jobs_leave_the_serving_node_and_their_files_come_back_checked(lab):
    here = ray.get_runtime_context().get_node_id()
    outcome = lab.convert("deit_tiny", ["onnx_int8"])
    row = next(r for r in outcome.results if r.variant == "onnx_int8")
    assert row.status == "ok" and row.notes["converted_on"] != here[:12]
    assert Path(row.path).is_relative_to(lab.store_root)  # in the store replicas are shipped from
    found = lab.store.lookup("deit_tiny", outcome.loaded.weights_id, "onnx_int8",
                             __import__("deit_demo.variants", fromlist=["x"]).get_variant("onnx_int8").version)
    assert found is not None and found.sha256 == row.sha256
    _, results = lab.benchmark("deit_tiny", BenchSettings(variants=["original"], runs=3, warmup=1, profile=False))
    assert results[0].status == "ok" and results[0].threads == 1


def test_a_stop_cancels_the_visitors_task_and_a_deadline_is_reported(lab):
    stop = threading.Event()
    threading.Timer(3.0, stop.set).start()
    began = time.monotonic()
    with pytest.raises(Cancelled):
        run_fleet(lab, "sweep", SweepSettings(**{**QUICK, "runs": 200}), cancel=stop)
    assert time.monotonic() - began < 60
    outcome = run_fleet(lab, "sweep", SweepSettings(**{**QUICK, "runs": 200}), deadline_s=4)
    assert all("outlived its deadline of 4 s" in r.error for r in outcome.kinds), [r.error for r in outcome.kinds]
    assert all(r.seconds < 60 for r in outcome.kinds)


def test_a_node_removed_mid_sweep_says_so_and_the_other_kind_completes(lab, cluster, tmp_path):
    worker_b = cluster.workers[1]
    removal = threading.Thread(target=cluster.remove_node, args=(worker_b,))

    def remove_once_b_has_begun(kind, rows):  # its first row is in: the sweep is under way there
        if kind.facts["labels"].get("tier") == "b" and removal.ident is None:
            removal.start()

    try:  # enough runs that b's second variant is still timing when its node goes
        outcome = run_fleet(lab, "sweep", SweepSettings(**{**QUICK, "runs": 200}), on_rows=remove_once_b_has_begun)
    finally:
        if removal.ident is not None:
            removal.join()
    assert removal.ident is not None, "b never reported a row, so its node was never removed"
    by_tier = {r.kind.facts["labels"].get("tier"): r for r in outcome.kinds}
    assert by_tier["a"].payload is not None and not by_tier["a"].error
    assert by_tier["b"].payload is None and "was lost mid-sweep" in by_tier["b"].error, by_tier["b"].error
    files = save_fleet(outcome, tmp_path / "sweep")
    combined = json.loads(files[-1].read_text())
    lost = [r for r in combined["rows"] if r.get("status") == "failed"]
    assert lost and "was lost mid-sweep" in lost[0]["reason"] and lost[0]["node_kind"] == by_tier["b"].kind.name
