"""Your device against this server: DeiT in headless Chromium (ONNX Runtime Web, WASM) and natively (ONNX Runtime),
on the same machine, interleaved, repeated.

    python benchmarks/browser.py [--models deit_tiny,deit_small] [--repeats 3] [--runs 20] [--threads 2] [--explore]

Each repetition times every native ONNX Runtime variant (and the eager original, the host's state), then every
browser format in the page, and ends with `ratio browser/native = X`: the best browser format's median against the
best native ONNX Runtime variant's, for DeiT-S (the issue's measure). The same files run natively too, so the
like-for-like ratio is printed beside it. Then top-1 on deit_synth's held-out images, in the page and natively, per
format. `--explore` times the WASM options: graph optimisation levels, one thread, the ORT format, relaxed SIMD.
Random weights for the ImageNet models (no download here); loopback only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import device_page
import numpy as np
import torch

from deit_demo.app.process import configure_server_process
from deit_demo.app.ui import build_app, launch_kwargs
from deit_demo.core.cpus import machine_info
from deit_demo.core.images import preprocess
from deit_demo.core.models import MODELS
from deit_demo.measure.timing import TimingSettings, time_interleaved
from deit_demo.serve.settings import ServeSettings
from deit_demo.service.config import AppConfig
from deit_demo.service.device import browser_keys
from deit_demo.train import synth
from deit_demo.variants import VARIANTS, Runner
from deit_demo.variants.onnx import ort_runner

NATIVE = ("onnx_fp32", "onnx_int8", "onnx_int8_static")  # the server's ONNX Runtime variants
HEADLINE = "deit_small"


def wasm_keys() -> list[str]:
    return [k for k in browser_keys() if "wasm" in VARIANTS[k].browser]


def made(lab, model: str, keys) -> dict[str, Path]:
    """Each key made (or reused) and checked by the lab; its file's path."""
    paths = {}
    for key in keys:
        fmt = lab.device.prepare(model, key) if key in browser_keys() else None
        if fmt is None:
            outcome = lab.convert(model, [key])
            row = next(r for r in outcome.results if r.variant == key)
            if row.status == "ok":
                paths[key] = Path(row.path)
            continue
        if fmt.status == "ok":
            paths[key] = lab.device.file(model, key, fmt.sha256)
        else:
            print(f"  {model} {key}: {fmt.status}: {fmt.reason}")
    return paths


def native_times(lab, model: str, paths: dict[str, Path], threads: int, timing: TimingSettings) -> dict:
    """The ONNX Runtime variants timed together, interleaved; the eager original (the host's state) on its own first,
    so that PyTorch's OpenMP threads, which spin for a while after each call, do not stretch ONNX Runtime's calls."""
    spec = MODELS[model]
    x = torch.randn(1, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(0))
    eager, _ = time_interleaved({"eager fp32 (original)": Runner(lab.model(model).model)}, x, timing)
    time.sleep(1.0)
    samples, _ = time_interleaved({key: ort_runner(path, threads) for key, path in paths.items()}, x, timing)
    time.sleep(1.0)  # ONNX Runtime's pool stops spinning before the browser's turn
    return {name: s for name, s in {**eager, **samples}.items() if s}


def stats(samples: list[float]) -> tuple[float, float, float]:
    return (float(np.median(samples)), float(np.percentile(samples, 10)), float(np.percentile(samples, 90)))


