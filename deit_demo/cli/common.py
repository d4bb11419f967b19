"""What every command shares: the Lab a command builds from its flags, progress bars that always close, and where
human output and JSON go."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class TqdmProgress:
    """The library's progress callback (what, done, total) as tqdm bars on stderr: one bar per stage."""

    def __init__(self):
        self.bar = None
        self.stage = None

    def __call__(self, what: str, done: int, total: int) -> None:
        from tqdm import tqdm

        stage = (what.split(" ", 1)[0], total)
        if self.bar is None or stage != self.stage:
            self.close()
            self.bar, self.stage = tqdm(total=total, desc=stage[0], file=sys.stderr, leave=False, disable=None), stage
        self.bar.set_postfix_str(what.split(" ", 1)[1] if " " in what else "", refresh=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def progress_bars() -> Iterator[TqdmProgress]:
    """The bars of one job, closed however it ends (an error or Ctrl-C leaves no half-drawn bar)."""
    bars = TqdmProgress()
    try:
        yield bars
    finally:
        bars.close()


def lab_for(args):
    from deit_demo.service import AppConfig, ClusterSettings, Lab, ServeSettings, parse_replicas

    cluster = None
    if getattr(args, "cluster", None):
        low, high = parse_replicas(getattr(args, "replicas", "1:2"))
        cluster = ClusterSettings(args.cluster, low, high, getattr(args, "replica_cpus", 1.0),
                                  getattr(args, "batch_max", 8), getattr(args, "batch_wait_ms", 0.0))
    # One user: no CPU kept for visitors, nothing to yield to, conversions in this process (whole tracebacks).
    return Lab(AppConfig(model=getattr(args, "model", None) or args.models.split(",")[0].strip(),
                         weights=args.weights, store_root=args.store, fallback_to_random=False,
                         eval_data=getattr(args, "data", None), isolate_conversions=False, cluster=cluster,
                         serve=ServeSettings(reserved_cpus=0, heavy_niceness=0)))


def emit(args, text: str = "") -> None:
    """Human output: stdout, or stderr when stdout carries JSON (--json -)."""
    print(text, file=sys.stderr if args.json == "-" else sys.stdout)


def write_json_out(target: str | None, payload: dict) -> None:
    from deit_demo.service import write_json

    if target:
        write_json(target, payload)
        if target != "-":
            print(f"wrote {target}", file=sys.stderr)
