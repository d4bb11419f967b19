"""A fleet sweep on a local two-kind cluster: the worked example in docs/SCALING.md.

    python benchmarks/fleet.py [--models deit_tiny,deit_small] [--variants original,onnx_int8,pt2e_int8] [--runs 10]

Starts a Ray cluster on this machine (a head and two worker nodes with one CPU each, labelled as two kinds, every node
on 127.0.0.1), runs the sweep on one node of each kind at once (as `deit-demo sweep --each-kind` does), prints each
kind's table and recommendation and the combined file's overlay (`compare`), then runs it again and removes one
worker node once its first rows are in, to show what a kind whose node dies reports. Shuts everything down in a
`finally`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from deit_demo.present.report import to_markdown  # noqa: E402
from deit_demo.service import (  # noqa: E402
    AppConfig,
    ClusterSettings,
    Lab,
    SweepSettings,
    compare,
    expand,
    load_results,
    run_fleet,
    save_fleet,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="deit_tiny,deit_small")
    parser.add_argument("--variants", default="original,onnx_int8,pt2e_int8")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="deit-fleet-"))
    os.environ["DEIT_DEMO_CLUSTER_STORE"] = str(folder / "node-stores")
    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    lab = None
    try:
        workers = [cluster.add_node(num_cpus=1, labels={"pool": name}) for name in ("a", "b")]
        cluster.wait_for_nodes()
        print(f"cluster of 3 nodes up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        lab = Lab(AppConfig(model="deit_tiny", weights="random", store_root=str(folder / "front"),
                            auto_prepare=False, isolate_conversions=False, cluster=ClusterSettings(cluster.address)))
        settings = SweepSettings(models=args.models, variants=args.variants, runs=args.runs, warmup=2,
                                 weights="random")
        began = time.monotonic()
        outcome = run_fleet(lab, "sweep", settings)
        wall = time.monotonic() - began
        files = save_fleet(outcome, folder / "sweep")
        for result in outcome.kinds:
            print(f"\n## {result.kind.name}: {result.seconds:.0f} s on node {result.node[:12]}")
            rows = (result.payload or {}).get("rows") or []
            print(to_markdown([{k: r.get(k) for k in ("model", "variant", "threads", "median_ms", "p90_ms",
                                                         "size_bytes", "status")} for r in rows]))
        print(f"\nthe sweep on both kinds at once: {wall:.0f} s of wall time")
        for line in outcome.recommendations():
            print(f"recommendation {line}")
        latency, _ = compare(expand(load_results(files[-1])))
        print("\ncombined file, overlaid by compare:\n" + to_markdown(latency))

        removal = threading.Thread(target=cluster.remove_node, args=(workers[1],))
        removed_at: list[float] = []

        def remove_once_b_has_begun(kind, rows) -> None:  # its first rows are in: the sweep is under way there
            if kind.facts["labels"].get("pool") == "b" and not removed_at:
                removed_at.append(time.monotonic() - began)
                removal.start()

        began = time.monotonic()
        again = run_fleet(lab, "sweep", settings, on_rows=remove_once_b_has_begun)
        if removed_at:
            removal.join()
        took = time.monotonic() - began
        when = f"{removed_at[0]:.0f} s into the sweep, after its first rows" if removed_at else "never (no rows)"
        print(f"\nwith the pool=b node removed {when} ({took:.0f} s in all):")
        for result in again.kinds:
            rows = (result.payload or {}).get("rows")
            print(f"- {result.kind.name}: " + (f"{len(rows)} rows, saved" if rows else f"no result: {result.error} "
                                               f"({len(result.rows_so_far)} rows had come in)"))
        save_fleet(again, folder / "sweep_removed")
        print(f"\nfiles in {folder}")
    finally:
        if lab is not None:
            lab.close()
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