def accuracy(lab, page, images: int) -> None:
    pictures, labels = zip(*[synth.render("test", i) for i in range(images)])
    files = [device_page.png_base64(im) for im in pictures]
    x = torch.cat([preprocess(im, MODELS["deit_synth"]) for im in pictures])
    y = torch.tensor(labels)
    with torch.inference_mode():
        original = float((lab.model("deit_synth").model(x).argmax(1) == y).float().mean()) * 100
    print(f"\n## Top-1 on deit_synth's first {images} held-out test images (original, eager: {original:.2f}%)\n")
    print("| format | in the browser | natively (same file) | browser − native | browser − original |")
    print("|---|---|---|---|---|")
    for key, path in made(lab, "deit_synth", wasm_keys()).items():
        native = float((ort_runner(path, 1)(x).argmax(1) == y).float().mean()) * 100
        logits = device_page.logits_for_files(page, "deit_synth", key, files)
        mine = float(np.mean([int(np.argmax(lg)) == t for lg, t in zip(logits, labels)])) * 100
        print(f"| {key} | {mine:.2f}% | {native:.2f}% | {mine - native:+.2f} | {mine - original:+.2f} |")


EXPLORE_ORT = """async ([url, options, runs, model]) => {
  const runtime = await import(new URL("gradio_api/deit-web/runtime.js", document.baseURI).href);
  const ort = await runtime.loadRuntime("wasm");
  const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
  const s = await ort.InferenceSession.create(bytes, {executionProviders: ["wasm"], ...options});
  const size = (await runtime.getJSON(`catalog/${model}`)).model.input_size;
  const x = new ort.Tensor("float32", new Float32Array(3 * size * size).fill(0.1), [1, 3, size, size]);
  for (let i = 0; i < 3; i++) await s.run({[s.inputNames[0]]: x});
  const t = [];
  for (let i = 0; i < runs; i++) {
    const a = performance.now();
    await s.run({[s.inputNames[0]]: x});
    t.push(performance.now() - a);
  }
  await s.release();
  return t;
}"""
RELAXED_SIMD = ("WebAssembly.validate(new Uint8Array([0,97,115,109,1,0,0,0,1,5,1,96,0,1,123,3,2,1,0,10,15,1,13,0,65,"
                "1,253,15,65,2,253,15,253,128,2,11]))")


