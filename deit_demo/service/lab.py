"""The lab as a service: the one facade the app's handlers and the CLI's commands share (no Gradio here).

`Lab` holds the models (with the policy for weights that cannot be had), the artifact store, visitors' sessions, the
serving component (`serve.Server`), the door every heavy job enters (`jobs.JobDoor`) and the browser formats
(`formats.BrowserFormats`). Each job is one method: it enters the door, takes its CPUs, says what runs, loads its
model inside that budget (`_job`), and hands its settings to one library call, never changing the caller's.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import deit_demo.service.device as device
from deit_demo.core import activity
from deit_demo.core.artifacts import ArtifactStore
from deit_demo.core.cpus import machine_info
from deit_demo.core.errors import Cancelled, DeitDemoError, describe
from deit_demo.core.images import ImageSource, fetch_image_file
from deit_demo.core.model_cache import ModelCache
from deit_demo.core.models import LoadedModel, get_spec
from deit_demo.measure.bench import BenchResult, BenchSettings, run_benchmark
from deit_demo.measure.card import CardSettings, card_markdown, make_card
from deit_demo.measure.decide import Recommendation, recommend, save_sweep
from deit_demo.measure.evaluate import AccuracyResult, evaluate, with_accuracy
from deit_demo.measure.profile import write_traces
from deit_demo.measure.results import results_payload, save_csv, write_json
from deit_demo.measure.sweep import SweepRow, SweepSettings, run_sweep
from deit_demo.measure.tome_sweep import TomeSweepRow, tome_sweep
from deit_demo.measure.tune import TuneResult, TuneSettings, tune
from deit_demo.present import charts
from deit_demo.serve.browser import Runtime
from deit_demo.serve.classify import ClassifyResult
from deit_demo.serve.server import Answer, ClassifyRequest, Server
from deit_demo.service.config import AppConfig
from deit_demo.service.formats import BrowserFormats
from deit_demo.service.jobs import JobDoor
from deit_demo.service.sessions import Sessions
from deit_demo.variants import ORIGINAL, parse_variant_keys
from deit_demo.variants.pipeline import ConversionResult, ProgressFn, run_conversion


@dataclass
class ConvertOutcome:
    loaded: LoadedModel
    results: list[ConversionResult]
    accuracy: list[AccuracyResult] = field(default_factory=list)
    accuracy_note: str = ""
    seconds: float = 0.0

    @property
    def top1(self) -> dict[str, float]:
        return {r.variant: r.top1 for r in self.accuracy if r.top1 is not None}


@dataclass
class DecideOutcome:
    """A sweep, its recommendation under the budgets, and the recommended pair's deployment card (or why none)."""

    rows: list[SweepRow]
    choice: Recommendation
    machine: dict
    card: dict | None = None
    card_note: str = ""


@dataclass(frozen=True)
class Job:
    """What a job holds while it runs: its model (loaded inside its budget) and the CPUs it was granted."""

    loaded: LoadedModel | None
    threads: int
    remote: bool = False  # runs as a task on a cluster's worker node: no CPUs taken here


