"""`deit-demo serve`: one (model, variant) on Ray Serve as a plain HTTP endpoint, with no Gradio: the step from
"Decide" to production.

    POST /            the image's bytes as the body                    -> top-k JSON
    POST /            {"url": "https://...", "k": 5} (application/json) -> top-k JSON
    GET  /health      {"model": ..., "variant": ..., "replicas": N}

The ingress decodes and preprocesses (the image guards and the URL fetcher of `core.images`, so the endpoint refuses
what the app refuses), then calls the model's deployment, whose replicas batch and scale as the app's do.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from deit_demo.cluster.connect import Attached, attach
from deit_demo.cluster.server import bind_replica, replica_count, run_app
from deit_demo.cluster.settings import ClusterSettings
from deit_demo.core.errors import DeitDemoError
from deit_demo.core.images import crop, load_image
from deit_demo.core.models import LoadedModel, get_spec
from deit_demo.core.urls import FetchSettings
from deit_demo.serve.classify import labels_for, top_k

ENDPOINT_APP = "deit-serve"


@serve.deployment(name="endpoint", ray_actor_options={"num_cpus": 0})
class Endpoint:
    """Reads a request's image, asks the model's replicas, answers JSON."""

    def __init__(self, model, model_key: str, variant: str, weights: str):
        self.model, self.variant, self.weights = model, variant, weights
        self.spec = get_spec(model_key)
        self.labels = labels_for(SimpleNamespace(spec=self.spec))
        self.fetch = FetchSettings()

    def _tensor(self, body: bytes, content_type: str) -> tuple:
        if content_type.startswith("application/json"):
            try:
                asked = json.loads(body)
                source, k = asked["url"], asked.get("k", 5)
            except (ValueError, KeyError, TypeError):
                raise DeitDemoError('Send the image\'s bytes, or JSON {"url": "https://...", "k": 5}.') from None
        else:
            source, k = body, 5
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
            raise DeitDemoError(f"k must be a whole number from 1 to 1000 (got {k!r}).")
        return crop(load_image(source, fetch=self.fetch), self.spec), k

    async def __call__(self, request: Request):
        if request.url.path.rstrip("/").endswith("/health"):
            return JSONResponse({"model": self.spec.key, "variant": self.variant, "weights": self.weights})
        started = time.perf_counter()
        try:
            body = await request.body()
            x, k = await asyncio.to_thread(self._tensor, body, request.headers.get("content-type", ""))
        except DeitDemoError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        reply = await self.model.classify.remote(x)
        heads = {name: [{"label": p.label, "index": p.index, "probability": round(p.prob, 6)}
                        for p in top_k(logits, self.labels, k)] for name, logits in reply["heads"].items()}
        return JSONResponse({"model": self.spec.key, "variant": self.variant, "weights": self.weights,
                             "forward_ms": round(reply["ms"], 3), "batch": reply["batch"],
                             "total_ms": round((time.perf_counter() - started) * 1e3, 3), "heads": heads})


def serve_pair(loaded: LoadedModel, variant: str, store, cluster: ClusterSettings, *, host: str, port: int,
               tome_r: int | None = None, attached: Attached | None = None) -> tuple[Attached, str]:
    """Deploy (model, variant) behind the endpoint at http://host:port/; returns what was attached and the URL."""
    attached = attached or attach(cluster.address)
    attached.started_serve = not attached.serve_running()
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    app, bound = bind_replica(loaded, variant, store, cluster, tome_r)
    run_app(ENDPOINT_APP, Endpoint.bind(bound, loaded.spec.key, variant, loaded.weights), attached,
            f"{variant} of {loaded.spec.key}", route_prefix="/", deadline_s=cluster.deploy_deadline_s)
    return attached, f"http://{host}:{port}/"


def replicas() -> int:
    return replica_count(ENDPOINT_APP) - 1  # the endpoint's own replica is not a model replica
