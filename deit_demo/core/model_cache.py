"""The models a process keeps, and its policy for weights that cannot be had.

`ModelCache` is a bounded LRU of loaded models keyed by (model, weights asked for). Its `WeightsPolicy` says which
weights a model gets when none are named (the lab's model: the weights it was started with; the others: the hub), and
what happens when those cannot be had: the app serves seeded random weights and says why on the model itself
(`LoadedModel.note`), the CLI reports the error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from deit_demo.core.cache import BoundedCache
from deit_demo.core.errors import DeitDemoError
from deit_demo.core.models import DEFAULT_MODEL, LoadedModel, get_spec, load_model


@dataclass(frozen=True)
class WeightsPolicy:
    """Which weights a model gets, and whether random weights stand in for those that cannot be had."""

    model: str = DEFAULT_MODEL  # the model `weights` applies to; every other model asks the hub
    weights: str = "hub"  # hub | random | a checkpoint path
    offline: bool = False  # never reach the hub: random weights unless the model ships its own
    fallback_to_random: bool = True  # False (the CLI): report what cannot be had instead

    def weights_for(self, key: str, weights: str | None = None) -> str:
        return weights or (self.weights if key == self.model else "hub")


class ModelCache:
    """The loaded models a process keeps: a bounded LRU keyed by (model, weights), safe across server threads."""

    def __init__(self, max_models: int = 2, policy: WeightsPolicy | None = None):
        self.policy = policy or WeightsPolicy()
        self._cache: BoundedCache[LoadedModel] = BoundedCache(max_models)

    def get(self, key: str, weights: str | Path | None = None) -> LoadedModel:
        """Model `key` with `weights` (None: the policy's), or with random weights and a note that says why."""
        spec = get_spec(key)
        asked = self.policy.weights_for(spec.key, str(weights) if weights else None)
        if self.policy.offline and asked == "hub" and not spec.bundled:
            return self._cache.get((spec.key, asked), lambda: self._random(spec.key, "the server was started with "
                                                                                     "--offline"))
        if asked == "random" or not self.policy.fallback_to_random:
            return self._cache.get((spec.key, asked), lambda: load_model(spec.key, asked))

        def load() -> LoadedModel:
            try:
                return load_model(spec.key, asked)
            except DeitDemoError:
                return self._random(spec.key, (
                    f"No pretrained weights: the Hugging Face hub is unreachable and the local cache has no copy of "
                    f"{spec.hf_repo}" if asked == "hub" else f"The checkpoint {Path(asked).name} could not be loaded"))

        # Cached under the weights asked for, fallback included: the hub is not asked again on every request.
        return self._cache.get((spec.key, asked), load)

    @staticmethod
    def _random(key: str, why: str) -> LoadedModel:
        return replace(load_model(key, "random"), note=why)

    def peek(self, key: str) -> LoadedModel | None:
        """The most recently used loaded copy of model `key` (any weights), or None: never loads, never reorders."""
        return self._cache.peek(lambda cached: cached[0] == key)

    def __len__(self) -> int:
        return len(self._cache)
