"""Heavy jobs off the serving node: with a cluster attached, Convert, Benchmark and Auto's preparation run as Ray tasks
on a worker node (the node that serves visitors only when there is no other), so that they never take the cores that
answer visitors.

A task gets the model's weights through the object store (checked by their weights id) and works in its node's own
store; the files it made come back the same way and are committed to the front end's store only if their sha256 is
the one the task's manifest names (the store every replica is shipped from). A visitor's Stop cancels that visitor's
task, and nobody else's; a task that outlives its deadline is cancelled and reported.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from deit_demo.core.artifacts import MANIFEST, Artifact, ArtifactStore
from deit_demo.core.errors import Cancelled, DeitDemoError
from deit_demo.core.models import LoadedModel


@dataclass(frozen=True)
class Weights:
    """A model's weights as a task receives them."""

    model: str
    weights: str
    weights_id: str
    ref: object


def ship_weights(loaded: LoadedModel) -> Weights:
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in loaded.model.state_dict().items()})
    return Weights(loaded.spec.key, loaded.weights, loaded.weights_id, ray.put(data))


def receive_weights(shipped: Weights) -> LoadedModel:
    """The front end's model, rebuilt on this node and checked by its weights id."""
    from safetensors.torch import load

    from deit_demo.core.models import create_model, fingerprint, get_spec

    spec = get_spec(shipped.model)
    model = create_model(spec)
    model.load_state_dict(load(ray.get(shipped.ref)))
    model.eval().requires_grad_(False)
    if fingerprint(model) != shipped.weights_id:
        raise DeitDemoError(f"The weights of {shipped.model} arrived changed (not {shipped.weights_id}).")
    return LoadedModel(spec, model, shipped.weights, shipped.weights_id)


def worker_node() -> tuple[str, float]:
    """(node id, CPUs free there) of the worker with the most free CPUs; this front end's node only if alone."""
    here = ray.get_runtime_context().get_node_id()
    free = ray._private.state.available_resources_per_node()  # per-node free resources (what the autoscaler reads)
    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    candidates = [(node, res.get("CPU", 0.0)) for node, res in free.items() if node in alive]
    others = [c for c in candidates if c[0] != here and c[1] > 0]
    pool = others or [c for c in candidates if c[1] > 0] or candidates
    if not pool:
        raise DeitDemoError("No node of the cluster is alive to run this job.")
    return max(pool, key=lambda c: c[1])


def _files_of(results) -> list:
    """Each made file's manifest and bytes (in the object store), to send back with the rows."""
    out = []
    for row in results:
        if getattr(row, "status", "") == "ok" and getattr(row, "path", ""):
            from pathlib import Path

            path = Path(row.path)
            out.append((row.variant, (path.parent / MANIFEST).read_text(), ray.put(path.read_bytes())))
    return out


def _convert(shipped: Weights, keys: list[str], tome_r, threads: int):
    import torch

    from deit_demo.cluster.replica import node_store
    from deit_demo.variants.pipeline import run_conversion

    torch.set_num_threads(threads)
    results = run_conversion(receive_weights(shipped), keys, node_store(), tome_r=tome_r)
    return results, _files_of(results)


def _benchmark(shipped: Weights, settings, threads: int):
    from dataclasses import replace

    from deit_demo.cluster.replica import node_store
    from deit_demo.measure.bench import run_benchmark

    loaded = receive_weights(shipped)
    return run_benchmark(loaded, replace(settings, threads=min(settings.threads or threads, threads)), node_store())


def run_on_worker(fn, *args, cancel: threading.Event | None = None, deadline_s: float = 3600.0, what: str = "a job"):
    """`fn(*args, threads)` as a task on a worker node, with the CPUs free there; its visitor's Stop or its deadline
    cancels it. Returns (its result, where it ran)."""
    node, cpus = worker_node()
    threads = max(1, int(cpus))
    task = ray.remote(max_retries=0)(fn).options(num_cpus=cpus,
                                                 scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
    ref, started = task.remote(*args, threads), time.monotonic()
    while True:
        ready, _ = ray.wait([ref], timeout=0.2)
        if ready:
            try:
                return ray.get(ref), node
            except ray.exceptions.TaskCancelledError:
                raise Cancelled(f"{what} was stopped") from None
            except ray.exceptions.RayTaskError as err:
                cause = err.cause if isinstance(getattr(err, "cause", None), Exception) else err
                if isinstance(cause, DeitDemoError):
                    raise cause from None
                raise DeitDemoError(f"{what} failed on node {node[:12]}: {type(cause).__name__}: {cause}") from None
            except ray.exceptions.RayError as err:
                raise DeitDemoError(f"{what}: its node ({node[:12]}) was lost ({type(err).__name__}).") from None
        if cancel is not None and cancel.is_set():
            ray.cancel(ref, force=True)
            raise Cancelled(f"{what} was stopped")
        if time.monotonic() - started > deadline_s:
            ray.cancel(ref, force=True)
            raise DeitDemoError(f"{what} was cancelled: it outlived its deadline of {deadline_s:.0f} s on node "
                                f"{node[:12]}.")


def adopt(store: ArtifactStore, model: str, weights_id: str, manifest: str, data: bytes) -> Artifact:
    """A file a task made, committed to the front end's store, kept only if its sha256 is its manifest's."""
    import json
    import shutil
    from pathlib import Path

    fields = json.loads(manifest)
    if fields.get("model") != model or fields.get("weights_id") != weights_id:
        raise DeitDemoError("A file came back for other weights than the ones sent: refused.")
    workdir = store.new_workdir()
    try:
        path = workdir / Path(fields["path"]).name
        path.write_bytes(data)
        made = store.commit(workdir, Artifact(path=path, **{k: v for k, v in fields.items()
                                                            if k not in ("path", "size_bytes", "sha256")}))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if made.sha256 != fields["sha256"]:
        shutil.rmtree(made.path.parent, ignore_errors=True)
        raise DeitDemoError(f"The {fields['variant']} file came back with sha256 {made.sha256[:12]}…, not the "
                            f"{fields['sha256'][:12]}… it was made with: refused.")
    return made


def _auto(shipped: Weights, candidates: tuple[str, ...], timing_runs: int, rules, threads: int):
    """Auto's measurement on a worker node; the files of what it chose come back with its decision."""
    import torch

    from deit_demo.cluster.replica import node_store
    from deit_demo.serve.candidates import measure_candidates
    from deit_demo.variants import ORIGINAL

    torch.set_num_threads(threads)
    found = measure_candidates(receive_weights(shipped), candidates, node_store(), threads=threads,
                               timing_runs=timing_runs, rules=rules)
    wanted = {found.decision.variant, found.decision.fallback} - {ORIGINAL}
    files = [(key, (a.path.parent / MANIFEST).read_text(), ray.put(a.path.read_bytes()))
             for key, a in found.artifacts.items() if key in wanted]
    return found.decision, found.checked, files
