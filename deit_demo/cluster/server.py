"""The cluster-backed `Server`: the same interface the app and the CLI classify through, with every forward pass sent
to Ray Serve replicas of a deployment per (model, variant, r) instead of the serving thread.

What stays in this process (the front end): reading images, Auto's preparation and its check (prepared once, here),
conversions, the answers' labels. What the cluster does: the passes, batching (`@serve.batch`), replicas scaled on
ongoing requests, restarts. Auto's replicas switch to a new variant only once that deployment is up: until then the
last one that was (or the original) serves, so no answer ever comes from a variant that has not passed its check.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass

import numpy as np
import ray
from ray import serve

from deit_demo.cluster.connect import Attached, attach
from deit_demo.cluster.jobs import _auto, _benchmark, _convert, adopt, run_on_worker, ship_weights
from deit_demo.cluster.replica import VariantReplica, ship
from deit_demo.cluster.settings import ClusterSettings
from deit_demo.core.errors import DeitDemoError
from deit_demo.core.models import LoadedModel
from deit_demo.serve.auto import AUTO, AutoChoice
from deit_demo.serve.classify import results_from
from deit_demo.serve.server import Server, trimmed
from deit_demo.variants import ORIGINAL, get_variant
from deit_demo.variants.pipeline import convert_variant, require_available, variant_context


@dataclass
class Deployed:
    """One (model, variant, r) running on the cluster: its Serve application and handle."""

    app: str
    handle: object
    variant: str
    seconds: float


def app_name(model: str, store_key: str) -> str:
    return f"deit-{model}-{store_key}".replace("_", "-")


def bind_replica(loaded: LoadedModel, variant_key: str, store, cluster: ClusterSettings, tome_r: int | None = None,
                 take_cpus=None) -> tuple[str, object]:
    """Convert (here, once, verified) if need be, and ship: the Serve application's name and its bound replica."""
    variant = get_variant(variant_key)
    artifact, store_key = None, ORIGINAL
    if variant is not get_variant(ORIGINAL):
        require_available(variant)
        ctx = variant_context(loaded.spec, store, tome_r, loaded.weights_id)
        with take_cpus() if take_cpus else contextlib.nullcontext():
            artifact, _ = convert_variant(variant, loaded, store, ctx)
        store_key = variant.store_key(ctx)
    app = app_name(loaded.spec.key, store_key)
    shipment = ship(loaded, variant.key, artifact, store_key, tome_r)
    replica = VariantReplica.options(**cluster.deployment_options(app))
    return app, replica.bind(shipment, cluster.max_batch_size, cluster.batch_wait_ms / 1e3)


def run_app(app: str, bound, attached: Attached, what: str, route_prefix: str | None = None,
            deadline_s: float = 600.0):
    """Run one Serve application and wait until it runs, at most `deadline_s`; a replica that cannot start (its
    constructor failed, or no node can place it) is reported with its own words, and nothing of it is left."""
    from ray.serve.api import RunTarget

    handle = serve.run_many([RunTarget(bound, name=app, route_prefix=route_prefix)],
                            wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)[0]
    attached.apps.add(app)
    attached.handles.append(handle)
    deadline = time.monotonic() + deadline_s
    while True:
        found = serve.status().applications.get(app)
        state = str(getattr(found, "status", "")).rsplit(".", 1)[-1]
        if state == "RUNNING":
            return direct(handle)
        if state in ("DEPLOY_FAILED", "UNHEALTHY") or time.monotonic() > deadline:
            reason = status_message(app) or (f"not running after {deadline_s:.0f} s (no node could place its "
                                             "replicas?)" if state not in ("DEPLOY_FAILED", "UNHEALTHY") else state)
            serve.delete(app, _blocking=True)
            attached.apps.discard(app)
            raise DeitDemoError(f"{what} could not start on the cluster: {reason}")
        time.sleep(0.2)


