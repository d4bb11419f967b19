"""How many CPUs this process may really use, a budget so concurrent jobs never oversubscribe them, and the one
thread that serves visitors' forward passes.

PyTorch's OpenMP thread count is per OS thread (``omp_set_num_threads`` sets the calling thread's ICV), so each job
sets its own count inside its worker thread; the budget makes the counts add up to at most the usable CPUs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import gc
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
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


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's thread count set to `n` for the block (a runtime loaded inside keeps it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class CpuBudget:
    """Hands out thread counts so that the jobs running at once use at most `total` CPUs."""

    def __init__(self, total: int | None = None):
        self.total = total or usable_cpus()
        self._free = self.total
        self._cond = threading.Condition()

    @property
    def free(self) -> int:
        return self._free

    @contextlib.contextmanager
    def take(self, want: int, *, timeout_s: float | None = None) -> Iterator[int]:
        """Take up to `want` CPUs (at least 1, waiting for it) and set this thread's torch thread count to match."""
        from deit_demo.errors import DeitDemoError

        want = max(1, min(want, self.total))
        with self._cond:
            if not self._cond.wait_for(lambda: self._free >= 1, timeout=timeout_s):
                raise DeitDemoError("The server is busy: every CPU is taken. Please try again in a moment.")
            granted = min(want, self._free)
            self._free -= granted
        previous = torch.get_num_threads()
        torch.set_num_threads(granted)
        try:
            yield granted
        finally:
            torch.set_num_threads(previous)
            with self._cond:
                self._free += granted
                self._cond.notify_all()


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
    thread = threading.Thread(target=_settle, args=(future, run), name=name, daemon=True)
    thread.start()
    thread.join()
    return future.result()


class ServingThread:
    """One thread for every forward pass that answers a visitor, whichever thread asked for it.

    libgomp gives each OS thread that runs a parallel region its own OpenMP team and keeps it while the thread lives.
    Once the teams hold more threads than there are CPUs, it stops spin-waiting at its barriers and every parallel
    region pays a futex wake-up. Gradio runs handlers on a pool of worker threads, so serving from them built a team
    per worker: DeiT-B pt2e_int8 took 65 ms per image instead of 54 (2-core EPYC), and layer norm 85 us instead of 28.
    The thread ends after `idle_s` without work, and its team with it, so that it slows no other thread meanwhile.
    """

    def __init__(self, name: str = "deit-serve", idle_s: float = 10.0):
        self.name, self.idle_s = name, idle_s
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ident: int | None = None

    def run(self, fn: Callable[[], T], *, timeout_s: float | None = None) -> T:
        """`fn()` on the serving thread; at most `timeout_s` waiting for its turn (then a "busy" error)."""
        from deit_demo.errors import DeitDemoError

        if threading.get_ident() == self._ident:
            return fn()  # already on it (a pass that asks for another)
        future: Future = Future()
        # With the caller's context: Gradio finds a request's progress bar through context variables.
        self._jobs.put((future, functools.partial(contextvars.copy_context().run, fn)))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            if future.cancel():
                raise DeitDemoError("The server is busy: other visitors' images are ahead of yours. Please try "
                                    "again in a moment.") from None
            return future.result()  # it started meanwhile: its answer is on the way

    def _work(self) -> None:
        self._ident = threading.get_ident()
        while True:
            try:
                future, fn = self._jobs.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:  # a job put before this lock is taken is seen here; one put after starts a thread
                    if self._jobs.empty():
                        self._thread = self._ident = None
                        return
                continue
            if future.set_running_or_notify_cancel():
                _settle(future, fn)


def _niced(niceness: int, fn: Callable[[], T]) -> T:
    lower_thread_priority(niceness)
    return fn()


def _settle(future: Future, fn: Callable[[], T]) -> None:
    """`fn()`'s result or exception into a running `future` (its caller re-raises an exception)."""
    try:
        future.set_result(fn())
    except BaseException as err:
        future.set_exception(err)


SERVING = ServingThread()  # one per process: the point is one OpenMP team per process
