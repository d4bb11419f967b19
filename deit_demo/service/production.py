"""The step from "Decide" to production: one (model, variant) served behind an autoscaled HTTP endpoint on Ray Serve
(`deit-demo serve`), named directly or by its deployment card. Ray loads only here, when this is asked for."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from deit_demo.cluster.settings import ClusterSettings
from deit_demo.core.artifacts import ArtifactStore
from deit_demo.core.errors import DeitDemoError
from deit_demo.core.model_cache import ModelCache, WeightsPolicy
from deit_demo.core.models import get_spec
from deit_demo.variants import get_variant


@dataclass
class Endpoint:
    """A running endpoint: its URL, what it serves, and how to stop what was started for it."""

    url: str
    model: str
    variant: str
    weights: str
    started_s: float
    attached: object

    def replicas(self) -> int:
        from deit_demo.cluster.endpoint import replicas

        return replicas()

    def close(self) -> None:
        self.attached.close()


def pair_from_card(path: str) -> tuple[str, str, int | None]:
    """(model, variant, r) of a deployment card's JSON (`deit-demo card`, the Decide tab's download)."""
    try:
        card = json.loads(Path(path).read_text())
        return get_spec(card["model"]).key, get_variant(card["variant"]).key, card.get("tome_r")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DeitDemoError(f"{path} is not a deployment card's JSON ({type(err).__name__}: {err}).") from None


def serve_endpoint(model: str, variant: str, cluster: ClusterSettings, *, host: str = "127.0.0.1", port: int = 8000,
                   weights: str = "hub", store_root: str | None = None, tome_r: int | None = None) -> Endpoint:
    """Convert (once, checked) and serve the pair; a cluster that cannot be reached, or a replica that cannot load,
    is one clear error."""
    import time

    from deit_demo.cluster.connect import attach

    started = time.perf_counter()
    loaded = ModelCache(1, WeightsPolicy(model, weights, fallback_to_random=False)).get(model)
    attached = attach(cluster.address)  # first: Ray is imported only once its settings are made
    try:
        from deit_demo.cluster.endpoint import serve_pair

        _, url = serve_pair(loaded, get_variant(variant).key, ArtifactStore(store_root), cluster, host=host,
                            port=port, tome_r=tome_r, attached=attached)
    except BaseException:
        attached.close()  # nothing started for it stays behind
        raise
    return Endpoint(url, loaded.spec.key, variant, loaded.weights, time.perf_counter() - started, attached)