def direct(handle):
    """The handle with its calls sent to the replica over Serve's own gRPC channel (the one replicas of a composed
    app call each other by), not as Ray actor tasks, whose arguments over 100 KB (an image's pixels) go through the
    object store: a lone visitor's answer comes back sooner (docs/SCALING.md has the figures). Serve's router,
    batching, autoscaling and a dead replica's error (`ActorUnavailableError`, a `RayActorError`) are the same
    either way. A Serve without the option keeps Ray's."""
    try:
        return handle.options(_by_reference=False)
    except (TypeError, ValueError):
        return handle


def deploy(loaded: LoadedModel, variant_key: str, store, cluster: ClusterSettings, attached: Attached,
           tome_r: int | None = None, take_cpus=None) -> Deployed:
    """One (model, variant) running as a Serve application of its own."""
    started = time.perf_counter()
    app, bound = bind_replica(loaded, variant_key, store, cluster, tome_r, take_cpus)
    handle = run_app(app, bound, attached, f"{variant_key} of {loaded.spec.key}", deadline_s=cluster.deploy_deadline_s)
    return Deployed(app, handle, get_variant(variant_key).key, time.perf_counter() - started)


def status_message(app: str) -> str:
    """Why an application's replicas did not start, in the replica's own words: the last line of the traceback
    Serve keeps (e.g. "DeitDemoError: The onnx_int8 file ... refused."), else Serve's message."""
    try:
        found = serve.status().applications[app]
    except Exception:  # noqa: BLE001 - no status is no more to say
        return ""
    reasons = []
    for deployment in found.deployments.values():
        lines = [line.strip() for line in (deployment.message or "").splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Exit)\b", line)]
        if errors or lines:
            reasons.append((errors or lines)[-1].split("DeitDemoError: ", 1)[-1])
    return " ".join(reasons)[:400] or (found.message or "")[:400]


def replica_count(app: str) -> int:
    """Running replicas of an application (a call to Serve's controller)."""
    try:
        deployments = serve.status().applications[app].deployments.values()
    except (KeyError, AttributeError):
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in deployments)


class _ReplicaCounts:
    """Each application's running replicas, asked of Serve's controller at most once a `ttl_s`: the answer's note
    says how many served it, and asking on every answer cost a controller round trip each."""

    def __init__(self, ttl_s: float = 2.0):
        self.ttl_s, self._seen, self._lock = ttl_s, {}, threading.Lock()

    def __call__(self, app: str) -> int:
        now = time.monotonic()
        with self._lock:
            found = self._seen.get(app)
        if found is not None and now - found[1] < self.ttl_s:
            return found[0]
        count = replica_count(app)
        with self._lock:
            self._seen[app] = (count, now)
        return count


