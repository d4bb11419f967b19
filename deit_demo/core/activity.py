"""What else this process is doing: the record a measurement reads to say whether it was timed on a quiet server.

A shared Space times a visitor's benchmark while Auto prepares, another visitor converts, and others classify. A
DeiT-Ti median of 143 ms with p10-p90 of 70-288 ms (4x spread), measured a few seconds after launch while Auto
prepared DeiT-B, was reported as a fact. Jobs note themselves here (`doing`), a server's answers are counted
(`served`, or read from each `watch`ed server when a window opens and closes, so that the serving path calls nothing
here), and a measurement opens a `window` around its timed blocks: what overlapped it, how many answers were served
meanwhile, and the process's CPU time against the wall time.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

# The timing's own threads use at most `threads` CPUs; beyond 1.25x that, a quarter of a CPU per timed thread or more
# went to other work in this process (visitors' answers, a compile): enough to move a median by 10-20% here.
CPU_SHARE_LIMIT = 1.25

_mine: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("deit_demo_activity", default=frozenset())


@dataclass
class Conditions:
    """What a measurement ran beside, and whether that disturbed it."""

    others: list[str] = field(default_factory=list)  # jobs that overlapped the timed window
    classifications: int = 0  # visitors' images answered during it
    cpu_s: float = 0.0  # this process's CPU time during it, all threads
    wall_s: float = 0.0
    threads: int = 1  # what the timing itself could use
    disturbed: str = ""  # "" when quiet; otherwise why, in one clause

    def to_dict(self) -> dict:
        return asdict(self)


class Activity:
    """Jobs running now and answers served so far, for the whole process; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._last = 0
        self._running: dict[int, str] = {}
        self._seen: dict[int, str] = {}  # every job since the oldest open window began (for overlap)
        self._windows = 0
        self._served = 0
        self._watched: weakref.WeakSet = weakref.WeakSet()  # servers whose `answered` count is read, never pushed

    @contextlib.contextmanager
    def doing(self, what: str) -> Iterator[None]:
        """Note `what` (e.g. "Auto preparing deit_base") for as long as the block runs. A window opened inside it, on
        this thread or one it starts with the context copied, does not count it as another job."""
        with self._lock:
            token = self._last = next(self._ids)
            self._running[token] = what
            if self._windows:
                self._seen[token] = what
        reset = _mine.set(_mine.get() | {token})
        try:
            yield
        finally:
            _mine.reset(reset)
            with self._lock:
                self._running.pop(token, None)

    def served(self, images: int = 1) -> None:
        with self._lock:
            self._served += images

    def watch(self, server) -> None:
        """Count `server.answered` (an int only its serving thread increments) as answers served; held weakly."""
        with self._lock:
            self._watched.add(server)

    def _answers(self) -> int:
        return self._served + sum(server.answered for server in list(self._watched))

    @contextlib.contextmanager
    def window(self, threads: int) -> Iterator[Conditions]:
        """The conditions of the block it wraps, filled in when it ends."""
        conditions = Conditions(threads=threads)
        mine = _mine.get()
        with self._lock:
            self._windows += 1
            self._seen.update(self._running)
            at_start, since, served = set(self._running), self._last, self._answers()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield conditions
        finally:
            conditions.wall_s, conditions.cpu_s = time.perf_counter() - wall, time.process_time() - cpu
            with self._lock:
                others = [w for t, w in self._seen.items() if t not in mine and (t in at_start or t > since)]
                conditions.classifications = self._answers() - served
                self._windows -= 1
                if not self._windows:
                    self._seen.clear()
            conditions.others = sorted(set(others))
            conditions.disturbed = judge(conditions)


def judge(conditions: Conditions) -> str:
    """Why `conditions` disturbed a measurement, or "" when they did not."""
    why = []
    if conditions.others:
        why.append(", ".join(conditions.others))
    limit = CPU_SHARE_LIMIT * conditions.threads * conditions.wall_s
    if conditions.wall_s > 0 and conditions.cpu_s > limit:
        answers = f"{conditions.classifications} visitors' images answered, " if conditions.classifications else ""
        why.append(f"{answers}the process used {conditions.cpu_s / conditions.wall_s:.1f} CPUs, the timing "
                   f"{conditions.threads}")
    return "; ".join(why)


ACTIVITY = Activity()  # one per process: it describes the process
