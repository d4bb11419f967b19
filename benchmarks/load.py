"""Load test of the app: N simulated users classify the examples while one DeiT-B benchmark runs.

    python benchmarks/load.py [--users 8] [--requests 6] [--model deit_base] [--variant auto] [--bench-model deit_base]
                              [--client http|gradio_client] [--visitors-nice 19] [--idle-phases 1]
                              [--visitor-processes each|one]

Starts the app in this process on 127.0.0.1 (random weights, offline; traffic never leaves loopback), waits until
Auto has prepared its variant for the model (what a Space does in the background after start), then:
  1. baseline: every user classifies the examples with no benchmark running; by default each user talks to Gradio's
     HTTP queue as a browser tab does (one session; upload, join the queue, read the event stream), in a child
     process that yields the CPUs to the server, since real visitors' clients run on their own machines;
  2. under load: the same while one user runs a benchmark of the bench model (original, scripted_int8, onnx_int8).
Reports success rate, p50/p95 classification latency in both phases, queue-full rejections, whether every user got
the same top-1 for the same image, how many visitors shared each forward pass, the model's time per image, the share
of the machine's CPU the simulated visitors themselves took (real visitors would not take it), and the server
process's peak RSS.
`--variant original` gives the figures from before Auto (every answer eager fp32).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from deit_demo.core.cpus import machine_info, usable_cpus  # noqa: E402  (after the environment above)
from deit_demo.measure import timing  # noqa: E402
from deit_demo.present.report import machine_line, to_markdown  # noqa: E402
from deit_demo.variants.pipeline import example_images  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return timing.LatencyStats(values).percentile(q) if values else float("nan")


def gradio_client_predict(url: str):
    """One visitor through gradio_client (what a Python user of the app runs): ~100 ms of client CPU per request."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)

    def predict(image, model: str, variant: str) -> list:
        return client.predict(handle_file(str(image)), "", model, variant, api_name="/classify")
    return predict


