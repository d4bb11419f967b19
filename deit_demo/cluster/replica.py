"""One Ray Serve replica of a (model, variant): it owns what it serves, as the in-process `Server` does.

`__init__` sets its thread counts from the CPUs Ray gave it (torch's, which ONNX Runtime, OpenVINO and ExecuTorch
read when a file is loaded: Ray itself sets only OMP_NUM_THREADS), gets the variant's file, verifies its sha256 and
loads it; `classify` answers with logits, several visitors' images batched by `@serve.batch`.

How a file reaches a node: through Ray's object store. The front end puts the verified file's bytes there once; a
replica whose node's own store lacks a file with that sha256 fetches them, commits them to its node's store (which
hashes them) and loads the file only if the hash is the manifest's. Chosen over a folder every node mounts because a
cluster needs nothing more than Ray for it (no NFS, no bucket, no credentials), and a node that has the file already
fetches nothing. The original's weights travel the same way (safetensors bytes, checked by their weights id).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from ray import serve

from deit_demo.core.artifacts import Artifact, ArtifactStore
from deit_demo.core.errors import DeitDemoError
from deit_demo.core.images import normalize
from deit_demo.core.models import LoadedModel, create_model, fingerprint, get_spec
from deit_demo.core.paths import home
from deit_demo.serve.classify import forward_heads
from deit_demo.variants import ORIGINAL, get_variant
from deit_demo.variants.pipeline import load_verified, variant_context


@dataclass(frozen=True)
class Shipment:
    """What a replica needs to serve a (model, variant): the model's weights id, the variant's file as the front
    end's manifest describes it, and object-store references to the bytes (in a list, so Ray hands the references
    over rather than resolving them at construction)."""

    model: str
    variant: str
    weights: str  # as the answers report it (hub, checkpoint:<name>, random)
    weights_id: str
    artifact: dict | None  # the manifest's fields (path relative), for a converted variant
    store_key: str  # the variant's folder name in a store (token merging's carries r)
    refs: list  # [ObjectRef of the file's bytes] or [ObjectRef of the weights' safetensors bytes]
    tome_r: int | None = None


def ship(loaded: LoadedModel, variant: str, artifact: Artifact | None, store_key: str,
         tome_r: int | None = None) -> Shipment:
    """Put what a replica needs into the object store (done once per deployment, by the front end)."""
    if artifact is None:  # the original: its weights
        from safetensors.torch import save

        data = save({k: v.contiguous() for k, v in loaded.model.state_dict().items()})
    else:
        data = artifact.path.read_bytes()
    return Shipment(loaded.spec.key, variant, loaded.weights, loaded.weights_id,
                    artifact.to_dict() if artifact is not None else None, store_key, [ray.put(data)], tome_r)


def node_store() -> ArtifactStore:
    """This node's own store for files replicas fetched (one per node id, even where nodes share a disk, so that a
    node never counts on another's copy)."""
    node = ray.get_runtime_context().get_node_id()[:12]
    return ArtifactStore(Path(os.environ.get("DEIT_DEMO_CLUSTER_STORE", home() / "cluster-store")) / node)


def receive(shipment: Shipment, store: ArtifactStore) -> Artifact:
    """The shipped file in this node's store, verified: reused if the store holds one with the manifest's sha256,
    else fetched from the object store, committed (hashed) and compared."""
    expected = shipment.artifact
    variant = get_variant(shipment.variant)
    found = store.lookup(shipment.model, shipment.weights_id, shipment.store_key, variant.version)
    if found is not None and found.sha256 == expected["sha256"]:
        return found
    workdir = store.new_workdir()
    try:
        path = workdir / Path(expected["path"]).name
        path.write_bytes(ray.get(shipment.refs[0]))
        fields = {k: v for k, v in expected.items() if k not in ("path", "size_bytes", "sha256")}
        made = store.commit(workdir, Artifact(path=path, **fields))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if made.sha256 != expected["sha256"]:
        shutil.rmtree(made.path.parent, ignore_errors=True)
        raise DeitDemoError(f"The {shipment.variant} file of {shipment.model} arrived with sha256 {made.sha256[:12]}…, "
                            f"not the manifest's {expected['sha256'][:12]}…: refused.")
    return made


def _process_start() -> float:
    import psutil

    return psutil.Process().create_time()


@serve.deployment
class VariantReplica:
    """Serves one (model, variant) with the CPUs Ray granted it."""

    def __init__(self, shipment: Shipment, max_batch_size: int = 8, batch_wait_s: float = 0.005):
        started = time.perf_counter()
        # Where a cold start goes (benchmarks/cluster.py prints it): the worker process up to here (Python, torch,
        # the lab imported), the file received and checked, the runtime loading (and compiling) it, the first pass
        self.timings = {"process_s": time.time() - _process_start(), "init_at": time.time()}
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        self.threads = max(1, int(cpus))
        torch.set_num_threads(self.threads)  # the runtimes below read it when they load
        self.spec, self.shipment = get_spec(shipment.model), shipment
        self.variant = get_variant(shipment.variant)
        if self.variant is get_variant(ORIGINAL):
            from safetensors.torch import load

            self.model = create_model(self.spec)
            self.model.load_state_dict(load(ray.get(shipment.refs[0])))
            self.model.eval().requires_grad_(False)
            if fingerprint(self.model) != shipment.weights_id:
                raise DeitDemoError(f"The weights of {shipment.model} arrived changed (not {shipment.weights_id}).")
            self.runner, self.notes = None, {"runtime": f"torch {torch.__version__} eager"}
        else:
            store = node_store()
            artifact = receive(shipment, store)
            self.timings["receive_s"] = time.perf_counter() - started
            ctx = variant_context(self.spec, store, shipment.tome_r, shipment.weights_id)
            self.runner = load_verified(self.variant, artifact, store, ctx)
            self.notes = dict(getattr(self.runner, "notes", {}) or {})
        self.one_pass = self.variant.batch_invariant and not self.variant.compiles_per_shape
        self.classify.set_max_batch_size(max_batch_size)
        self.classify.set_batch_wait_timeout_s(batch_wait_s)
        self.timings["init_s"] = time.perf_counter() - started

    def info(self) -> dict:
        """Which process and node this replica is, how it runs, and where its start went (tests, benchmarks)."""
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "threads": self.threads,
                "timings": self.timings, "notes": self.notes}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def classify(self, images: list[np.ndarray]) -> list[dict]:
        """Logits per head for each image (its cropped uint8 pixels, `core.images.crop`), and the pass's time; one
        pass for a batch when the variant's answers do not depend on the batch, else one pass per image."""
        start = time.perf_counter()
        tensors = [normalize(x, self.spec) for x in images]
        with torch.inference_mode():
            if self.runner is None:
                heads = forward_heads(self.model, torch.cat(tensors), distilled=self.spec.distilled)
            elif self.one_pass:
                heads = {"logits": self.runner(torch.cat(tensors))}
            else:
                heads = {"logits": torch.cat([self.runner(x) for x in tensors])}
        ms = (time.perf_counter() - start) * 1e3
        self.timings.setdefault("first_pass_ms", ms)
        return [{"heads": {name: logits[i].float().numpy() for name, logits in heads.items()}, "ms": ms,
                 "batch": len(images), "one_pass": self.one_pass, "pid": os.getpid()} for i in range(len(images))]
