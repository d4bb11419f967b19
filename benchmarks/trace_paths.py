"""Which of the library's modules, and how many threads, one classification and one benchmark cross.

    python benchmarks/trace_paths.py [--model deit_tiny] [--auto onnx_int8]

Both go through the app's handlers with a `Lab`, as a visitor's request does (no server: the path from the handler
down). Everything is loaded and Auto is ready before the traced call, so the trace is the steady path a visitor
takes, not a first-time conversion. Python's profile hook records each call into `deit_demo`; threads are counted by
name (a pool's numbered workers count once). docs/ARCHITECTURE.md quotes what this prints.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from deit_demo.app import handlers  # noqa: E402  (after the environment above)
from deit_demo.app.process import configure_server_process  # noqa: E402
from deit_demo.serve.server import SERVING  # noqa: E402
from deit_demo.service import AUTO, AppConfig, Lab, ServeSettings, example_images  # noqa: E402

# One steady classification may cross at most this many of the library's modules, on this many threads
# (docs/ARCHITECTURE.md, "One classification"; tests/test_serve.py holds it there).
MAX_MODULES, MAX_THREADS = 8, 3

PACKAGE = os.path.dirname(os.path.abspath(handlers.__file__)).rsplit(os.sep, 1)[0]


class Recorder:
    """Modules of `deit_demo` entered, in first-call order, and the threads that entered them."""

    def __init__(self):
        self.modules: dict[str, set[str]] = defaultdict(set)
        self._lock = threading.Lock()

    def __call__(self, frame, event, arg):
        if event != "call":
            return
        path = frame.f_code.co_filename
        if path.startswith(PACKAGE):
            module = "deit_demo." + path[len(PACKAGE) + 1:-3].replace(os.sep, ".").removesuffix(".__init__")
            thread = re.sub(r"[_-]?\d+$", "", threading.current_thread().name)
            with self._lock:
                self.modules[module].add(thread)

    def __enter__(self):
        sys.setprofile(self)
        threading.setprofile(self)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)


class Progress:
    def __call__(self, *args, **kwargs):
        pass


def trace_classification(lab: Lab, model: str) -> Recorder:
    """One steady classification through the Classify handler, everything already loaded, recorded; the serving
    thread is made to idle out first, so that its start is part of the trace, as it is for a visitor after a pause."""
    image = str(example_images()[0])
    idle, SERVING.idle_s = SERVING.idle_s, 0.2
    try:
        handlers.classify(lab, [image], [""], [model], [AUTO])  # loads everything a classification uses
        for _ in range(100):
            if SERVING._thread is None:
                break
            time.sleep(0.05)
    finally:
        SERVING.idle_s = idle
    with Recorder() as recorder:
        handlers.classify(lab, [image], [""], [model], [AUTO])
    return recorder


def report(title: str, recorder: Recorder) -> None:
    threads = sorted({t for names in recorder.modules.values() for t in names})
    print(f"\n{title}: {len(recorder.modules)} modules, {len(threads)} threads ({', '.join(threads)})")
    for module, names in recorder.modules.items():
        print(f"  {module:36s} {', '.join(sorted(names))}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_tiny")
    parser.add_argument("--auto", default="onnx_int8", help="what Auto may serve (one quick candidate)")
    parser.add_argument("--variants", default="original,scripted_int8", help="what the benchmark times")
    args = parser.parse_args()
    configure_server_process()
    lab = Lab(AppConfig(model=args.model, weights="random", auto_prepare=False,
                        serve=ServeSettings(auto_variants=tuple(args.auto.split(",")))))
    variants = args.variants.split(",")
    lab.server.auto.prepare(args.model)
    list(handlers.benchmark(lab, args.model, variants, 2, 1, 1, "1", progress=Progress()))
    report(f"One classification (Classify button, Auto, {args.model})", trace_classification(lab, args.model))
    with Recorder() as benchmark:
        list(handlers.benchmark(lab, args.model, variants, 3, 1, 1, "1", progress=Progress()))
    report(f"One benchmark ({', '.join(variants)}; {args.model}, reused files)", benchmark)
    return 0


if __name__ == "__main__":
    sys.exit(main())
