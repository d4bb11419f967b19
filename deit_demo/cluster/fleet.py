"""Decide across a fleet: the same job (sweep, benchmark, card) on one node of each kind, concurrently across kinds,
each node timing alone, with a recommendation per kind.

A node's kind is what decides speed: its CPU model, the ISA flags that change which variant wins (VNNI, AMX, bf16,
NEON/SVE), its CPUs, its accelerator, and the labels its operator gave it (`ray start --labels=...`). A job task
takes every CPU of its node (so no two timings ever share one) and is pinned there; a node that dies says so in its
kind's rows, and the other kinds complete. The node this front end runs on (which serves visitors) takes a job only
when there is no other node.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from deit_demo.core.errors import Cancelled, DeitDemoError, describe

# The flags that change which variant wins, by family: x86 int8 and bf16 paths, Arm's SIMD
DECIDING_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
                "asimd", "asimdhp", "sve", "sve2", "i8mm", "bf16")


@dataclass(frozen=True)
class NodeKind:
    """One kind of node in the cluster, and the nodes of that kind."""

    name: str  # readable: "pool=edge, AMD EPYC 9B14, 1 CPU, avx512_vnni avx512_bf16"
    key: str  # a short id of the facts, for file names and lookups
    facts: dict
    nodes: tuple[str, ...]  # alive node ids of this kind
    serves: bool = False  # one of them is the node this front end (and its visitors' answers) runs on

    @property
    def slug(self) -> str:
        label = "-".join(f"{k}-{v}" for k, v in sorted(self.facts["labels"].items()))
        return (label or self.key).replace("/", "-").replace(" ", "-")[:60]


def node_facts() -> dict:
    """What decides speed on the node this runs on."""
    import torch

    from deit_demo.core.cpus import cpu_info, usable_cpus

    model, flags = cpu_info()
    accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return {"cpu": model or "unknown CPU", "isa": [f for f in DECIDING_ISA if f in flags], "usable_cpus": usable_cpus(),
            "accelerator": accelerator}


def node_kinds(timeout_s: float = 60.0) -> list[NodeKind]:
    """The kinds of the cluster's alive nodes, each node asked on itself (a zero-CPU task pinned there)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0, max_retries=0)(node_facts)
    refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote() for n in nodes}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    here = ray.get_runtime_context().get_node_id()
    groups: dict[tuple, list] = {}
    for node in nodes:
        ref = refs[node["NodeID"]]
        if ref not in ready:
            continue  # a node that cannot answer in time is not counted (listed nowhere: it runs nothing)
        try:
            facts = ray.get(ref)
        except ray.exceptions.RayError:
            continue  # it died while it was asked: it runs nothing either
        facts["cpus"] = int(node["Resources"].get("CPU", 0))
        facts["gpus"] = int(node["Resources"].get("GPU", 0))
        facts["labels"] = {k: v for k, v in (node.get("Labels") or {}).items() if not k.startswith("ray.io/")}
        key = (facts["cpu"], tuple(facts["isa"]), facts["cpus"], facts["accelerator"], facts["gpus"],
               tuple(sorted(facts["labels"].items())))
        groups.setdefault(key, []).append((node["NodeID"], facts))
    kinds = []
    for key, members in groups.items():
        facts = members[0][1]
        # the operator's labels first: they are what tells alike-looking kinds apart, and names get cut in tables
        words = [f"{k}={v}" for k, v in sorted(facts["labels"].items())]
        words += [facts["cpu"], f"{facts['cpus']} CPU{'s' if facts['cpus'] != 1 else ''}",
                  " ".join(facts["isa"]) or "no deciding ISA flags"]
        words += [f"{facts['gpus']} x {facts['accelerator'] or 'GPU'}"] if facts["gpus"] else []
        kinds.append(NodeKind(", ".join(words), hashlib.sha256(repr(key).encode()).hexdigest()[:8], facts,
                              tuple(n for n, _ in members), any(n == here for n, _ in members)))
    return sorted(kinds, key=lambda k: (k.serves, k.name))


def workers(kinds: list[NodeKind]) -> list[NodeKind]:
    """The kinds a heavy job may run on: every node but the one serving visitors, unless it is the only one."""
    here = ray.get_runtime_context().get_node_id()
    others = [replace(k, nodes=tuple(n for n in k.nodes if n != here)) for k in kinds]
    others = [k for k in others if k.nodes]
    return others or kinds


@dataclass
class JobSpec:
    """One job to run on a node: what (sweep, bench, card), its settings dataclass, and whose weights."""

    job: str
    settings: object
    model: str | None = None  # bench and card: the model; a sweep names its own
    weights: str = "hub"
    deadline_s: float = 3600.0


@dataclass
class KindResult:
    """One kind's outcome: the results payload its node wrote (machine, run, rows), or why there is none."""

    kind: NodeKind
    payload: dict | None = None
    error: str = ""
    node: str = ""
    seconds: float = 0.0
    rows_so_far: list = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event, repr=False)


