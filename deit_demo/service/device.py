"""The visitor's own device: what the page needs to run a model in the browser, and its measurements read back.

The page (app/device.js) asks for a model's browser formats (sizes before any download, how to preprocess, labels),
asks the server to make a format the first time anyone wants it (the same pipeline and answer check as every
variant), downloads it by its sha256, and runs it with ONNX Runtime Web. Its timings come back here as raw samples,
so the statistics are the server's own (`LatencyStats`), and are saved in the results schema that `compare` reads.
"""

from __future__ import annotations

import html
import json
import math
import threading
from dataclasses import asdict, dataclass

from deit_demo.core.errors import DeitDemoError, quoted
from deit_demo.core.models import ModelSpec, get_spec
from deit_demo.measure.bench import BenchResult
from deit_demo.measure.timing import LatencyStats, TimingSettings
from deit_demo.present.report import busy_mark, busy_note
from deit_demo.variants import VARIANTS, get_variant
from deit_demo.variants.pipeline import ConversionResult

BACKENDS = ("wasm", "webgpu")
# A format passes its check when it gives the original's top-1 on at least this share of the check images. Looser
# than Auto on this server, which asks for every image; the page shows each format's agreement beside it.
AGREEMENT_FLOOR = 0.75
BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "int8": 1.05}
ASK_FIRST_BYTES = 100 * 2**20  # the page asks before it downloads a file larger than this
# WASM's order of preference before this device has timed anything: fastest first on DeiT-S in benchmarks/browser.py
# (docs/PERFORMANCE.md). Lossy formats are never chosen for the visitor; they are offered, labelled.
WASM_PREFERENCE = ("web_int8", "onnx_int8", "onnx_fp32")
MAX_RESULT_BYTES = 256 * 1024
MAX_SAMPLES = 1000


def browser_keys() -> list[str]:
    return [key for key, variant in VARIANTS.items() if variant.browser]


def check_browser_variant(key: str) -> str:
    if key not in browser_keys():
        raise DeitDemoError(f"{quoted(key)} is not a browser format; choose one of {', '.join(browser_keys())}.")
    return key


@dataclass
class BrowserFormat:
    """One format as the page lists it: sizes come before downloads (estimated until the file is made)."""

    key: str
    title: str
    precision: str
    backends: list[str]
    lossy: bool
    size_bytes: int
    size_exact: bool
    ready: bool = False
    sha256: str = ""
    url: str = ""
    top1_agreement: float | None = None
    max_abs_diff: float | None = None
    passed: bool | None = None  # None: not checked yet
    r: int | None = None
    status: str = ""
    reason: str = ""


def estimated_bytes(spec: ModelSpec, precision: str) -> int:
    return int(spec.params * BYTES_PER_PARAM.get(precision, 4.0))


def format_of(spec: ModelSpec, key: str, made: ConversionResult | None = None) -> BrowserFormat:
    variant = get_variant(key)
    item = BrowserFormat(key=key, title=variant.title, precision=variant.precision, backends=list(variant.browser),
                         lossy=variant.lossy, size_bytes=estimated_bytes(spec, variant.precision), size_exact=False,
                         r=spec.tome_r if variant.lossy else None)
    if made is not None:
        item.status, item.reason = made.status, made.reason
        if made.status == "ok":
            item.ready, item.size_bytes, item.size_exact, item.sha256 = True, made.size_bytes, True, made.sha256
            item.url = f"model/{spec.key}/{key}/{made.sha256}.onnx"  # relative to the page module
            item.top1_agreement, item.max_abs_diff = made.top1_agreement, made.max_abs_diff
            if made.top1_agreement is not None:
                item.passed = made.top1_agreement >= AGREEMENT_FLOOR
            item.r = made.notes.get("r", item.r) if isinstance(made.notes, dict) else item.r
    return item


def page_spec(spec: ModelSpec, labels: tuple[str, ...]) -> dict:
    """What the page needs to preprocess exactly as `core.images.preprocess` does, and to name the classes."""
    return {"key": spec.key, "label": spec.label, "input_size": spec.input_size, "resize_size": spec.resize_size,
            "interpolation": spec.interpolation, "mean": list(spec.mean), "std": list(spec.std),
            "distilled": spec.distilled, "params": spec.params, "labels": list(labels),
            "examples": [{"name": path.stem.replace("_", " "), "url": f"example/{spec.key}/{i}"}
                         for i, path in enumerate(spec.example_paths()[:8])]}


def timing_spec() -> dict:
    """The server's timing method as the page follows it (measure.timing): warm-up calls, then interleaved blocks of
    `block` calls, the first of each dropped, until `runs` samples."""
    defaults = TimingSettings()
    return {"runs": defaults.runs, "warmup": defaults.warmup, "block": defaults.block}


