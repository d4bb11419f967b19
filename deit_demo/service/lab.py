"""The lab as a service: the one facade the app's handlers and the CLI's commands share (no Gradio here).

`Lab` holds the models (and the policy for weights that cannot be had), the artifact store, visitors' sessions and
the serving component (`serve.Server`), and turns a request (model key, variant keys, settings) into one library
call. Callers never reach into its parts: each job has a method here, with the CPU share and niceness a job gets.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from deit_demo.core import activity
from deit_demo.core.artifacts import ArtifactStore
from deit_demo.core.errors import DeitDemoError
from deit_demo.core.images import ImageSource, fetch_image_file
from deit_demo.core.models import MODELS, LoadedModel, ModelCache, get_spec
from deit_demo.measure import charts
from deit_demo.measure.bench import BenchResult, BenchSettings, run_benchmark
from deit_demo.measure.card import CardSettings, card_markdown, make_card
from deit_demo.measure.decide import Recommendation, save_sweep
from deit_demo.measure.evaluate import AccuracyResult, evaluate
from deit_demo.measure.profile import write_traces
from deit_demo.measure.report import weights_banner
from deit_demo.measure.results import results_payload, save_csv, write_json
from deit_demo.measure.sweep import SweepRow, SweepSettings, run_sweep
from deit_demo.measure.tome_sweep import TomeSweepRow, tome_sweep
from deit_demo.measure.tune import TuneResult, TuneSettings, tune
from deit_demo.serve.browser import Runtime
from deit_demo.serve.classify import ClassifyResult, labels_for
from deit_demo.serve.server import Server
from deit_demo.service import device
from deit_demo.service.config import AppConfig
from deit_demo.service.sessions import Sessions
from deit_demo.variants import ORIGINAL, get_variant, parse_variant_keys
from deit_demo.variants.base import VariantContext
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


class Lab:
    """What every request shares: models, the store, visitors' sessions and the serving component."""

    def __init__(self, config: AppConfig | None = None):
        self.config = config or AppConfig()
        self.cache = ModelCache(self.config.max_models)
        self.store = ArtifactStore(self.config.store_root, cap_bytes=self.config.store_cap_bytes,
                                   isolate=self.config.isolate_conversions)
        self.fallbacks: dict[str, str] = {}
        self.sessions = Sessions()
        self.server = Server(self.model, self.store, self.config.serve)
        self.web_runtime = Runtime(fetch=self.config.fetch_web_runtime)
        self._made_once = device.MadeOnce()

    # ---------------------------------------------------------------------------------------------- models

    def model(self, key: str, weights: str | None = None) -> LoadedModel:
        """The model with the best weights we can get (`weights`, else the configured model's or the hub's); with
        `fallback_to_random`, random weights (and a banner) when the hub or a checkpoint cannot be had."""
        spec = get_spec(key)
        weights = weights or (self.config.weights if key == self.config.model else "hub")
        if self.config.offline and weights == "hub" and not spec.bundled:
            weights = "random"
            self.fallbacks[key] = "the server was started with --offline"
        if weights == "random" or not self.config.fallback_to_random:
            return self.cache.get(key, weights)
        try:
            return self.cache.get(key, weights)
        except DeitDemoError:
            self.fallbacks[key] = (f"No pretrained weights: the Hugging Face hub is unreachable and the local cache "
                                   f"has no copy of {spec.hf_repo}" if weights == "hub" else
                                   f"The checkpoint {Path(weights).name} could not be loaded")
            return self.cache.get(key, "random")

    def banner(self, loaded: LoadedModel, *, markdown: bool = True) -> str:
        return weights_banner(loaded, self.fallbacks.get(loaded.spec.key, ""), markdown=markdown)

    def loaded_banner(self, key: str) -> str | None:
        """`banner` for model `key` if it is loaded already, else None (never loads: the page polls it)."""
        loaded = self.cache.peek(get_spec(key).key)
        return None if loaded is None else self.banner(loaded)

    @property
    def store_root(self) -> Path:
        return self.store.root

    def heavy_cpus(self, requested: int | None = None) -> int:
        """CPUs a convert/benchmark job may take: all but those kept for classification."""
        return self.server.job_cpus(requested)

    # ---------------------------------------------------------------------------------------------- visitors

    def classify(self, source: ImageSource, model_key: str, variant_key: str = ORIGINAL, **kwargs
                 ) -> tuple[LoadedModel, ClassifyResult]:
        """Top-k of one image (see `Server.classify`)."""
        return self.server.classify(source, model_key, variant_key, **kwargs)

    def classify_batch(self, sources: list[ImageSource], model_keys: list[str], variant_keys: list[str], *,
                       k: int = 5) -> list[tuple[LoadedModel, ClassifyResult] | DeitDemoError]:
        """Several visitors' images at once, an answer or an error each (see `Server.classify_batch`)."""
        return self.server.classify_batch(sources, model_keys, variant_keys, k=k)

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

    def convert(self, model_key: str, keys, *, tome_r: int | None = None,
                progress: ProgressFn | None = None) -> ConvertOutcome:
        """Convert and check `keys`; with labelled data for this model (built in or --eval-data), accuracy too."""
        loaded = self.model(model_key)
        chosen = parse_variant_keys(keys)
        start = time.perf_counter()
        with self.server.cpus.take(self.heavy_cpus()), activity.ACTIVITY.doing(f"a conversion of {model_key}"):
            outcome = ConvertOutcome(loaded, run_conversion(loaded, chosen, self.store, progress=progress,
                                                            tome_r=tome_r))
            if loaded.spec.eval_set is not None or self.config.eval_data:
                ok = [r.variant for r in outcome.results if r.status == "ok"]
                try:
                    outcome.accuracy = evaluate(loaded, ok, self.store, self.config.eval_data, progress=progress,
                                                tome_r=tome_r)
                    measured = [r for r in outcome.accuracy if r.n_images]
                    same = {r.variant: r for r in measured}
                    for row in outcome.results:  # accuracy and agreement in one row: from the same images
                        if row.variant in same:
                            row.notes["check_agreement"] = row.top1_agreement
                            row.top1_agreement = same[row.variant].top1_agreement
                            row.agreement_on = same[row.variant].agreement_on
                    if measured:
                        outcome.accuracy_note = (f"Accuracy: top-1 on {measured[0].data} ({measured[0].n_images} "
                                                 "labelled images).")
                except DeitDemoError as err:
                    outcome.accuracy_note = f"Accuracy not measured: {err}"
        outcome.seconds = time.perf_counter() - start
        return outcome

    def evaluate(self, model_key: str, keys, *, progress: ProgressFn | None = None,
                 tome_r: int | None = None) -> tuple[LoadedModel, list[AccuracyResult]]:
        """Top-1/top-5 of each variant on the model's labelled data (or the lab's --eval-data folder)."""
        loaded = self.model(model_key)
        with self.server.cpus.take(self.heavy_cpus()), activity.ACTIVITY.doing(f"an evaluation of {model_key}"):
            return loaded, evaluate(loaded, parse_variant_keys(keys), self.store, self.config.eval_data,
                                    progress=progress, tome_r=tome_r)

    def benchmark(self, model_key: str, settings: BenchSettings, *, progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None, on_update=None) -> tuple[LoadedModel, list[BenchResult]]:
        """Time the variants in `settings` on this lab's CPUs (a job takes at most `heavy_cpus`)."""
        with self.server.cpus.take(self.heavy_cpus(settings.resolved_threads())) as granted, \
                activity.ACTIVITY.doing(f"a benchmark of {model_key}"):
            settings.threads = granted
            loaded = self.model(model_key)
            return loaded, run_benchmark(loaded, settings, self.store, progress=progress, cancel=cancel,
                                         on_update=on_update, timing_niceness=self.config.serve.heavy_niceness)

    def tome_sweep(self, model_key: str, rs, settings: BenchSettings, *, int8: bool = False,
                   progress: ProgressFn | None = None, cancel: threading.Event | None = None
                   ) -> tuple[LoadedModel, list[TomeSweepRow]]:
        """Token merging at each r: latency, accuracy on built-in data, agreement with r = 0."""
        with self.server.cpus.take(self.heavy_cpus(settings.resolved_threads())) as granted, \
                activity.ACTIVITY.doing(f"an r sweep of {model_key}"):
            settings.threads = granted
            loaded = self.model(model_key)
            return loaded, tome_sweep(loaded, rs, settings, self.store, int8=int8, progress=progress, cancel=cancel,
                                      timing_niceness=self.config.serve.heavy_niceness)

    def sweep(self, settings: SweepSettings, *, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None, on_update=None) -> list[SweepRow]:
        """Models x variants timed together, on the share of the CPUs a job may take; with an accuracy budget, each
        pair judged on the labelled set (the settings' folder, else the lab's --eval-data, else the built-in split)
        and the token-merging r tuned to it first."""
        settings.eval_data = settings.eval_data or self.config.eval_data
        with self.server.cpus.take(self.heavy_cpus()) as granted, \
                activity.ACTIVITY.doing(f"a sweep of {', '.join(settings.models)}"):
            return run_sweep(settings, lambda key: self.model(key, settings.weights), self.store, progress=progress,
                             cancel=cancel, on_update=on_update, max_threads=granted,
                             timing_niceness=self.config.serve.heavy_niceness)

    def tune(self, model_key: str, settings: TuneSettings, *, progress: ProgressFn | None = None,
             cancel: threading.Event | None = None) -> tuple[LoadedModel, TuneResult]:
        """Token merging's r tuned to an accuracy budget (measured) and stored with the model's artifacts."""
        settings.eval_data = settings.eval_data or self.config.eval_data
        with self.server.cpus.take(self.heavy_cpus(settings.threads or None)) as granted, \
                activity.ACTIVITY.doing(f"tuning {settings.variant} of {model_key}"):
            settings.threads = granted
            loaded = self.model(model_key)
            return loaded, tune(loaded, settings, self.store, progress=progress, cancel=cancel,
                                timing_niceness=self.config.serve.heavy_niceness)

    def card(self, model_key: str, settings: CardSettings, *, progress: ProgressFn | None = None,
             cancel: threading.Event | None = None) -> tuple[LoadedModel, dict]:
        """The deployment card of one (model, variant) pair, measured now (see `measure.card`)."""
        settings.eval_data = settings.eval_data or self.config.eval_data
        with self.server.cpus.take(self.heavy_cpus(settings.threads or None)) as granted, \
                activity.ACTIVITY.doing(f"a deployment card of {model_key}/{settings.variant}"):
            settings.threads = granted
            loaded = self.model(model_key)
            return loaded, make_card(loaded, settings, self.store, progress=progress, cancel=cancel,
                                     timing_niceness=self.config.serve.heavy_niceness)

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


    def save_sweep(self, rows: list[SweepRow], settings: SweepSettings, choice: Recommendation, folder: Path) -> Path:
        """A sweep's rows, settings and recommendation as one results file in `folder`."""
        path = Path(f"{_stem(folder, 'sweep')}.json")
        save_sweep(path, rows, settings, choice)
        return path


    # ---------------------------------------------------------------------------------------------- the visitor's device

    def browser_catalog(self, model_key: str) -> dict:
        """What the page needs for `model_key`: how to preprocess, the labels, and each browser format with its size
        (exact where the file is made, estimated until then: nothing is converted here)."""
        loaded = self.model(model_key)
        formats = []
        for key in device.browser_keys():
            found = self._stored(loaded, key)
            made = None
            if found is not None:
                made = ConversionResult(model=loaded.spec.key, variant=key, status="ok", size_bytes=found.size_bytes,
                                        sha256=found.sha256, notes=found.notes)  # checked again when asked for
            formats.append(device.as_dict(device.format_of(loaded.spec, key, made)))
        return {"model": device.page_spec(loaded.spec, labels_for(loaded)), "weights": loaded.weights,
                "banner": self.banner(loaded, markdown=False), "formats": formats,
                "preference": list(device.WASM_PREFERENCE), "ask_first_bytes": device.ASK_FIRST_BYTES,
                "runtime": self.web_runtime.status(), "timing": device.timing_spec()}

    def browser_format(self, model_key: str, key: str) -> device.BrowserFormat:
        """Make (the first time anyone asks) and check one browser format; its download URL names its sha256."""
        device.check_browser_variant(key)
        loaded = self.model(model_key)
        with self._made_once.lock(loaded.spec.key, key):
            # Checked once per file: every new page session asks again, and the stored file still answers for it
            checked = self._made_once.checked(loaded.spec.key, loaded.weights_id, key)
            if checked is not None and (found := self._stored(loaded, key)) is not None \
                    and found.sha256 == checked.sha256:
                return checked
            with self.server.cpus.take(self.heavy_cpus()), activity.ACTIVITY.doing(f"a browser format of {model_key}"):
                made = run_conversion(loaded, [key], self.store)[0]
            fmt = device.format_of(loaded.spec, key, made)
            if fmt.ready:
                self._made_once.remember(loaded.spec.key, loaded.weights_id, fmt)
            return fmt

    def browser_file(self, model_key: str, key: str, sha256: str) -> Path:
        """The stored file of a made format, verified; an error if it is not made or no longer has this sha256."""
        device.check_browser_variant(key)
        found = self._stored(self.model(model_key), key)
        if found is None or found.sha256 != sha256:
            raise DeitDemoError(f"The {key} file of {model_key} with sha256 {sha256[:12]}… is not on this server "
                                "(it was never made, or it changed): reload the formats and try again.")
        return found.path

    def _stored(self, loaded: LoadedModel, key: str):
        """The verified stored file of variant `key` for `loaded`, or None: nothing is converted."""
        variant = get_variant(key)
        # The key needs only the spec (a full variant_context decodes the example images): as RunnerCache does
        return self.store.lookup(loaded.spec.key, loaded.weights_id,
                                 variant.store_key(VariantContext(loaded.spec, self.store.root)), variant.version)

    def device_benchmark(self, text: str, *, runs: int = 10) -> tuple[device.DeviceRun, list[BenchResult]]:
        """The page's timings read back, and this server timing the same files (batch 1, the job's CPUs)."""
        run = device.parse_device_run(text)
        settings = BenchSettings(variants=[r.variant for r in run.rows], runs=runs, warmup=3, profile=False)
        _, server = self.benchmark(run.model, settings)
        return run, server

    def save_device(self, run: device.DeviceRun, server: list[BenchResult], folder: Path) -> list[Path]:
        """Two results files `compare` overlays: your device's (its machine is the browser) and this server's."""
        stem = _stem(folder, f"device_{run.model}")
        mine = Path(f"{stem}_your_device.json")
        write_json(mine, results_payload(run.rows, model=run.model, machine=run.machine))
        theirs = Path(f"{stem}_this_server.json")
        write_json(theirs, results_payload(server, model=run.model))
        return [mine, theirs]


def _stem(folder: Path, prefix: str) -> Path:
    """A new file name in `folder` (made if need be): the prefix, the time, and microseconds against collisions."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{prefix}_{time.strftime('%Y%m%d-%H%M%S')}_{time.time_ns() % 10**6:06d}"


def model_choices() -> list[tuple[str, str]]:
    return [(f"{s.label}  ({s.key})", s.key) for s in MODELS.values()]