def _run_job(spec: JobSpec, kind_name: str):
    """On the node: the job with this node's CPUs and its own store; yields rows as they come, then the payload."""
    import threading as threads

    from deit_demo.cluster.replica import node_store
    from deit_demo.core.model_cache import ModelCache, WeightsPolicy
    from deit_demo.measure.results import results_payload

    cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    store = node_store()
    models = ModelCache(2, WeightsPolicy(spec.model or "", spec.weights, fallback_to_random=False))
    updates: queue.Queue = queue.Queue()
    outcome: dict = {}
    extra = {"node_kind": kind_name, "node": ray.get_runtime_context().get_node_id()}

    def work() -> None:
        try:
            outcome["payload"] = _job_payload(spec, models, store, cpus, extra, updates.put, results_payload)
        except BaseException as err:  # noqa: BLE001 - handed back to the driver as this kind's error
            outcome["error"] = f"{type(err).__name__}: {describe(err)}"
        finally:
            updates.put(None)

    threads.Thread(target=work, daemon=True).start()
    while (rows := updates.get()) is not None:
        yield {"rows": rows}
    yield outcome


def _job_payload(spec: JobSpec, models, store, cpus: int, extra: dict, publish, results_payload) -> dict:
    from deit_demo.measure.bench import run_benchmark
    from deit_demo.measure.card import make_card
    from deit_demo.measure.decide import recommend
    from deit_demo.measure.sweep import run_sweep

    settings = spec.settings
    if spec.job == "sweep":
        rows = run_sweep(settings, lambda key: models.get(key, settings.weights), store, max_threads=cpus,
                         on_update=lambda done: publish([r.to_row() for r in done]))
        choice = recommend(rows, budget_ms=settings.budget_ms, budget_mb=settings.budget_mb,
                           min_top1=settings.min_top1, min_agreement=settings.min_agreement,
                           max_drop=settings.max_drop)
        return results_payload(rows, kind="sweep", settings=asdict(settings), recommendation=choice.to_dict(),
                               **extra)
    loaded = models.get(spec.model, spec.weights)
    if spec.job == "bench":
        settings = replace(settings, threads=min(settings.threads or cpus, cpus))
        results = run_benchmark(loaded, settings, store, on_update=lambda done: publish([r.to_row() for r in done]))
        return results_payload(results, model=loaded.spec.key, settings=asdict(settings), **extra)
    if spec.job == "card":
        card = make_card(loaded, replace(settings, threads=min(settings.threads or cpus, cpus)), store)
        return {**card, **extra, "rows": [], "machine": card.get("machine")}
    raise DeitDemoError(f"No such fleet job: {spec.job!r}.")


def run_each_kind(spec: JobSpec, kinds: list[NodeKind], *, on_rows: Callable[[NodeKind, list], None] | None = None,
                  cancel: threading.Event | None = None) -> list[KindResult]:
    """The job on one node of each kind, the kinds concurrently; each task holds its whole node, so nothing else
    times there meanwhile. A kind whose node dies, or whose job outlives `spec.deadline_s`, or that is stopped, gets
    its reason; the others complete."""
    task = ray.remote(max_retries=0)(_run_job)
    results = [KindResult(kind, node=kind.nodes[0]) for kind in kinds]

    def follow(result: KindResult) -> None:
        started = time.monotonic()
        strategy = NodeAffinitySchedulingStrategy(result.node, soft=False)
        stream = task.options(num_cpus=result.kind.facts["cpus"] or 1, scheduling_strategy=strategy).remote(
            spec, result.kind.name)
        watcher = threading.Thread(target=_watch, args=(stream, started, spec.deadline_s, cancel, result),
                                   daemon=True)
        watcher.start()
        try:
            for ref in stream:
                item = ray.get(ref)
                if "rows" in item:
                    result.rows_so_far = item["rows"]
                    if on_rows:
                        on_rows(result.kind, item["rows"])
                else:
                    result.payload, result.error = item.get("payload"), item.get("error", "")
        except ray.exceptions.TaskCancelledError:
            result.error = result.error or "stopped"
        except ray.exceptions.RayError as err:
            result.error = result.error or (f"its node ({result.node[:12]}) was lost mid-{spec.job}: "
                                            f"{type(err).__name__}")
        finally:
            result.done.set()
        result.seconds = time.monotonic() - started

    followers = [threading.Thread(target=follow, args=(r,), daemon=True) for r in results]
    for t in followers:
        t.start()
    for t in followers:
        t.join()
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"the {spec.job} across the cluster was stopped")
    return results


def _watch(stream, started: float, deadline_s: float, cancel, result: KindResult) -> None:
    """Cancel the task at its deadline, or when its visitor presses Stop (that visitor's task only)."""
    while not result.done.wait(0.2):
        if cancel is not None and cancel.is_set():
            result.error = "stopped"
        elif time.monotonic() - started > deadline_s:
            result.error = f"cancelled: it outlived its deadline of {deadline_s:.0f} s"
        if result.error:
            ray.cancel(stream, force=True)
            return
