"""The one door heavy jobs enter: first come, first served, a share per visitor, a queue with a length, a Stop seen
while waiting; and the CPU budget that keeps a CPU for classification whatever jobs hold."""

import threading
import time

import pytest

from deit_demo.core.errors import Busy, Cancelled, DeitDemoError
from deit_demo.serve.server import CpuBudget
from deit_demo.service.jobs import JobDoor


def hold(door, visitor, started, release, order, name):
    with door.enter(visitor, name):
        order.append(name)
        started.set()
        release.wait(10)


def test_jobs_run_one_at_a_time_in_the_order_they_came():
    door, order, release = JobDoor(concurrency=1, per_visitor=3), [], threading.Event()
    first = threading.Event()
    threads = [threading.Thread(target=hold, args=(door, "a", first, release, order, "first"))]
    threads[0].start()
    assert first.wait(5)
    for i, visitor in enumerate(["b", "c", "d"]):
        t = threading.Thread(target=hold, args=(door, visitor, threading.Event(), release, order, f"job{i}"))
        t.start()
        threads.append(t)
        for _ in range(100):  # each waits before the next comes
            if door.waiting == i + 1:
                break
            time.sleep(0.01)
    assert order == ["first"] and door.running == 1 and door.waiting == 3
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["first", "job0", "job1", "job2"] and door.running == door.waiting == 0


def test_a_visitor_has_a_share_and_the_queue_a_length():
    door, release, started = JobDoor(concurrency=1, per_visitor=1, max_waiting=2), threading.Event(), threading.Event()
    running = threading.Thread(target=hold, args=(door, "flood", started, release, [], "first"))
    running.start()
    assert started.wait(5)
    with pytest.raises(Busy, match="already have 1 job queued or running"):
        with door.enter("flood", "the web_int8 file of deit_base"):
            pass
    waiting = [threading.Thread(target=hold, args=(door, f"v{i}", threading.Event(), release, [], f"w{i}"))
               for i in range(2)]
    for t in waiting:
        t.start()
    for _ in range(100):
        if door.waiting == 2:
            break
        time.sleep(0.01)
    with pytest.raises(Busy, match="queue is full"):
        with door.enter("someone else", "a benchmark"):
            pass
    release.set()
    for t in [running, *waiting]:
        t.join(10)
    with door.enter("flood", "a second file, now that the first is done"):
        assert door.running == 1


def test_a_stop_is_seen_while_waiting_and_a_wait_has_a_limit():
    door, release, started = JobDoor(concurrency=1, max_wait_s=0.3), threading.Event(), threading.Event()
    running = threading.Thread(target=hold, args=(door, "a", started, release, [], "first"))
    running.start()
    assert started.wait(5)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(Cancelled):
        with door.enter("b", "a sweep", cancel=stop):
            pass
    began = time.monotonic()
    with pytest.raises(Busy, match="busy with other visitors' jobs"):
        with door.enter("c", "a conversion"):
            pass
    assert 0.25 < time.monotonic() - began < 5
    release.set()
    running.join(10)
    assert door.waiting == 0 and door.running == 0


def test_an_error_inside_a_job_frees_its_slot():
    door = JobDoor(concurrency=1, per_visitor=1)
    with pytest.raises(ValueError):
        with door.enter("a", "a job that fails"):
            raise ValueError("inside")
    with door.enter("a", "the next one"):
        assert door.running == 1


def test_jobs_together_never_take_the_cpu_kept_for_classification():
    budget = CpuBudget(total=2, reserved=1)
    with budget.take(2, job=True) as first:
        assert first == 1  # a job takes at most total - reserved, however many it asks for
        with pytest.raises(DeitDemoError, match="busy"):  # a second job waits, and never takes the reserved CPU
            with budget.take(1, job=True, timeout_s=0.3):
                pass
        with budget.take(2) as answer:  # a visitor's classification still has its CPU
            assert answer == 1
    with budget.take(2) as idle:
        assert idle == 2  # with no job running, a classification may use every CPU
