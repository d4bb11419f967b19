"""Ray Serve against the in-process server, at equal CPUs, through the real app (Gradio, HTTP visitors).

    python benchmarks/cluster.py [--model deit_base] [--variant pt2e_int8] [--small deit_tiny] [--users 8]
                                 [--requests 12]

On this machine's CPUs (2 here), three ways to answer 8 visitors classifying DeiT-B, each an app on 127.0.0.1 with
random weights, the visitors in child processes over HTTP as browsers are (benchmarks/load.py's `phase`):
  (a) the in-process server (Auto settled on --variant, with its lanes);
  (b) `--cluster local`: Ray Serve, 1 replica x 2 threads;
  (c) `--cluster local`: Ray Serve, 2 replicas x 1 thread.
Then Ray's added latency on the small model (one visitor at a time, in-process against (b)'s shape), and one
replica's cold start on a store that already holds the file: from the deployment asked for to its first answer,
split into the worker getting there, receiving and checking the file, loading (and compiling) it, the first pass.
The last line is `cluster/in-process throughput = X` (c's images/s over a's, or b's if faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local head: no token file written to ~/.ray

from load import percentile, phase  # noqa: E402  (beside this script)

from deit_demo.core.cpus import machine_info, usable_cpus  # noqa: E402
from deit_demo.present.report import machine_line, to_markdown  # noqa: E402


def app_for(args, store: str, cluster=None, variant: str | None = None):
    from deit_demo.app.ui import build_app, launch_kwargs
    from deit_demo.service import AppConfig, ServeSettings

    auto = (variant,) if variant else ()
    demo = build_app(AppConfig(model=args.model, weights="random", store_root=store, auto_prepare=False,
                               isolate_conversions=False, cluster=cluster, serve=ServeSettings(auto_variants=auto)))
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **launch_kwargs(demo.lab))
    return demo


def row(name: str, record: dict) -> dict:
    lat = record["latency_ms"]
    return {"path": name, "answered": f"{record['ok']}/{record['ok'] + record['errors'] + record['queue_full']}",
            "p50 ms": f"{percentile(lat, 50):.0f}", "p95 ms": f"{percentile(lat, 95):.0f}",
            "images/s": f"{record['ok'] / record['wall_s']:.2f}",
            "per pass": f"{sum(record['batch']) / max(1, len(record['batch'])):.1f}",
            "served by": ",".join(sorted(record["served_by"]))}


def loaded_phase(url: str, args, model: str, variant: str) -> dict:
    phase(url, 1, 2, model, variant)  # warm: deployed, compiled, first passes done
    phase(url, args.users, 2, model, variant)
    return phase(url, args.users, args.requests, model, variant, 19)


def free(demo, model: str, variant: str) -> None:
    """Delete a deployment, so that its CPUs are free for the next (Ray places a replica only where its CPUs are)."""
    from ray import serve

    serve.delete(demo.lab.server._deployed.pop((model, variant, None)).app, _blocking=True)


def cold_start(demo, args) -> dict:
    """A fresh replica of (model, variant) on a node whose store holds the file already."""
    from ray import serve

    from deit_demo.cluster.server import deploy
    from deit_demo.core.images import crop, load_image
    from deit_demo.service import example_images

    server = demo.lab.server
    key = (args.model, args.variant, None)
    serve.delete(server._deployed.pop(key).app, _blocking=True)
    loaded = demo.lab.model(args.model)
    began = time.time()
    made = deploy(loaded, args.variant, server.runners.store, server.cluster, server.attached)
    tensor = crop(load_image(example_images()[0]), loaded.spec)
    made.handle.classify.remote(tensor).result(timeout_s=600)
    total = time.time() - began
    info = made.handle.info.remote().result(timeout_s=60)
    t = info["timings"]
    server._deployed[key] = made
    return {"total_s": total, "to_replica_s": t["init_at"] - began, "process_age_s": t["process_s"],
            "receive_s": t.get("receive_s", 0.0), "load_s": t["init_s"] - t.get("receive_s", 0.0),
            "first_pass_s": t.get("first_pass_ms", 0.0) / 1e3}


def main() -> int:
    import tempfile

    from deit_demo.service import ClusterSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_base")
    parser.add_argument("--variant", default="pt2e_int8")
    parser.add_argument("--small", default="deit_tiny", help="the model Ray's added latency is measured on")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=12, help="requests per user in the measured phase")
    parser.add_argument("--sequential", type=int, default=40, help="one visitor's requests, for the added latency")
    args = parser.parse_args()
    cpus = usable_cpus()
    store = tempfile.mkdtemp(prefix="deit-cluster-bench-")
    rows, added, cold = [], {}, {}
    print(f"{machine_line(machine_info())}; {args.users} visitors x {args.requests} requests, {args.model} "
          f"{args.variant}, random weights", file=sys.stderr)

    demo = app_for(args, store, variant=args.variant)  # (a) in-process: Auto settled on the variant, with lanes
    try:
        url = demo.local_url
        demo.lab.server.auto.wait(args.model)
        rows.append(row(f"in-process ({cpus} CPUs)", loaded_phase(url, args, args.model, "auto")))
        phase(url, 1, 2, args.small, args.variant)
        added["in-process"] = phase(url, 1, args.sequential, args.small, args.variant)
    finally:
        demo.close()
        demo.lab.close()
    shapes = [("Ray Serve, 1 replica x 2 threads", ClusterSettings("local", 1, 1, float(cpus))),
              ("Ray Serve, 2 replicas x 1 thread", ClusterSettings("local", 2, 2, 1.0))]
    for name, settings in shapes:
        started = time.perf_counter()
        demo = app_for(args, store, cluster=settings)
        attached_s = time.perf_counter() - started
        try:
            url = demo.local_url
            rows.append(row(name, loaded_phase(url, args, args.model, args.variant)))
            rows[-1]["start s"] = f"{attached_s:.1f}"
            if settings.min_replicas == 1:
                free(demo, args.model, args.variant)  # the small model's replica needs the CPUs the big one holds
                phase(url, 1, 2, args.small, args.variant)
                added["ray"] = phase(url, 1, args.sequential, args.small, args.variant)
            else:
                cold = cold_start(demo, args)
        finally:
            demo.close()
            demo.lab.close()
    print()
    print(to_markdown(rows))
    p50 = {k: percentile(v["latency_ms"], 50) for k, v in added.items()}
    print(f"\n{args.small} {args.variant}, one visitor at a time, {args.sequential} requests: in-process p50 "
          f"{p50['in-process']:.1f} ms, Ray Serve (1 replica x {cpus} threads) p50 {p50['ray']:.1f} ms: Ray adds "
          f"{p50['ray'] - p50['in-process']:.1f} ms per request")
    if cold:
        print(f"\ncold start of one {args.model} {args.variant} replica (its node's store holds the file): "
              f"{cold['total_s']:.1f} s = until the replica's code runs {cold['to_replica_s']:.1f} s (its worker "
              f"process was {cold['process_age_s']:.1f} s old then) + file received and checked "
              f"{cold['receive_s']:.1f} s + loaded{' and compiled' if 'pt2e' in args.variant else ''} "
              f"{cold['load_s']:.1f} s + first pass {cold['first_pass_s']:.1f} s")
    ips = [float(r["images/s"]) for r in rows]
    print(f"\ncluster/in-process throughput = {max(ips[1:]) / ips[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
