import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env_extra=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "deit_demo", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


def test_models_lists_the_catalog():
    out = run_cli("models")
    assert out.returncode == 0
    assert "deit_base_patch16_224.fb_in1k" in out.stdout and "deit_base_distilled_patch16_384" in out.stdout
    assert "| 81.8 | 95.7 | DeiT paper / timm |" in out.stdout and "| measured here |" in out.stdout


def test_classify_random_prints_a_table_and_json(tmp_path):
    out = run_cli("classify", "assets/chelsea_cat.jpg", "--model", "deit_tiny", "--weights", "random",
                  "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    assert "weights: random" in out.stdout and "meaningless" in out.stdout
    assert "| # | label | class | probability |" in out.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["weights"] == "random" and len(data["heads"]["logits"]) == 5


def test_classify_distilled_shows_both_heads():
    out = run_cli("classify", "assets/coffee.jpg", "--model", "deit_tiny_distilled", "--weights", "random",
                  "--top", "3")
    assert out.returncode == 0, out.stderr
    for title in ("Class token head", "Distillation token head", "Average"):
        assert title in out.stdout


def test_classify_hub_offline_gives_the_actionable_message(tmp_path):
    out = run_cli("classify", "assets/chelsea_cat.jpg", "--model", "deit_tiny",
                  env_extra={"HF_HOME": str(tmp_path / "empty-hf")})
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "--weights random" in out.stderr and "hf download timm/deit_tiny_patch16_224.fb_in1k" in out.stderr


def test_classify_bad_input_is_one_readable_line(tmp_path):
    (tmp_path / "fake.jpg").write_text("not an image")
    out = run_cli("classify", str(tmp_path / "fake.jpg"), "--model", "deit_tiny", "--weights", "random")
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    out = run_cli("classify", "http://169.254.169.254/x.jpg", "--model", "deit_tiny", "--weights", "random")
    assert out.returncode == 2 and "link-local" in out.stderr


@pytest.mark.slow
def test_convert_and_bench_cli(tmp_path, store):
    # One variant of each family, quick to convert (test_variants converts every variant, in-process: converting
    # them all again here, in a second process that must recompile the inductor ones, took minutes).
    keys = ["original", "scripted", "scripted_int8", "mobile_optimized", "onnx_int8", "tome_fp32"]
    out = run_cli("convert", "--model", "deit_tiny", "--weights", "random", "--variants", ",".join(keys),
                  "--store", str(store.root), "--json", str(tmp_path / "c.json"), timeout=900)
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[0]
    assert header.startswith("| variant | status | file | size MB | % of original | seconds | top-1 agreement")
    data = json.loads((tmp_path / "c.json").read_text())
    assert [r["variant"] for r in data["rows"]] == keys
    assert "note: torch.jit is deprecated" in out.stdout
    families = {__import__("deit_demo.variants").variants.VARIANTS[r["variant"]].family for r in data["rows"]}
    assert families == {"classic", "modern", "less work"}
    out = run_cli("bench", "--model", "deit_tiny", "--weights", "random", "--variants", "original,scripted_int8",
                  "--runs", "4", "--warmup", "1", "--threads", "1", "--batch", "1,2", "--store", str(store.root),
                  "--json", str(tmp_path / "b.json"), "--csv", str(tmp_path / "b.csv"),
                  "--html", str(tmp_path / "b.html"))
    assert out.returncode == 0, out.stderr
    assert "| Model | batch | Inference Time | Reduction | Size | Size Reduction |" in out.stdout
    assert "not wall time" in out.stdout
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert len(rows) == 4 and all(len(r["samples_ms"]) == 4 for r in rows)
    assert (tmp_path / "b.html").stat().st_size > 100_000 and (tmp_path / "b.csv").exists()
    out = run_cli("profile", "--model", "deit_tiny", "--weights", "random", "--variants",
                  "original,onnx_int8,executorch_int8", "--runs", "3", "--warmup", "1", "--threads", "1",
                  "--store", str(store.root), "--json", str(tmp_path / "p.json"), "--html", str(tmp_path / "p.html"),
                  "--traces", str(tmp_path / "traces"), timeout=900)
    assert out.returncode == 0, out.stderr
    assert "| class | original | onnx_int8 |" in out.stdout and "| linear: MLP |" in out.stdout
    assert "more than" in out.stdout and "executorch_int8: no breakdown: ExecuTorch's ETDump" in out.stdout
    payload = json.loads((tmp_path / "p.json").read_text())
    assert payload["profiled_after_timing"] and {r["variant"] for r in payload["rows"]} >= {"original", "onnx_int8"}
    traces = sorted(p.name for p in (tmp_path / "traces").iterdir())
    assert len(traces) == 2 and all(json.loads((tmp_path / "traces" / n).read_text())["traceEvents"] for n in traces)


def test_json_to_stdout_is_only_json():
    out = run_cli("classify", "assets/chelsea_cat.jpg", "--model", "deit_tiny", "--weights", "random", "--json", "-")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)  # nothing but the JSON document on stdout
    assert data["model"] == "deit_tiny" and "| # | label |" in out.stderr