class ClusterServer(Server):
    """`Server` with the forward passes on Ray Serve replicas; the rest (reading images, Auto's choice, jobs,
    conversions) as the in-process server does it."""

    # Images go to the replicas as their cropped uint8 pixels, normalised there: a quarter of the float tensor's
    # bytes (DeiT-Ti: 4.4 ms a call against 5.8 ms for 602 KB of float32, sequential, 2-core EPYC)
    sends_pixels = True

    def __init__(self, models, store, settings=None, cluster: ClusterSettings | None = None,
                 attached: Attached | None = None):
        super().__init__(models, store, settings)
        self.auto.serve_here = False  # Auto's choice is made once; the cluster serves what it chose
        self.auto.preparer = self._prepare_on_worker
        self.cluster = cluster or ClusterSettings()
        self.attached = attached or attach(self.cluster.address)
        self._serve_started = False  # Serve starts with the first deployment (a fleet sweep needs none)
        self._weights: dict[str, object] = {}  # weights id -> the weights in the object store, for tasks
        self._deployed: dict[tuple[str, str, int | None], Deployed] = {}
        self._failed: dict[tuple[str, str, int | None], str] = {}
        self._lock = threading.Lock()
        self._building: dict[tuple[str, str, int | None], threading.Lock] = {}
        self._auto_serving: dict[str, str] = {}  # model -> the verified variant Auto's requests go to now
        self.replicas = _ReplicaCounts()
        self.retried = 0  # calls sent again because their replica died (counted for tests and benchmarks)

    def close(self) -> None:
        self.attached.close()

    def classify(self, source, model_key: str, variant_key: str = ORIGINAL, *, wait_auto: bool = False, **kwargs):
        """As `Server.classify`; with `wait_auto` (the CLI), Auto's choice is prepared and its replicas started
        before the answer, so that the answer comes from the chosen variant."""
        if variant_key == AUTO and wait_auto:
            choice = self.auto.prepare(model_key)
            loaded = self.models.get(model_key)
            try:
                self._target(loaded, (loaded.spec.key, choice.variant, None))
                with self._lock:
                    self._auto_serving[loaded.spec.key] = choice.variant
            except DeitDemoError:
                pass  # recorded: the answer says why and comes from the original
        return super().classify(source, model_key, variant_key, **kwargs)

    def _target(self, loaded: LoadedModel, key: tuple[str, str, int | None], *, retry: bool = True) -> Deployed:
        """The deployment of `key`, deployed now if it is not yet (one deployment per key however many ask); one
        that failed is tried again only when a visitor asks for it by name (`retry`), not by Auto's background."""
        with self._lock:
            if key in self._deployed:
                return self._deployed[key]
            build = self._building.setdefault(key, threading.Lock())
        with build:
            with self._lock:
                if key in self._deployed:
                    return self._deployed[key]
                if not retry and key in self._failed:
                    raise DeitDemoError(self._failed[key])
            try:
                self._start_serve()
                made = deploy(loaded, key[1], self.runners.store, self.cluster, self.attached, key[2],
                              self.take_job_cpus)
            except DeitDemoError as err:
                with self._lock:
                    self._failed[key] = str(err)
                raise
            with self._lock:
                self._deployed[key] = made
            return made

    # ------------------------------------------------------------------ heavy jobs on a worker node (cluster.jobs)

    def _shipped(self, loaded: LoadedModel):
        with self._lock:
            found = self._weights.get(loaded.weights_id)
        if found is None:
            found = ship_weights(loaded)
            with self._lock:
                self._weights[loaded.weights_id] = found
        return found

    def convert(self, loaded: LoadedModel, keys: list[str], tome_r=None, cancel=None) -> list:
        """Convert and check on a worker node; each made file committed here, in the store replicas are shipped
        from, only if its sha256 is the one it was made with."""
        (results, files), node = run_on_worker(_convert, self._shipped(loaded), list(keys), tome_r, cancel=cancel,
                                               what=f"a conversion of {loaded.spec.key}")
        made = {variant: adopt(self.runners.store, loaded.spec.key, loaded.weights_id, manifest, ray.get(ref))
                for variant, manifest, ref in files}
        for row in results:
            row.notes["converted_on"] = node[:12]
            if row.variant in made:
                row.path = str(made[row.variant].path)
        return results

    def _prepare_on_worker(self, loaded: LoadedModel, threads: int):
        """Auto's candidates prepared, checked and timed on a worker node; the chosen files committed here (sha256
        checked), where the deployments are shipped from."""
        (decision, checked, files), _ = run_on_worker(_auto, self._shipped(loaded), self.auto.candidates,
                                                      self.auto.timing_runs, self.auto.rules,
                                                      what=f"Auto's preparation of {loaded.spec.key}")
        for _, manifest, ref in files:
            adopt(self.runners.store, loaded.spec.key, loaded.weights_id, manifest, ray.get(ref))
        return AutoChoice(loaded.spec.key, loaded.weights_id, "ready", decision, checked)

    def benchmark(self, loaded: LoadedModel, settings, cancel=None) -> list:
        """Time on a worker node, with the CPUs free there (its rows say which threads they had)."""
        return run_on_worker(_benchmark, self._shipped(loaded), settings, cancel=cancel,
                             what=f"a benchmark of {loaded.spec.key}")[0]

    def _start_serve(self) -> None:
        with self._lock:
            if not self._serve_started:
                self.attached.started_serve = not self.attached.serve_running()
                serve.start(http_options={"host": "127.0.0.1"}, proxy_location="Disabled")
                self._serve_started = True

    def _auto(self, loaded: LoadedModel) -> tuple[Deployed, str, float | None]:
        """Where Auto's requests go now, with the sentence and agreement to show: the verified choice once its
        deployment is up (deployed in the background meanwhile), else the last one that was, else the original."""
        choice = self.auto.resolve(loaded)
        model, wanted = loaded.spec.key, choice.variant
        key = (model, wanted, None)
        with self._lock:
            ready, failed = key in self._deployed, self._failed.get(key)
            serving = self._auto_serving.get(model, ORIGINAL)
        if wanted != serving and ready:
            with self._lock:
                self._auto_serving[model] = serving = wanted
        elif wanted != serving and not failed and not self._building.get(key, threading.Lock()).locked():
            threading.Thread(target=self._quietly, args=(loaded, key), name="deit-deploy", daemon=True).start()
        target = self._target(loaded, (model, serving, None))
        if serving == wanted:
            return target, choice.sentence(), choice.agreement
        why = failed or f"{wanted} is verified and its replicas are starting"
        return target, f"Auto → {serving} ({why})", None if serving == ORIGINAL else choice.agreement

    def _quietly(self, loaded: LoadedModel, key) -> None:
        try:
            self._target(loaded, key, retry=False)
        except DeitDemoError:
            pass  # recorded in _failed: Auto's next answers say why and stay with what serves

    def _answer(self, groups: dict, tensors: dict, ks: dict, out: list, progress) -> None:
        for n, ((model, variant, r), items) in enumerate(groups.items()):
            if progress:
                progress(f"classifying with {variant} on the cluster", n, len(groups))
            try:
                loaded = self.models.get(model)
                if variant == AUTO:
                    target, note, agreement = self._auto(loaded)
                else:
                    target, note, agreement = self._target(loaded, (model, variant, r)), "", None
                replies = self._call(target, [tensors[i] for i in items])
                # copied: what arrives through the object store is read-only, and torch warns about such arrays
                heads = {name: [np.array(reply["heads"][name]) for reply in replies] for name in replies[0]["heads"]}
                answers = results_from(loaded, heads, k=max(ks[i] for i in items), variant=target.variant,
                                       elapsed_ms=max(reply["ms"] for reply in replies),
                                       one_pass=replies[0]["one_pass"])
                where = f"served by Ray Serve: {self.replicas(target.app)} replica(s) of {model}/{target.variant}"
                for answer, reply in zip(answers, replies):
                    answer.note, answer.agreement = " · ".join(x for x in (note, where) if x), agreement
                    answer.batch_size = reply["batch"]
                self.answered += len(items)
            except DeitDemoError as err:
                answers = [err] * len(items)
            for i, answer in zip(items, answers):
                out[i] = trimmed(loaded if not isinstance(answer, DeitDemoError) else None, answer, ks[i])

    def _call(self, target: Deployed, images: list) -> list[dict]:
        """Each image to the deployment at once (its replicas batch them); a call whose replica died is retried
        once: classifying is idempotent, and Serve has replaced or is replacing that replica."""
        calls = [target.handle.classify.remote(x) for x in images]
        replies = []
        for x, call in zip(images, calls):
            try:
                replies.append(call.result(timeout_s=120))
            except ray.exceptions.RayActorError:
                self.retried += 1
                replies.append(target.handle.classify.remote(x).result(timeout_s=120))
            except TimeoutError:
                raise DeitDemoError("The cluster did not answer within 120 s: its replicas are busy or starting. "
                                    "Please try again in a moment.") from None
        return replies