def explore(lab, playwright, url: str, runs: int, threads: int) -> None:
    model = HEADLINE
    print(f"\n## WASM options, {model}, median of {runs} runs (one page each where the runtime needs it)\n")
    print("| option | format | median ms |")
    print("|---|---|---|")
    paths = made(lab, model, ["web_int8", "onnx_fp32"])
    with device_page.device_page(playwright, url, threads=threads) as page:
        relaxed = page.evaluate(RELAXED_SIMD)
        for level in ("disabled", "basic", "extended", "all"):
            for key in paths:
                timed = device_page.time_in_page(page, model, [key], runs=runs,
                                                 options={"graphOptimizationLevel": level})
                print(f"| graphOptimizationLevel={level} | {key} | {statistics.median(timed[key]['samples_ms']):.1f} |")
        with tempfile.TemporaryDirectory() as folder:
            for key, path in paths.items():
                target = Path(folder) / path.name
                target.write_bytes(path.read_bytes())
                subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(target),
                                "--optimization_style", "Fixed"], capture_output=True, check=False)
                ort_file = next(Path(folder).glob(f"{path.stem}*.ort"), None)
                if ort_file is None:
                    print(f"| ORT format | {key} | conversion failed |")
                    continue
                # fetched by the page from a loopback server (as a JSON list, 88 MB of numbers exhausted memory)
                with device_page.serve_bytes(ort_file.read_bytes()) as base:
                    samples = page.evaluate(EXPLORE_ORT, [f"{base}/{ort_file.name}", {}, runs, model])
                print(f"| ORT format ({ort_file.stat().st_size / 2**20:.1f} MB) | {key} | "
                      f"{statistics.median(samples):.1f} |")
    with device_page.device_page(playwright, url, threads=1) as page:
        for key in paths:
            timed = device_page.time_in_page(page, model, [key], runs=runs)
            print(f"| 1 thread (not {threads}) | {key} | {statistics.median(timed[key]['samples_ms']):.1f} |")
    print(f"\nRelaxed SIMD in this browser: {'yes' if relaxed else 'no'}. ONNX Runtime Web 1.30's npm build has no "
          "relaxed-SIMD kernels: env.wasm.simd = 'relaxed' only checks that the browser could run them.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="deit_tiny,deit_small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--store", default=None, help="artifact store (default: a folder under $DEIT_DEMO_HOME)")
    parser.add_argument("--accuracy-images", type=int, default=synth.TEST_IMAGES)
    parser.add_argument("--explore", action="store_true", help="also time the WASM options (graph levels, threads, "
                                                                "ORT format, relaxed SIMD)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # a long run shows its tables as they come
    from playwright.sync_api import sync_playwright

    configure_server_process()
    torch.set_num_threads(args.threads)
    models = args.models.split(",")
    demo = build_app(AppConfig(model=models[-1], weights="random", offline=True, store_root=args.store,
                               auto_prepare=False, serve=ServeSettings(auto_variants=())))
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **launch_kwargs(demo.lab))
    lab, url = demo.lab, demo.local_url
    info = machine_info()
    print(f"# Browser against native, {time.strftime('%Y-%m-%d %H:%M')}: {info.get('cpu')}, {args.threads} threads "
          f"both sides, torch {torch.__version__}, headless Chromium, random weights\n")
    paths = {m: made(lab, m, list(NATIVE) + wasm_keys()) for m in models}
    timing = TimingSettings(runs=args.runs, warmup=3, block=3)
    ratios = []
    with sync_playwright() as playwright, device_page.device_page(playwright, url, threads=args.threads) as page:
        print(f"Page: {page.locator('#device-caps').inner_text()}\n")
        for rep in range(1, args.repeats + 1):
            print(f"## Repetition {rep}\n")
            print("| model | format | browser ms (p10–p90) | native ms (p10–p90) | browser / native |")
            print("|---|---|---|---|---|")
            best = {}
            for model in models:
                native = native_times(lab, model, paths[model], args.threads, timing)
                keys = [k for k in wasm_keys() if k in paths[model]]
                browser = device_page.time_in_page(page, model, keys, runs=args.runs)
                for name, samples in native.items():
                    n = stats(samples)
                    b = stats(browser[name]["samples_ms"]) if name in browser else None
                    shown = f"{b[0]:.1f} ({b[1]:.1f}–{b[2]:.1f})" if b else "–"
                    print(f"| {model} | {name} | {shown} | {n[0]:.1f} ({n[1]:.1f}–{n[2]:.1f}) | "
                          f"{f'{b[0] / n[0]:.1f}×' if b else '–'} |")
                best[model] = (min((stats(browser[k]["samples_ms"])[0], k) for k in keys),
                               min((stats(native[k])[0], k) for k in NATIVE if k in native),
                               stats(native["eager fp32 (original)"])[0], native, browser)
            if HEADLINE in best:
                (b_ms, b_key), (n_ms, n_key), eager, native, _ = best[HEADLINE]
                same = stats(native[b_key])[0] if b_key in native else float("nan")
                ratios.append(b_ms / n_ms)
                print(f"\nratio browser/native = {b_ms / n_ms:.2f}  ({HEADLINE}: browser {b_key} {b_ms:.1f} ms, "
                      f"native {n_key} {n_ms:.1f} ms; the same {b_key} file natively {same:.1f} ms, like for like "
                      f"{b_ms / same:.2f}; host state: native eager fp32 {eager:.1f} ms)\n")
        if "deit_synth" in MODELS and args.accuracy_images:
            accuracy(lab, page, args.accuracy_images)
    if args.explore:
        with sync_playwright() as playwright:
            explore(lab, playwright, url, args.runs, args.threads)
    if ratios:
        print(f"\nratio browser/native per repetition: {', '.join(f'{r:.2f}' for r in ratios)} "
              f"(goal: at most 3.0 in every one)")
    demo.close()


if __name__ == "__main__":
    main()