@pytest.mark.parametrize("flags,message", [
    (["--batch", "x"], "Batch sizes must be whole numbers from 1 to 64"),
    (["--runs", "0"], "runs must be a whole number from 1 to 10000"),
    (["--threads", "-3"], "threads must be a whole number from 0 to"),
    (["--variants", "nope"], "Unknown variant 'nope'"),
])
def test_bad_bench_settings_are_one_line_errors(flags, message):
    out = run_cli("bench", "--model", "deit_tiny", "--weights", "random", *flags)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"error: {out.stderr.strip()[7:]}"] and message in out.stderr


def test_console_script_and_benchmarks_use_the_installed_package():
    import shutil

    script = shutil.which("deit-demo")
    assert script, "pip install -e . installs the deit-demo console script"
    out = subprocess.run([script, "variants"], capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0 and "| key | family | title | available | reason |" in out.stdout
    for name in ("fastest.py", "load.py"):  # run as scripts: only the installed package puts deit_demo on the path
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), "--help"], capture_output=True,
                             text=True, cwd="/", timeout=120)
        assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_fastest_script_compares_ours_with_peers_and_ends_with_the_ratio(store):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fastest.py"), "--model", "deit_tiny",
                          "--only", "original,scripted_int8,onnx_int8", "--runs", "2", "--warmup", "1", "--block", "2",
                          "--threads", "1", "--store", str(store.root)], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert "| runner | kind | median ms |" in out.stdout and "| onnx_int8 | peer |" in out.stdout
    assert lines[-1].startswith("best of ours") and "ratio ours/peer = " in lines[-1]


def test_tome_sweep_cli_writes_json_and_html(tmp_path):
    out = run_cli("tome-sweep", "--model", "deit_digits", "--r", "0,2", "--runs", "2", "--warmup", "0",
                  "--threads", "1", "--json", str(tmp_path / "t.json"), "--html", str(tmp_path / "t.html"))
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "t.json").read_text())
    assert [row["r"] for row in data["rows"]] == [0, 2] and data["rows"][0]["top1_agreement"] == 1.0
    assert data["rows"][0]["n_images"] == 360 and data["schema"].startswith("deit-demo-results/")
    assert "Token merging" in (tmp_path / "t.html").read_text()


