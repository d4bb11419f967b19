"""The CPUs this process may really use, what they can do, and how a thread's work uses them: torch's thread count
per OS thread, short-lived threads whose OpenMP team ends with them, niceness, and settling the heap after a load.

PyTorch's OpenMP thread count is per OS thread (``omp_set_num_threads`` sets the calling thread's ICV), so each job
sets its own count inside its worker thread; the budget makes the counts add up to at most the usable CPUs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import gc
import os
import platform
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")
CGROUP = Path("/sys/fs/cgroup")
CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, ISA flags) of this CPU from /proc/cpuinfo; ("", {}) where there is none."""
    model, flags = "", frozenset()
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = frozenset(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return model, flags


def cpu_flags() -> frozenset[str]:
    return cpu_info()[1]


def native_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16), and which."""
    found = [f for f in ("amx_bf16", "avx512_bf16") if f in cpu_flags()]
    return bool(found), ", ".join(found)


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may use: the affinity mask and the cgroup (v2 or v1) CPU quota both honoured."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_quota(cgroup)
    if quota is not None:
        count = min(count, quota)
    return max(1, count)


def cgroup_quota(cgroup: Path = CGROUP) -> int | None:
    """Whole CPUs allowed by the cgroup's quota (rounded down, at least 1), or None when unlimited."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, int(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return max(1, quota // period) if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def machine_info() -> dict:
    """What the numbers were measured on, so results from different machines can be compared."""
    model, flags = cpu_info()
    isa = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma", "avx_vnni"))
    return {"cpu": model or platform.processor() or platform.machine(), "isa": isa, "cores": os.cpu_count(),
            "usable_cpus": usable_cpus(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's thread count set to `n` for the block (a runtime loaded inside keeps it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def settle_heap() -> None:
    """After a load: one full collection, then what is alive moves out of the collector's sight (`gc.freeze`).

    A loaded DeiT-B with its compiled graphs is millions of Python objects, and every full collection walked them all
    while holding the GIL: up to a second in which no visitor's answer could be sent (measured in load.py's idle
    phases). Frozen, later collections walk only what came after. Unfrozen first, so that what died since the last
    load (an evicted runner's reference cycles) is collected, not kept for good.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


# How much a benchmark's timing thread yields to visitors' answers: at 10, 8 visitors' DeiT-B p95 during a benchmark
# fell from 1.22-1.42 s to 1.09-1.26 s (3 phases each, alternating, one sitting), and the benchmark took as long.
HEAVY_NICENESS = 10


def lower_thread_priority(niceness: int) -> None:
    """Raise the calling thread's niceness by `niceness`, for the rest of its life: on Linux niceness belongs to each
    thread, and an unprivileged one cannot lower it again, so call this only on a thread made for one heavy job (its
    OpenMP team, and the pools of runtimes it loads, inherit it when created). Where that is not supported, the
    thread keeps its priority (a slower answer, not a wrong one)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
    except (AttributeError, OSError):
        pass


def on_own_thread(fn: Callable[[], T], *, name: str = "deit-job", niceness: int = 0) -> T:
    """`fn()` on a new thread that ends with it (in the caller's context), for work whose OpenMP team should not
    outlive it: libgomp keeps a team for every thread that ran a parallel region, for as long as that thread lives.
    With `niceness`, the thread yields the CPUs to the server's other threads (see `lower_thread_priority`)."""
    future: Future = Future()
    future.set_running_or_notify_cancel()
    run = functools.partial(contextvars.copy_context().run, fn)
    if niceness:
        run = functools.partial(_niced, niceness, run)
    thread = threading.Thread(target=run_into, args=(future, run), name=name, daemon=True)
    thread.start()
    thread.join()
    return future.result()


def _niced(niceness: int, fn: Callable[[], T]) -> T:
    lower_thread_priority(niceness)
    return fn()


def run_into(future: Future, fn: Callable[[], T]) -> None:
    """`fn()`'s result or exception into a running `future` (its caller re-raises an exception)."""
    try:
        future.set_result(fn())
    except BaseException as err:
        future.set_exception(err)