class MadeOnce:
    """One lock per (model, format): two visitors asking for the same new file wait for one conversion; and each
    made file's checked format, so the check runs once per file rather than once per page session."""

    def __init__(self):
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._checked: dict[tuple[str, str, str], BrowserFormat] = {}
        self._guard = threading.Lock()

    def lock(self, model: str, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((model, key), threading.Lock())

    def checked(self, model: str, weights_id: str, key: str) -> BrowserFormat | None:
        with self._guard:
            return self._checked.get((model, weights_id, key))

    def remember(self, model: str, weights_id: str, made: BrowserFormat) -> None:
        with self._guard:
            self._checked[(model, weights_id, made.key)] = made


# --------------------------------------------------------------------------------------------- results from the page


def _number(value, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise DeitDemoError(f"The device's result has a bad {name} ({quoted(value)}).")
    return float(value)


def _text(value, name: str, limit: int = 200) -> str:
    if not isinstance(value, str):
        raise DeitDemoError(f"The device's result has no {name}.")
    return value[:limit]


@dataclass
class DeviceRun:
    """The page's benchmark, read back and checked: the browser, its backend and threads, and one row per format."""

    model: str
    backend: str
    threads: int
    machine: dict
    rows: list[BenchResult]
    load_ms: dict
    first_ms: dict


def parse_device_run(text: str) -> DeviceRun:
    """The JSON the page sends after its benchmark, with every field checked (it comes from a visitor)."""
    if not isinstance(text, str) or not text.strip():
        raise DeitDemoError("Run the benchmark on your device first: there is no result yet.")
    if len(text) > MAX_RESULT_BYTES:
        raise DeitDemoError("The device's result is too large.")
    try:
        data = json.loads(text)
    except ValueError:
        raise DeitDemoError("The device's result is not JSON.") from None
    if not isinstance(data, dict) or not isinstance(data.get("formats"), list) or not data["formats"]:
        raise DeitDemoError("The device's result has no timed formats.")
    spec = get_spec(_text(data.get("model"), "model"))
    backend = _text(data.get("backend"), "backend")
    if backend not in BACKENDS:
        raise DeitDemoError(f"Unknown backend {quoted(backend)}; the page runs {' or '.join(BACKENDS)}.")
    threads = int(_number(data.get("threads"), "thread count", 1, 256))
    browser = data.get("browser") if isinstance(data.get("browser"), dict) else {}
    cores = int(_number(browser.get("cores", threads), "core count", 1, 1024))
    agent = _text(browser.get("userAgent", "a browser"), "user agent", 300)
    machine = {"cpu": f"browser: {_text(browser.get('name', 'browser'), 'browser name', 80)} "
                      f"({_text(browser.get('platform', '?'), 'platform', 80)})",
               "usable_cpus": cores, "isa": [backend, "simd"] + (["threads"] if threads > 1 else []),
               "torch": None, "platform": agent, "backend": f"onnxruntime-web {backend} ({threads} threads)",
               "cross_origin_isolated": bool(browser.get("isolated")), "device": "browser"}
    rows, load_ms, first_ms = [], {}, {}
    for item in data["formats"][:len(browser_keys())]:
        if not isinstance(item, dict):
            raise DeitDemoError("The device's result has a bad format entry.")
        key = check_browser_variant(_text(item.get("variant"), "variant"))
        samples = item.get("samples_ms")
        if not isinstance(samples, list) or not 1 <= len(samples) <= MAX_SAMPLES:
            raise DeitDemoError(f"The device's result for {key} has no samples.")
        samples = [_number(s, "sample", 0.0, 600_000.0) for s in samples]
        load_ms[key] = _number(item.get("load_ms", 0.0), "load time", 0.0, 3_600_000.0)
        first_ms[key] = _number(item.get("first_ms", 0.0), "first inference", 0.0, 3_600_000.0)
        rows.append(BenchResult(model=spec.key, variant=key, batch_size=1, threads=threads,
                                latency=LatencyStats(samples), size_bytes=int(_number(item.get("size_bytes", 0),
                                                                                       "size", 0, 2**40)),
                                conditions={"where": "your device", "backend": backend, "load_ms": load_ms[key],
                                            "first_inference_ms": first_ms[key]}))
    return DeviceRun(spec.key, backend, threads, machine, rows, load_ms, first_ms)


def device_table(run: DeviceRun, server: list[BenchResult]) -> str:
    """Markdown: each format on your device beside this server, with the ratio; a server timed while busy says so,
    as the Benchmark tab does (core.activity)."""
    here = {r.variant: r for r in server if r.latency and r.latency.samples_ms}
    busy = [f"⚠️ {html.escape(busy_note(server))}", ""] if busy_note(server) else []
    lines = [*busy, (f"**Your device** ({run.machine['cpu']}, {run.machine['backend']}) against **this server**, "
                     f"batch 1, median with p10–p90."), "",
             ("| format | your device ms | p10–p90 | load ms | first inference ms | this server ms | server threads "
             "| ratio |"),
             "|---|---|---|---|---|---|---|---|"]
    for row in run.rows:
        mine = row.latency
        theirs = here.get(row.variant)
        server_ms = (f"{theirs.latency.median_ms:.1f} {html.escape(busy_mark(theirs))}".strip()
                     if theirs else (server_reason(server, row.variant) or "–"))
        ratio = f"{mine.median_ms / theirs.latency.median_ms:.1f}×" if theirs else "–"
        lines.append(f"| {row.variant} | {mine.median_ms:.1f} | {mine.p10_ms:.1f}–{mine.p90_ms:.1f} | "
                     f"{run.load_ms[row.variant]:.0f} | {run.first_ms[row.variant]:.0f} | {server_ms} | "
                     f"{theirs.threads if theirs else '–'} | {ratio} |")
    return "\n".join(lines)


def server_reason(server: list[BenchResult], key: str) -> str:
    row = next((r for r in server if r.variant == key), None)
    return f"{row.status}: {row.reason[:60]}" if row is not None and row.status != "ok" else ""


def as_dict(item: BrowserFormat) -> dict:
    return asdict(item)