def http_predict(url: str):
    """One visitor through Gradio's HTTP queue, as a browser tab does: one session for all its requests; upload the
    image, join the queue, read the answer from the session's event stream. Little client CPU, so the simulated
    visitors take less of the server's CPUs. (Gradio's `/call/` API instead opens a new session per request, and
    the server builds each new session's state for every component of the app.)"""
    import json
    import uuid

    import httpx

    http = httpx.Client(base_url=url.rstrip("/") + "/gradio_api", timeout=120)
    config = httpx.get(url.rstrip("/") + "/config", timeout=60).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "classify")
    session = uuid.uuid4().hex

    def predict(image, model: str, variant: str) -> list:
        with open(image, "rb") as handle:
            uploaded = http.post("/upload", files={"files": (image.name, handle)})
        uploaded.raise_for_status()
        file = {"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}
        joined = http.post("/queue/join", json={"data": [file, "", model, variant], "fn_index": fn_index,
                                                "session_hash": session, "event_data": None, "trigger_id": None})
        if joined.status_code == 503:
            raise RuntimeError(f"queue full: {joined.text[:80]}")
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        with http.stream("GET", "/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                    if not message.get("success"):
                        raise RuntimeError(f"error: {message.get('output')}")
                    return message["output"]["data"]
        raise RuntimeError("the event stream ended without an answer")
    return predict


CLIENTS = {"http": http_predict, "gradio_client": gradio_client_predict}
PROCESSES = {"each": "a process each", "one": "one process"}


def user(predict, model: str, variant: str, requests: int, record: dict, lock: threading.Lock) -> None:
    images = example_images()
    for i in range(requests):
        image = images[i % len(images)]
        start = time.perf_counter()
        try:
            out = predict(image, model, variant)
            main = out[2].get("value", out[2]) if isinstance(out[2], dict) and "value" in out[2] else out[2]
            shared = re.search(r"(\d+) visitors' images", out[1])
            forward = float(re.search(r"\*\*([\d.]+) ms\*\* for the forward pass", out[1]).group(1))
            with lock:
                record["batch"].append(int(shared.group(1)) if shared else 1)
                record["forward_ms"] += forward / record["batch"][-1]  # its share of the pass it was in
                record["served_by"].add(re.search(r"forward pass \(([a-z0-9_]+),", out[1]).group(1))
                record["latency_ms"].append((time.perf_counter() - start) * 1000)
                record["top1"].setdefault(image.name, set()).add(main["label"])
                record["ok"] += 1
        except Exception as err:  # counted and classified, never hidden
            text = str(err).lower()
            with lock:
                record["queue_full" if "queue" in text and "full" in text else "errors"] += 1
                record["messages"].append(f"{type(err).__name__}: {str(err)[:120]}")


def new_record() -> dict:
    return {"latency_ms": [], "top1": {}, "ok": 0, "errors": 0, "queue_full": 0, "messages": [], "batch": [],
            "served_by": set(), "forward_ms": 0.0, "visitors_cpu_s": 0.0}


def merge(records: list[dict]) -> dict:
    out = new_record()
    for rec in records:
        for name in ("latency_ms", "messages", "batch"):
            out[name] += rec[name]
        for name in ("ok", "errors", "queue_full", "forward_ms", "visitors_cpu_s"):
            out[name] += rec[name]
        out["served_by"] |= rec["served_by"]
        for image, labels in rec["top1"].items():
            out["top1"].setdefault(image, set()).update(labels)
    return out


def phase(url: str, users: int, requests: int, model: str, variant: str, nice: int = 0,
          client: str = "http", processes: str = "each") -> dict:
    """The users run in child processes, as real visitors run on other machines: in the server's own process their
    clients would compete with it for the GIL and make it look slower than it is. By default each visitor has its own
    process (`processes="each"`): in one shared process their clients' Python (reading the answer, uploading the next
    image) took turns on one GIL, so after a shared forward pass the last of them rejoined the queue late.
    With `nice` > 0 the children also yield the CPUs to the server whenever both want them (real visitors' clients run
    on their own CPUs); their latency still counts any time their client waited for a CPU."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    groups = [1] * users if processes == "each" else [users]
    start = context.Barrier(len(groups) + 1)  # every visitor connected before any of them starts
    children = [context.Process(target=_phase_child, args=(url, n, requests, model, variant, results, nice, client,
                                                           start))
                for n in groups]
    for child in children:
        child.start()
    start.wait(timeout=300)
    began = time.perf_counter()
    records = [results.get() for _ in children]
    wall = time.perf_counter() - began
    for child in children:
        child.join()
    record = merge(records)
    record["wall_s"] = wall
    return record


def _phase_child(url: str, users: int, requests: int, model: str, variant: str, results, nice: int, client: str,
                 start) -> None:
    if nice:
        os.nice(nice)
    record, lock = new_record(), threading.Lock()
    predicts = [CLIENTS[client](url) for _ in range(users)]
    start.wait(timeout=300)
    cpu_start = time.process_time()
    threads = [threading.Thread(target=user, args=(predict, model, variant, requests, record, lock))
               for predict in predicts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record["visitors_cpu_s"] = time.process_time() - cpu_start  # what real visitors would spend on their own machines
    results.put(record)


def model_alone_ms(lab, model: str, runs: int = 12) -> float:
    """Median ms of one image through what Auto serves, on the serving thread with nothing else running: the host's
    speed at that moment (on a shared VM it moved 55-70 ms for DeiT-B pt2e_int8 within an evening)."""
    import torch

    from deit_demo.core.cpus import torch_threads
    from deit_demo.core.images import load_image, preprocess
    from deit_demo.serve.server import SERVING

    loaded = lab.model(model)
    choice = lab.server.auto.choice(loaded)
    runner = choice.runner if choice is not None and choice.runner is not None else loaded.model
    x = preprocess(load_image(example_images()[0]), loaded.spec)

    def timed() -> list[float]:
        out = []
        with torch_threads(lab.server.serve_threads()), torch.inference_mode():
            for _ in range(runs + 2):
                start = time.perf_counter()
                runner(x)
                out.append((time.perf_counter() - start) * 1000)
        return out[2:]
    return percentile(SERVING.run(timed), 50)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=6, help="classifications per user per phase")
    parser.add_argument("--model", default="deit_base", help="model the users classify with")
    parser.add_argument("--variant", default="auto", help="what the users ask for (auto: the app's default)")
    parser.add_argument("--max-batch-size", type=int, default=None, help="override AppConfig.max_batch_size")
    parser.add_argument("--idle-phases", type=int, default=1,
                        help="run the phase with no benchmark this many times, back to back (its spread)")
    parser.add_argument("--bench-model", default="deit_base")
    parser.add_argument("--bench-runs", type=int, default=10)
    parser.add_argument("--classify-threads", type=int, default=None, help="override ServeSettings.classify_threads")
    parser.add_argument("--classify-concurrency", type=int, default=None, help="override AppConfig's limit")
    parser.add_argument("--classify-lanes", type=int, default=None, help="override ServeSettings.classify_lanes")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="http",
                        help="how each visitor talks to the app: Gradio's HTTP queue, as a browser tab does (default), "
                             "or gradio_client (about 100 ms of client CPU per request, taken from the server here)")
    parser.add_argument("--visitors-nice", type=int, default=19,
                        help="niceness of the simulated visitors' process (19, the default: they yield the CPUs to "
                             "the server, as visitors on their own machines would; 0: they compete with it)")
    parser.add_argument("--visitor-processes", choices=("each", "one", "both"), default="each",
                        help="each: one process per simulated visitor (default; real visitors' clients do not share "
                             "a GIL); one: all of them in one process, as this script did before 2026-11-27; both: "
                             "idle phases alternate the two (each first), to compare them in one sitting")
    args = parser.parse_args()

    from gradio_client import Client

    from deit_demo.app.process import configure_server_process
    from deit_demo.app.ui import build_app, launch_kwargs
    from deit_demo.service.config import AppConfig

    config = AppConfig(model=args.model, offline=True)
    if args.classify_threads is not None:
        config.serve.classify_threads = args.classify_threads
    if args.classify_concurrency is not None:
        config.classify_concurrency = args.classify_concurrency
    if args.max_batch_size is not None:
        config.max_batch_size = args.max_batch_size
    if args.classify_lanes is not None:
        config.serve.classify_lanes = args.classify_lanes
    configure_server_process()  # as app.py does: this script's process is the server's
    demo = build_app(config)
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **launch_kwargs(demo.lab))
    url = demo.local_url
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from rss_cost import PollingSampler  # beside this script

    rss = PollingSampler(interval_s=0.05)  # the server's peak over the whole run; no timed call is in this process
    with rss:
        print(f"app on {url}; warming up {args.model} and converting the benchmark's variants...", file=sys.stderr)
        phase(url, 1, 1, args.model, args.variant)
        choice = demo.lab.server.auto.wait(args.model) if args.variant == "auto" else None
        bench_args = (args.bench_model, ["original", "scripted_int8", "onnx_int8"], 2, 1, usable_cpus(), "1")
        Client(url, verbose=False).predict(*bench_args, api_name="/benchmark")  # converts once, untimed

        modes = ["each", "one"] if args.visitor_processes == "both" else [args.visitor_processes]
        idle_modes = [modes[i % len(modes)] for i in range(max(1, args.idle_phases))]
        alone = [model_alone_ms(demo.lab, args.model)]
        baselines = [phase(url, args.users, args.requests, args.model, args.variant, args.visitors_nice, args.client,
                           mode) for mode in idle_modes]
        baseline = baselines[0]
        bench_out: dict = {}

        def run_benchmark() -> None:
            start = time.perf_counter()
            try:
                Client(url, verbose=False).predict(args.bench_model, ["original", "scripted_int8", "onnx_int8"],
                                                   args.bench_runs, 2, usable_cpus(), "1", api_name="/benchmark")
                bench_out["status"] = "ok"
            except Exception as err:
                bench_out["status"] = f"{type(err).__name__}: {err}"
            bench_out["seconds"] = time.perf_counter() - start

        bench_thread = threading.Thread(target=run_benchmark)
        bench_thread.start()
        time.sleep(2.0)  # let the benchmark get going
        loaded = phase(url, args.users, args.requests, args.model, args.variant, args.visitors_nice, args.client,
                       modes[0])
        bench_thread.join()
        alone.append(model_alone_ms(demo.lab, args.model))
    demo.close()

    print(f"\n{args.users} users x {args.requests} classifications of {args.model} (random weights) per phase; "
          f"benchmark of {args.bench_model}: {bench_out.get('status')} in {bench_out.get('seconds', 0):.0f} s; "
          f"usable CPUs {usable_cpus()}; classification: concurrency {config.classify_concurrency}, threads "
          f"{config.serve.classify_threads or 'all free'}, max batch {config.max_batch_size}; queue size "
          f"{config.queue_size}; simulated visitors: {args.client}, niceness {args.visitors_nice}, "
          f"processes: {args.visitor_processes}; "
          f"{machine_line(machine_info())}")
    if choice is not None:
        print(f"{choice.sentence()} (prepared in {choice.seconds:.0f} s; batch-1 medians {choice.median_ms}; "
              f"not used: {choice.rejected or 'none'})")
    print(f"the served variant alone, one image on the serving thread (the host's speed): {alone[0]:.1f} ms before "
          f"the phases, {alone[1]:.1f} ms after")
    print()
    rows = []

    def name(what: str, mode: str) -> str:
        return what + (f", visitors in {PROCESSES[mode]}" if len(modes) > 1 else "")
    idle = [(name("no benchmark" + (f" ({i + 1})" if len(baselines) > 1 else ""), mode), rec)
            for i, (mode, rec) in enumerate(zip(idle_modes, baselines))]
    for phase_name, rec in idle + [(name("benchmark running", modes[0]), loaded)]:
        total = rec["ok"] + rec["errors"] + rec["queue_full"]
        consistent = all(len(labels) == 1 for labels in rec["top1"].values())
        rows.append({"phase": phase_name, "success": f"{rec['ok']}/{total}",
                     "p50 ms": round(percentile(rec["latency_ms"], 50)),
                     "p95 ms": round(percentile(rec["latency_ms"], 95)), "queue full": rec["queue_full"],
                     "other errors": rec["errors"], "same top-1 for same image": "yes" if consistent else "NO",
                     "served by": ", ".join(sorted(rec["served_by"])),
                     "images per pass (mean, max)": f"{sum(rec['batch']) / max(1, len(rec['batch'])):.1f}, "
                                                    f"{max(rec['batch'], default=0)}",
                     "wall s": round(rec["wall_s"], 1),
                     "model's share of wall time": f"{rec['forward_ms'] / 1000 / rec['wall_s']:.0%}",
                     "ms per image in the model": round(rec["forward_ms"] / max(1, rec["ok"]), 1),
                     "simulated visitors' CPU": f"{rec['visitors_cpu_s'] / (rec['wall_s'] * usable_cpus()):.0%}"})
    print(to_markdown(rows))
    print(f"\npeak RSS of the server process: {rss.peak / 2**20:.0f} MiB")
    for message in ([m for rec in baselines for m in rec["messages"]] + loaded["messages"])[:5]:
        print(f"  error: {message}")
    if baseline["latency_ms"]:
        print(f"median slowdown under the benchmark: "
              f"{percentile(loaded['latency_ms'], 50) / percentile(baseline['latency_ms'], 50):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
