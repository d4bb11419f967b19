"""The loaded variants that answer visitors: a small LRU of runners, each loaded (or compiled) for the serving thread
count, and the warm-up that compiles a graph for what visitors send rather than on a visitor's time."""

from __future__ import annotations

import torch

from deit_demo.core.artifacts import ArtifactStore
from deit_demo.core.cache import BoundedCache
from deit_demo.core.cpus import settle_heap, torch_threads
from deit_demo.core.models import LoadedModel
from deit_demo.variants import Runner, VariantContext, get_variant
from deit_demo.variants.pipeline import check_inputs, prepare, variant_context


def warm_for_visitors(runner: Runner, loaded: LoadedModel, threads: int) -> Runner:
    """`runner` called once with `threads` and an input made as a visitor's image is, so that an inductor graph is
    compiled for what visitors send now, not on a visitor's time."""
    example = next(iter(check_inputs(loaded.spec, noise=1).values()))
    with torch_threads(threads), torch.inference_mode():
        runner(example)
    return runner


class RunnerCache:
    """Variants loaded for serving, converted on first use; at most `size`, least recently used evicted."""

    def __init__(self, store: ArtifactStore, threads: int, size: int):
        self.store = store
        self.threads = threads  # ONNX Runtime and OpenVINO fix theirs at load; an inductor graph compiles for it
        self._cache: BoundedCache[Runner] = BoundedCache(size)

    def get(self, loaded: LoadedModel, key: str, tome_r: int | None = None, *, adopt: Runner | None = None,
            settle: bool = True) -> Runner:
        """The runner of variant `key` for `loaded`. `adopt`: one already loaded from the verified file (Auto's check
        of an inductor graph), kept instead of compiling again. `settle=False`: the caller settles the heap itself
        once its whole operation is done (Auto's preparation)."""
        variant = get_variant(key)
        # The cache key needs only the spec and r; the full context (preprocessed calibration images) is built only
        # when the runner must be prepared, not on every classification.
        # A parametrized variant's key follows the r tuned and stored for these weights (a small file, read only then).
        tuned = {k: v["r"] for k, v in self.store.tuned(loaded.spec.key, loaded.weights_id).items()} \
            if variant.lossy and tome_r is None else {}
        name = variant.store_key(VariantContext(loaded.spec, self.store.root, tome_r=tome_r, tuned_r=tuned))

        def load() -> Runner:
            if adopt is not None:
                return warm_for_visitors(adopt, loaded, self.threads)
            with torch_threads(self.threads):
                runner = prepare(variant, loaded, self.store,
                                     variant_context(loaded.spec, self.store, tome_r, loaded.weights_id))[2]
            if settle:
                settle_heap()
            return runner

        return self._cache.get((loaded.spec.key, loaded.weights_id, name), load)