def test_sweep_and_compare_from_the_cli(tmp_path, store):
    out = run_cli("sweep", "--models", "deit_tiny,deit_tiny_distilled", "--variants", "original,scripted_int8",
                  "--weights", "random", "--runs", "2", "--warmup", "0", "--threads", "1", "--budget-ms", "1000",
                  "--store", str(store.root), "--json", str(tmp_path / "s.json"), "--html", str(tmp_path / "s.html"))
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "s.json").read_text())
    assert len(data["rows"]) == 4 and data["machine"]["cpu"] and data["schema"].startswith("deit-demo-results/")
    assert data["recommendation"]["best"]["model"] == "deit_tiny_distilled"
    assert "recommendation: Ship deit_tiny_distilled" in out.stdout and "Pareto frontier" in (
        tmp_path / "s.html").read_text()
    out = run_cli("compare", str(tmp_path / "s.json"), str(tmp_path / "s.json"), "--html", str(tmp_path / "c.html"))
    assert out.returncode == 0, out.stderr
    assert "speed-up s.json vs s.json" in out.stdout and "1.00x" in out.stdout
    (tmp_path / "x.json").write_text("{}")
    out = run_cli("compare", str(tmp_path / "x.json"))
    assert out.returncode == 2 and "not a DeiT Lab results file" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_soak_script_reports_memory_and_descriptors(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--requests", "60", "--warmup", "20",
                          "--tolerance", "0.5"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "DEIT_DEMO_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "| requests | rss MiB | open fds | elapsed s |" in out.stdout and "'refused as expected': 1" in out.stdout
    assert "after warm-up: RSS" in out.stdout and ": flat" in out.stdout


def test_no_profiler_or_gpu_probe_noise_on_a_cpu_machine(capfd, store):
    out = run_cli("bench", "--model", "deit_digits", "--variants", "original", "--runs", "2", "--warmup", "0",
                  "--threads", "1")
    assert out.returncode == 0, out.stderr
    assert "profiler self-CPU ms" in out.stdout and "| original | 1 |" in out.stdout
    for noise in ("USDT", "profiler_start", "gpuGetDeviceCount", "STAGE:"):
        assert noise not in out.stderr and noise not in out.stdout
    # the session's store: test_synth's file is reused (the noise is the runtime's, at load and run, not the export's)
    out = run_cli("classify", "assets/synth/dots.png", "--model", "deit_synth", "--variant", "executorch_fp32",
                  "--store", str(store.root))
    assert out.returncode == 0 and "cpuinfo_utils" not in out.stderr and "threadpool.cpp" not in out.stderr, out.stderr
    import torch

    from deit_demo.measure.bench import profile_once  # in-process too, as the app runs it
    total, ops = profile_once(lambda x: x @ x, torch.randn(32, 32))
    captured = capfd.readouterr()
    assert total > 0 and ops and "USDT" not in captured.err and "gpuGetDeviceCount" not in captured.err
    # The app profiles on a Gradio worker thread: a process's first profile off the main thread made kineto print
    # "ERROR: External init callback must run in same thread as registerClient" (once, harmlessly).
    script = ("import threading, torch\nfrom deit_demo.measure.bench import profile_once\nout = []\n"
              "t = threading.Thread(target=lambda: out.append(profile_once(lambda x: x @ x, torch.randn(32, 32))))\n"
              "t.start(); t.join(); print('ops', len(out[0][1]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and "ops " in out.stdout and "ops 0" not in out.stdout, out.stderr[-2000:]
    for noise in ("USDT", "gpuGetDeviceCount", "External init callback", "ERROR"):
        assert noise not in out.stderr, out.stderr[-2000:]


def test_help_of_the_cli_and_every_command_renders():
    import argparse

    from deit_demo.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"classify", "evaluate", "bench", "sweep"} <= set(commands)
    assert "95% intervals" in parser.format_help()  # a bare % in a help string crashed `--help` (argparse formats it)
    for name, sub in commands.items():
        assert sub.format_help().startswith("usage:"), name


def test_upstream_noise_is_quiet_from_the_entry_points_and_not_on_import():
    # inductor's int8 lowering printed 4 warnings per PT2E compile: `tune` on deit_synth printed dozens
    script = ("import io, contextlib, warnings\nimport deit_demo.cli as cli\n"
              "def noisy():\n"
              "    with warnings.catch_warnings(record=True) as seen:\n"
              "        warnings.warn_explicit('To copy construct from a tensor, it is recommended', UserWarning,\n"
              "                               'mkldnn_lowerings.py', 827, module='torch._inductor.mkldnn_lowerings')\n"
              "        warnings.warn_explicit('something else', UserWarning, 'mkldnn_lowerings.py', 1,\n"
              "                               module='torch._inductor.mkldnn_lowerings')\n"
              "    return len(seen)\n"
              "import logging\nlog = logging.getLogger('torch.utils._pytree')\n"
              "before = noisy(), log.isEnabledFor(logging.WARNING)\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              "    cli.main(['models'])\n"
              "print(*before, noisy(), log.isEnabledFor(logging.WARNING))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         check=False)
    assert out.returncode == 0, out.stderr
    # on import nothing changes; from main only the known warning is dropped, and torch's compile chatter
    assert out.stdout.split() == ["2", "True", "1", "False"]
