import threading
import time

import torch

from deit_demo import DeitDemoError
from deit_demo.cpus import CpuBudget, cgroup_quota, usable_cpus


def test_cgroup_v2_and_v1_quotas(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(v2) == 1
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_quota(v1) == 4
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_quota(v1) is None
    (v2 / "cpu.max").write_text("100000 100000\n")
    assert usable_cpus(v2) == 1  # the quota wins over the affinity mask


def test_budget_never_oversubscribes_and_sets_thread_counts():
    budget = CpuBudget(total=2)
    in_use, peak, seen = [0], [0], []
    lock = threading.Lock()

    def job(want):
        with budget.take(want) as granted:
            seen.append((granted, torch.get_num_threads()))
            with lock:
                in_use[0] += granted
                peak[0] = max(peak[0], in_use[0])
            time.sleep(0.05)
            with lock:
                in_use[0] -= granted

    threads = [threading.Thread(target=job, args=(w,)) for w in (2, 1, 2, 1, 1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 2 and budget.free == 2
    assert all(granted == threads_set and granted >= 1 for granted, threads_set in seen)


def test_budget_times_out_with_a_readable_error():
    budget = CpuBudget(total=1)
    with budget.take(1):
        result = {}

        def waiter():
            try:
                with budget.take(1, timeout_s=0.1):
                    result["got"] = True
            except DeitDemoError as err:
                result["error"] = str(err)

        t = threading.Thread(target=waiter)
        t.start()
        t.join()
    assert "busy" in result["error"]