class Lab:
    """What every request shares: models, the store, visitors' sessions, the serving component and the job door."""

    def __init__(self, config: AppConfig | None = None):
        self.config = config or AppConfig()
        self.models = ModelCache(self.config.max_models, self.config.weights_policy())
        self.store = ArtifactStore(self.config.store_root, cap_bytes=self.config.store_cap_bytes,
                                   isolate=self.config.isolate_conversions)
        self.sessions = Sessions()
        self.server = self._server()
        self.door = JobDoor(self.config.job_concurrency, self.config.jobs_per_visitor, self.config.queue_size,
                            self.config.job_wait_s)
        self.device = BrowserFormats(self.models, self.store, Runtime(fetch=self.config.fetch_web_runtime), self._job)

    def _server(self) -> Server:
        """The in-process server, or with a cluster the one whose passes run on Ray Serve replicas (the only place
        the lab imports Ray from: without a cluster nothing of it loads)."""
        if self.config.cluster is None:
            return Server(self.models, self.store, self.config.serve)
        from deit_demo.cluster.connect import attach

        attached = attach(self.config.cluster.address)  # first: Ray is imported only once its settings are made
        from deit_demo.cluster.server import ClusterServer

        try:
            return ClusterServer(self.models, self.store, self.config.serve, self.config.cluster, attached)
        except BaseException:
            attached.close()
            raise

    def close(self) -> None:
        """Let go of what this lab started (a cluster's deployments, and a `local` head with all its processes)."""
        close = getattr(self.server, "close", None)
        if close is not None:
            close()

    def model(self, key: str, weights: str | None = None) -> LoadedModel:
        """The model with the best weights we can get (see `core.model_cache.WeightsPolicy`)."""
        return self.models.get(key, weights)

    def loaded_model(self, key: str) -> LoadedModel | None:
        """Model `key` if it is loaded already, else None (never loads: the page polls it)."""
        return self.models.peek(get_spec(key).key)

    @property
    def store_root(self) -> Path:
        return self.store.root

    def heavy_cpus(self, requested: int | None = None) -> int:
        """CPUs a convert/benchmark job may take: all but those kept for classification."""
        return self.server.job_cpus(requested)

    @contextlib.contextmanager
    def _job(self, what: str, *, visitor: str | None = None, cancel: threading.Event | None = None,
             threads: int | None = None, model: str | None = None, weights: str | None = None,
             here: bool = True) -> Iterator[Job]:
        """Every job's shape: through the door (its turn, the visitor's share), its CPUs taken, what runs noted, its
        model loaded inside that budget; all of it released however the job ends. Callers check the model key
        before (`_key`), so that a bad one is said at once rather than after a wait at the door."""
        cpus = self.server.take_job_cpus(threads) if here else contextlib.nullcontext(0)
        with self.door.enter(visitor, what, cancel), cpus as granted, activity.ACTIVITY.doing(what):
            yield Job(self.models.get(model, weights) if model else None, granted, remote=not here)

    # ---------------------------------------------------------------------------------------------- visitors

    def classify(self, source: ImageSource, model_key: str, variant_key: str = ORIGINAL, **kwargs) -> Answer:
        """Top-k of one image (see `Server.classify`)."""
        return self.server.classify(source, model_key, variant_key, **kwargs)

    def classify_batch(self, requests: list[ClassifyRequest]) -> list[Answer | DeitDemoError]:
        """Several visitors' images at once, an answer or an error each (see `Server.classify_batch`)."""
        return self.server.classify_batch(requests)

    def prepare_auto(self, model_key: str) -> None:
        """Auto's candidates for `model_key` prepared in the background; until then Auto serves the original."""
        self.server.auto.request(model_key)

    def auto_status(self, model_key: str) -> str:
        """One line on what Auto does for `model_key`: preparing (how far), ready (what and why) or failed (why)."""
        return self.server.auto.status(get_spec(model_key).key)

    def fetch_image(self, url: str, session: str | None) -> Path:
        """An image URL fetched into the visitor's folder (so a slow host never holds a shared batch)."""
        return fetch_image_file(url, self.sessions.folder(session), self.server.fetch)

    def cancel_event(self, session: str | None) -> threading.Event:
        return self.sessions.cancel_event(session)

    def session_dir(self, session: str | None) -> Path:
        return self.sessions.folder(session)

    def end_session(self, session: str | None) -> None:
        self.sessions.end(session)

    @property
    def sessions_root(self) -> Path:
        return self.sessions.root

    # ---------------------------------------------------------------------------------------------- jobs

    def convert(self, model_key: str, keys, *, tome_r: int | None = None, progress: ProgressFn | None = None,
                visitor: str | None = None) -> ConvertOutcome:
        """Convert and check `keys`; with labelled data for this model (built in or --eval-data), accuracy too."""
        chosen, start = parse_variant_keys(keys), time.perf_counter()
        with self._job(f"a conversion of {model_key}", visitor=visitor, model=_key(model_key),
                       here=self.config.cluster is None) as job:
            # With a cluster, on a worker node: the cores that answer visitors never convert
            outcome = ConvertOutcome(job.loaded, self.server.convert(job.loaded, chosen, tome_r) if job.remote else
                                     run_conversion(job.loaded, chosen, self.store, progress=progress, tome_r=tome_r))
            if job.loaded.spec.eval_set is not None or self.config.eval_data:
                ok = [r.variant for r in outcome.results if r.status == "ok"]
                try:
                    with self.server.take_job_cpus() if job.remote else contextlib.nullcontext():
                        outcome.accuracy = evaluate(job.loaded, ok, self.store, self.config.eval_data,
                                                    progress=progress, tome_r=tome_r)
                    outcome.accuracy_note = with_accuracy(outcome.results, outcome.accuracy)
                except DeitDemoError as err:
                    outcome.accuracy_note = f"Accuracy not measured: {err}"
        outcome.seconds = time.perf_counter() - start
        return outcome

    def evaluate(self, model_key: str, keys, *, progress: ProgressFn | None = None, tome_r: int | None = None,
                 visitor: str | None = None) -> tuple[LoadedModel, list[AccuracyResult]]:
        """Top-1/top-5 of each variant on the model's labelled data (or the lab's --eval-data folder)."""
        with self._job(f"an evaluation of {model_key}", visitor=visitor, model=_key(model_key)) as job:
            return job.loaded, evaluate(job.loaded, parse_variant_keys(keys), self.store, self.config.eval_data,
                                        progress=progress, tome_r=tome_r)

    def benchmark(self, model_key: str, settings: BenchSettings, *, progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None, on_update=None,
                  visitor: str | None = None) -> tuple[LoadedModel, list[BenchResult]]:
        """Time the variants in `settings` on this lab's CPUs (a job takes at most `heavy_cpus`)."""
        with self._job(f"a benchmark of {model_key}", visitor=visitor, cancel=cancel,
                       threads=settings.resolved_threads(), model=_key(model_key),
                       here=self.config.cluster is None) as job:
            if job.remote:  # on a worker node, with the CPUs free there
                return job.loaded, self.server.benchmark(job.loaded, settings, cancel)
            return job.loaded, run_benchmark(job.loaded, replace(settings, threads=job.threads), self.store,
                                             progress=progress, cancel=cancel, on_update=on_update,
                                             timing_niceness=self.config.serve.heavy_niceness)

    def tome_sweep(self, model_key: str, rs, settings: BenchSettings, *, int8: bool = False,
                   progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                   visitor: str | None = None) -> tuple[LoadedModel, list[TomeSweepRow]]:
        """Token merging at each r: latency, accuracy on built-in data, agreement with r = 0."""
        with self._job(f"an r sweep of {model_key}", visitor=visitor, cancel=cancel,
                       threads=settings.resolved_threads(), model=_key(model_key)) as job:
            return job.loaded, tome_sweep(job.loaded, rs, replace(settings, threads=job.threads), self.store,
                                          int8=int8, progress=progress, cancel=cancel,
                                          timing_niceness=self.config.serve.heavy_niceness)

    def sweep(self, settings: SweepSettings, *, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None, on_update=None, visitor: str | None = None) -> list[SweepRow]:
        """Models x variants timed together, on the share of the CPUs a job may take; with an accuracy budget, each
        pair judged on the labelled set (the settings' folder, else the lab's --eval-data, else the built-in split)
        and the token-merging r tuned to it first. Each model is loaded inside the job."""
        settings = replace(settings, eval_data=settings.eval_data or self.config.eval_data)
        with self._job(f"a sweep of {', '.join(settings.models)}", visitor=visitor, cancel=cancel) as job:
            return run_sweep(settings, lambda key: self.models.get(key, settings.weights), self.store,
                             progress=progress, cancel=cancel, on_update=on_update, max_threads=job.threads,
                             timing_niceness=self.config.serve.heavy_niceness)

    def decide(self, settings: SweepSettings, *, card: bool = True, progress: ProgressFn | None = None,
               cancel: threading.Event | None = None, on_update=None,
               on_choice: Callable[[list[SweepRow], Recommendation], None] | None = None,
               visitor: str | None = None) -> DecideOutcome:
        """Sweep -> recommendation under the budgets -> the recommended pair's deployment card: the Decide tab's and
        the CLI's `sweep` flow, once. `on_choice` hears the recommendation before its card is measured."""
        rows = self.sweep(settings, progress=progress, cancel=cancel, on_update=on_update, visitor=visitor)
        machine = machine_info()
        choice = recommend(rows, budget_ms=settings.budget_ms, budget_mb=settings.budget_mb,
                           min_top1=settings.min_top1, min_agreement=settings.min_agreement,
                           max_drop=settings.max_drop, machine=machine)
        outcome = DecideOutcome(rows, choice, machine)
        if on_choice is not None:
            on_choice(rows, choice)
        if not card or choice.best is None:
            outcome.card_note = "" if not card else "No deployment card: nothing fits the budgets."
            return outcome
        best = choice.best
        try:
            card_settings = CardSettings(best["variant"], batch_sizes=sorted({1, 8, best.get("batch_size", 1)}),
                                         runs=max(settings.runs, 20), warmup=settings.warmup,
                                         threads=best.get("threads") or 0, tome_r=best.get("tome_r"),
                                         eval_data=settings.eval_data or self.config.eval_data)
            _, outcome.card = self.card(best["model"], card_settings, progress=progress, cancel=cancel,
                                        visitor=visitor)
        except Cancelled:
            outcome.card_note = "Stopped before the deployment card was measured."
        except Exception as err:  # the recommendation stands without its card; say why
            outcome.card_note = f"No deployment card: {describe(err)}"
        return outcome

    def tune(self, model_key: str, settings: TuneSettings, *, progress: ProgressFn | None = None,
             cancel: threading.Event | None = None, visitor: str | None = None) -> tuple[LoadedModel, TuneResult]:
        """Token merging's r tuned to an accuracy budget (measured) and stored with the model's artifacts."""
        with self._job(f"tuning {settings.variant} of {model_key}", visitor=visitor, cancel=cancel,
                       threads=settings.threads or None, model=_key(model_key)) as job:
            settings = replace(settings, threads=job.threads, eval_data=settings.eval_data or self.config.eval_data)
            return job.loaded, tune(job.loaded, settings, self.store, progress=progress, cancel=cancel,
                                    timing_niceness=self.config.serve.heavy_niceness)

    def card(self, model_key: str, settings: CardSettings, *, progress: ProgressFn | None = None,
             cancel: threading.Event | None = None, visitor: str | None = None) -> tuple[LoadedModel, dict]:
        """The deployment card of one (model, variant) pair, measured now (see `measure.card`)."""
        with self._job(f"a deployment card of {model_key}/{settings.variant}", visitor=visitor, cancel=cancel,
                       threads=settings.threads or None, model=_key(model_key)) as job:
            settings = replace(settings, threads=job.threads, eval_data=settings.eval_data or self.config.eval_data)
            return job.loaded, make_card(job.loaded, settings, self.store, progress=progress, cancel=cancel,
                                         timing_niceness=self.config.serve.heavy_niceness)

    def device_benchmark(self, text: str, *, runs: int = 10,
                         visitor: str | None = None) -> tuple[device.DeviceRun, list[BenchResult]]:
        """The page's timings read back, and this server timing the same files (batch 1, the job's CPUs)."""
        run = device.parse_device_run(text)
        settings = BenchSettings(variants=[r.variant for r in run.rows], runs=runs, warmup=3, profile=False)
        return run, self.benchmark(run.model, settings, visitor=visitor)[1]

    # ---------------------------------------------------------------------------------------------- files

    def save_card(self, card: dict, stem: Path | str | None = None, folder: Path | None = None) -> list[Path]:
        """The card as `stem`.md and `stem`.json (or a new name in `folder`)."""
        stem = Path(stem) if stem else _stem(folder, f"card_{card['model']}_{card['variant']}")
        stem.parent.mkdir(parents=True, exist_ok=True)
        markdown, data = stem.with_name(stem.name + ".md"), stem.with_name(stem.name + ".json")
        markdown.write_text(card_markdown(card))
        write_json(data, card)
        return [markdown, data]

    def save_benchmark(self, loaded: LoadedModel, results: list[BenchResult], folder: Path) -> list[Path]:
        """JSON, CSV and standalone HTML charts of a benchmark, written into `folder`."""
        stem = _stem(folder, f"bench_{loaded.spec.key}")
        write_json(f"{stem}.json", results_payload(results, model=loaded.spec.key))
        save_csv(f"{stem}.csv", results)
        charts.write_html(results, f"{stem}.html", title=f"DeiT benchmark: {loaded.spec.key}")
        return [Path(f"{stem}.json"), Path(f"{stem}.csv"), Path(f"{stem}.html"), *write_traces(results, stem)]

    def save_sweep(self, rows: list[SweepRow], settings: SweepSettings, choice: Recommendation,
                   path: Path | str | None = None, folder: Path | None = None) -> Path:
        """A sweep's rows, settings and recommendation as one results file (`path`, or a new name in `folder`)."""
        path = Path(path) if path else Path(f"{_stem(folder, 'sweep')}.json")
        save_sweep(path, rows, settings, choice)
        return path

    def save_device(self, run: device.DeviceRun, server: list[BenchResult], folder: Path) -> list[Path]:
        """Two results files `compare` overlays: your device's (its machine is the browser) and this server's."""
        stem = _stem(folder, f"device_{run.model}")
        mine = Path(f"{stem}_your_device.json")
        write_json(mine, results_payload(run.rows, model=run.model, machine=run.machine))
        theirs = Path(f"{stem}_this_server.json")
        write_json(theirs, results_payload(server, model=run.model))
        return [mine, theirs]


def _key(model_key: str) -> str:
    """The catalog key, or the project error that names the valid ones."""
    return get_spec(model_key).key


def _stem(folder: Path, prefix: str) -> Path:
    """A new file name in `folder` (made if need be): the prefix, the time, and microseconds against collisions."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{prefix}_{time.strftime('%Y%m%d-%H%M%S')}_{time.time_ns() % 10**6:06d}"


__all__ = ["ClassifyRequest", "ClassifyResult", "ConvertOutcome", "DecideOutcome", "Lab"]
