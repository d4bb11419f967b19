"""How a lab is set up: the app's flags or the CLI's (`AppConfig`), with the serving component's tuning beside them
(`serve.settings.ServeSettings`). Validated here, so every caller gets the same error."""

from __future__ import annotations

from dataclasses import dataclass, field

from deit_demo.cluster.settings import ClusterSettings
from deit_demo.core.artifacts import DEFAULT_CAP_BYTES
from deit_demo.core.errors import DeitDemoError
from deit_demo.core.model_cache import WeightsPolicy
from deit_demo.core.models import DEFAULT_MODEL, get_spec
from deit_demo.serve.settings import ServeSettings


@dataclass
class AppConfig:
    """What the app's and the CLI's flags choose."""

    model: str = DEFAULT_MODEL
    weights: str = "hub"  # hub | random | checkpoint path (applies to `model`; other models use hub, then random)
    offline: bool = False
    store_root: str | None = None
    eval_data: str | None = None  # a labelled image folder: conversion then reports accuracy per variant
    store_cap_bytes: int = DEFAULT_CAP_BYTES
    max_models: int = 2
    fallback_to_random: bool = True  # the app serves random weights with a banner; the CLI reports the error
    auto_prepare: bool = True  # the app prepares Auto for `model` in the background as soon as it starts
    isolate_conversions: bool = True  # convert in a child process, so a conversion never stalls an answer
    cache_examples: bool = True  # the gallery's answers are cached lazily (for everyone, after a first click)
    # Batches of visitors' classifications in flight at once. Every pass runs on one thread (serve.server.SERVING),
    # so a second batch only waits there, and it splits the queue: 8 visitors, DeiT-B: 2.6 images per pass, not 5
    classify_concurrency: int = 1
    max_batch_size: int = 8  # visitors' classifications that share one forward pass
    queue_size: int = 16  # Gradio's queue, and the heavy jobs that may wait at the lab's door (service.jobs)
    job_concurrency: int = 1  # heavy jobs at once (convert, benchmark, sweep, a browser format...): they share the CPUs
    jobs_per_visitor: int = 2  # queued or running, per visitor
    job_wait_s: float | None = None  # how long a job may wait for its turn (None: until its time limit)
    serve: ServeSettings = field(default_factory=ServeSettings)
    # With a cluster, classification runs on Ray Serve replicas (deit_demo.cluster); None: in this process, Ray unloaded
    cluster: ClusterSettings | None = None
    # Where web/node_modules has no ONNX Runtime Web, download the pinned tarball once from the npm registry
    # (checked against the lockfile's sha512). Off: the Your device tab says what to run instead.
    fetch_web_runtime: bool = True

    def __post_init__(self) -> None:
        get_spec(self.model)
        for name in ("max_models", "classify_concurrency", "queue_size", "store_cap_bytes", "max_batch_size",
                     "job_concurrency", "jobs_per_visitor"):
            if getattr(self, name) < 1:
                raise DeitDemoError(f"{name} must be at least 1 (got {getattr(self, name)}).")

    def weights_policy(self) -> WeightsPolicy:
        return WeightsPolicy(self.model, self.weights, self.offline, self.fallback_to_random)
