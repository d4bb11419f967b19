"""What measuring peak memory costs the latency it sits beside.

    python benchmarks/rss_cost.py [--model deit_small] [--threads 2] [--rounds 30]

Three ways of wrapping the same timed block of a model's forward passes, interleaved round by round in one process:
no memory measurement at all; the kernel's high-water mark reset before the block and read after it
(`timing.PeakRss`, what the timing loop uses); and a thread polling RSS every 5 ms beside the timed calls (the sampler
the timing loop used before). Prints each one's median and p90 per call, and the ratio to "none".
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from deit_demo.core.cpus import machine_info  # noqa: E402
from deit_demo.core.models import load_model  # noqa: E402
from deit_demo.measure.timing import LatencyStats, PeakRss  # noqa: E402
from deit_demo.present.report import machine_line  # noqa: E402


class PollingSampler:
    """A thread that reads the process's RSS every `interval_s` while the block runs (psutil)."""

    def __init__(self, interval_s: float = 0.005):
        import psutil

        self._proc, self.interval_s = psutil.Process(), interval_s
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Nothing:
    peak = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


MODES = {"none": Nothing, "high-water mark (PeakRss)": PeakRss, "5 ms polling thread": PollingSampler}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=int, default=3, help="calls per block; the first of each is dropped")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, "random")
    x = torch.randn(1, 3, loaded.spec.input_size, loaded.spec.input_size, generator=torch.Generator().manual_seed(0))
    samples: dict[str, list[float]] = {name: [] for name in MODES}
    peaks: dict[str, int] = {name: 0 for name in MODES}
    with torch.inference_mode():
        for _ in range(3):
            loaded.model(x)
        for _ in range(args.rounds):
            for name, mode in MODES.items():
                with mode() as memory:
                    for call in range(args.block):
                        start = time.perf_counter()
                        loaded.model(x)
                        if call:
                            samples[name].append((time.perf_counter() - start) * 1000)
                peaks[name] = max(peaks[name], memory.peak)
    base = LatencyStats(samples["none"]).median_ms
    print(f"{args.model}, eager fp32, batch 1, {args.threads} threads, {args.rounds} rounds x {args.block - 1} timed "
          f"calls per mode, interleaved; {machine_line(machine_info())}\n")
    print(f"{'memory measurement':28s} {'median ms':>10s} {'p90 ms':>8s} {'vs none':>8s} {'peak RSS':>9s}")
    for name, values in samples.items():
        stats = LatencyStats(values)
        peak = f"{peaks[name] / 2**20:.0f} MiB" if peaks[name] else "-"
        print(f"{name:28s} {stats.median_ms:10.2f} {stats.p90_ms:8.2f} {stats.median_ms / base:7.3f}x {peak:>9s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
