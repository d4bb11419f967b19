"""Soak test: N classifications through the app with its serving settings; resident memory and open file
descriptors must stay flat.

    python benchmarks/soak.py [--requests 1000] [--warmup 100] [--model deit_tiny] [--users 2] [--tolerance 0.05]

Starts the app in this process on 127.0.0.1 (offline, random weights unless the model ships its own), sends the
requests from `--users` gradio_client users in turn over the example images (with a bad upload every 50th request,
which must be answered with an error and leave nothing behind), samples the process's RSS and open descriptors
after the warm-up and every 100 requests, and exits 1 if either grew by more than the tolerance.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import psutil  # noqa: E402

from deit_demo.present.report import to_markdown  # noqa: E402
from deit_demo.variants.pipeline import example_images  # noqa: E402


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else psutil.Process().num_fds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--model", default="deit_tiny")
    parser.add_argument("--users", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=0.05)
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    from deit_demo.app.process import configure_server_process
    from deit_demo.app.ui import build_app, launch_kwargs
    from deit_demo.service.config import AppConfig

    configure_server_process()  # as app.py does: this script's process is the server's

    # Classification memory only: no background conversions for Auto (the requests ask for the original).
    demo = build_app(AppConfig(model=args.model, offline=True, auto_prepare=False))
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **launch_kwargs(demo.lab))
    process = psutil.Process()
    images = [str(p) for p in example_images()]
    bad = tempfile.NamedTemporaryFile(suffix=".jpg", delete=False)
    bad.write(b"this is text, not a picture")
    bad.close()
    clients = [Client(demo.local_url, verbose=False) for _ in range(args.users)]
    counts = {"ok": 0, "refused as expected": 0, "unexpected": 0}
    samples, lock = [], threading.Lock()
    start = time.perf_counter()
    for i in range(args.requests):
        client = clients[i % len(clients)]
        try:
            if i % 50 == 49:
                try:
                    client.predict(handle_file(bad.name), "", args.model, "original", api_name="/classify")
                    counts["unexpected"] += 1
                except Exception as err:
                    counts["refused as expected" if "not an image" in str(err) else "unexpected"] += 1
            else:
                client.predict(handle_file(images[i % len(images)]), "", args.model, "original", api_name="/classify")
                counts["ok"] += 1
        except Exception as err:  # counted and shown: a soak must finish to report
            counts["unexpected"] += 1
            print(f"request {i}: {type(err).__name__}: {err}", file=sys.stderr)
        done = i + 1
        if done == args.warmup or (done > args.warmup and done % 100 == 0) or done == args.requests:
            with lock:
                samples.append({"requests": done, "rss MiB": process.memory_info().rss / 2**20, "open fds": open_fds(),
                                "elapsed s": time.perf_counter() - start})
    demo.close()
    os.unlink(bad.name)
    base, last = samples[0], samples[-1]
    rss_growth = last["rss MiB"] / base["rss MiB"] - 1
    fd_growth = last["open fds"] / base["open fds"] - 1
    print(f"\n{args.requests} classifications of {args.model} through the app ({args.users} clients, every 50th a "
          f"bad upload); warm-up {args.warmup}; {counts}\n")
    print(to_markdown([{k: (round(v, 1) if isinstance(v, float) else v) for k, v in s.items()} for s in samples]))
    verdict = "flat" if max(rss_growth, fd_growth) <= args.tolerance else "GREW"
    print(f"\nafter warm-up: RSS {rss_growth:+.1%}, open fds {fd_growth:+.1%} (tolerance {args.tolerance:.0%}): "
          f"{verdict}")
    return 0 if verdict == "flat" and not counts["unexpected"] else 1


if __name__ == "__main__":
    sys.exit(main())
