"""The CPU budget and the one thread that serves visitors' forward passes.

`CpuBudget` hands out thread counts so that jobs running at once never oversubscribe the CPUs; `SERVING` runs every
forward pass that answers a visitor, whichever thread asked for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

import torch

from deit_demo.core.cpus import run_into, usable_cpus
from deit_demo.core.errors import DeitDemoError

T = TypeVar("T")


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
                run_into(future, fn)


SERVING = ServingThread()  # one per process: the point is one OpenMP team per process
