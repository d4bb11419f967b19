"""Hostile inputs and injected faults: every failure a clear message with no traceback for the person, every fault
survived by the others."""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

gr = pytest.importorskip("gradio")

import deit_demo.cli as cli  # noqa: E402
from deit_demo.app import decide_tab, handlers  # noqa: E402
from deit_demo.core.artifacts import MANIFEST, ArtifactStore  # noqa: E402
from deit_demo.core.errors import DeitDemoError  # noqa: E402
from deit_demo.core.models import read_checkpoint  # noqa: E402
from deit_demo.service.config import AppConfig  # noqa: E402
from deit_demo.service.lab import Lab  # noqa: E402
from deit_demo.variants import VARIANTS, get_variant  # noqa: E402
from deit_demo.variants.pipeline import convert_variant, example_images, run_conversion  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAT = str(example_images()[1])


def progress(*args, **kwargs):
    pass


@pytest.fixture()
def lab(store):
    return Lab(AppConfig(model="deit_tiny", store_root=str(store.root)))

def classify_one(lab, image, url, model, variant):
    """The batched classify handler with a batch of one, unwrapped."""
    return [column[0] for column in handlers.classify(lab, [image], [url], [model], [variant])]



def boom(*args, **kwargs):
    raise RuntimeError("secret internal detail")


HANDLER_CALLS = {
    "classify": ("classify_batch", lambda lab: classify_one(lab, CAT, "", "deit_tiny", "original")),
    "convert": ("convert", lambda lab: handlers.convert(lab, "deit_tiny", ["original"], progress=progress)),
    "benchmark": ("benchmark", lambda lab: list(handlers.benchmark(lab, "deit_tiny", ["original"], 2, 0, 1, "1",
                                                                   progress=progress))),
    "tome_sweep": ("tome_sweep", lambda lab: handlers.tome_sweep(lab, "deit_tiny", "0", False, 2, 0, 1,
                                                                 progress=progress)),
}


@pytest.mark.parametrize("name", list(HANDLER_CALLS) + ["sweep", "compare"])
def test_unexpected_errors_in_every_handler_are_one_line_with_a_reference(name, lab, monkeypatch, caplog, tmp_path):
    if name == "sweep":
        monkeypatch.setattr(Lab, "sweep", boom)
        call = lambda lab: list(decide_tab.sweep(lab, ["deit_tiny"], ["original"], "1", "1", 2, 0, None, None,  # noqa
                                                 None, progress=progress))
    elif name == "compare":
        monkeypatch.setattr(decide_tab, "compare", boom)
        good = tmp_path / "r.json"
        good.write_text(json.dumps({"schema": "deit-demo-results/1", "machine": {"cpu": "x"}, "rows": []}))
        call = lambda lab: decide_tab.compare_files(lab, [str(good)])  # noqa: E731
    else:
        method, call = HANDLER_CALLS[name]
        monkeypatch.setattr(Lab, method, boom)
    with caplog.at_level(logging.ERROR, logger="deit_demo"), pytest.raises(gr.Error) as caught:
        call(lab)
    message = str(caught.value)
    ref = message.split("reference ")[1][:8]
    assert "failed unexpectedly (RuntimeError; reference" in message and "secret internal detail" not in message
    assert "Traceback" not in message
    assert any(ref in r.getMessage() and r.exc_info for r in caplog.records)  # the traceback is in the server log
    monkeypatch.undo()
    assert classify_one(lab, CAT, "", "deit_tiny", "original")[1]  # still serving


CLI_CALLS = {
    "models": ("deit_demo.present.report.catalog_rows", ["models"]),
    "variants": ("deit_demo.present.report.to_markdown", ["variants"]),
    "classify": ("deit_demo.service.lab.Lab.classify",
                 ["classify", CAT, "--model", "deit_tiny", "--weights", "random"]),
    "convert": ("deit_demo.service.lab.Lab.convert", ["convert", "--model", "deit_tiny", "--weights", "random"]),
    "evaluate": ("deit_demo.service.lab.Lab.evaluate", ["evaluate", "--model", "deit_digits"]),
    "bench": ("deit_demo.service.lab.Lab.benchmark", ["bench", "--model", "deit_tiny", "--weights", "random"]),
    "sweep": ("deit_demo.service.lab.Lab.sweep", ["sweep", "--models", "deit_tiny", "--weights", "random"]),
    "compare": ("deit_demo.service.load_results", ["compare", "x.json"]),
    "tome-sweep": ("deit_demo.service.lab.Lab.tome_sweep", ["tome-sweep", "--model", "deit_digits"]),
}


@pytest.mark.parametrize("command", list(CLI_CALLS))
def test_unexpected_errors_in_every_cli_command_are_one_line_with_a_reference(command, monkeypatch, capsys, tmp_path):
    import importlib

    target, argv = CLI_CALLS[command]
    module, _, attr = target.rpartition(".")
    owner = Lab if module.endswith(".Lab") else importlib.import_module(module)
    monkeypatch.setattr(owner, attr, boom)
    monkeypatch.setenv("DEIT_DEMO_HOME", str(tmp_path))
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and err[0].startswith("error: `") and "reference" in err[0]
    assert "secret internal detail" not in err[0] and "Traceback" not in err[0]
    log = (tmp_path / "logs" / "errors.log").read_text()
    assert "secret internal detail" in log and "Traceback" in log and err[0].split("reference ")[1][:8] in log


@pytest.mark.parametrize("url,message", [
    ("http://" + "a" * 64 + ".example.com/x.jpg", "at most 63 are allowed"),
    ("http://" + ".".join(["abcdefgh"] * 30) + ".com/x.jpg", "at most 253 are allowed"),
    ("http://example.com/" + "x" * 2100, "longer than 2048"),
    ("x" * 5000, "neither an http\\(s\\) URL nor an existing image file"),
    ("no/such/file.jpg", "neither an http\\(s\\) URL nor an existing image file"),
    ("http://exa..mple.com/x.jpg", "empty label"),
])
def test_bad_urls_and_strings_are_one_clear_line(url, message, lab):
    with pytest.raises(gr.Error, match=message):
        classify_one(lab, None, url, "deit_tiny", "original")
    out = subprocess.run([sys.executable, "-m", "deit_demo", "classify", url, "--model", "deit_tiny", "--weights",
                          "random"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


@pytest.mark.parametrize("call,message", [
    (lambda lab: handlers.convert(lab, None, ["original"], progress=progress), "Choose a model"),
    (lambda lab: handlers.convert(lab, "deit_tiny", None, progress=progress), "at least one variant"),
    (lambda lab: classify_one(lab, CAT, "", "", "original"), "Choose a model"),
    (lambda lab: list(handlers.benchmark(lab, "deit_tiny", ["original"], 0, 1, 1, "1", progress=progress)), "runs"),
    (lambda lab: list(handlers.benchmark(lab, "deit_tiny", ["original"], 10**9, 1, 1, "1", progress=progress)),
     "runs must be a whole number from 1 to"),
    (lambda lab: list(handlers.benchmark(lab, "deit_tiny", ["original"], 2, -1, 1, "1", progress=progress)),
     "warmup"),
    (lambda lab: list(handlers.benchmark(lab, "deit_tiny", ["original"], 2, 1, 1, "65", progress=progress)),
     "Batch sizes"),
    (lambda lab: list(handlers.benchmark(lab, "deit_tiny", ["tome_fp32"], 2, 1, 1, "1", -3, progress=progress)),
     "r must be"),
    (lambda lab: list(decide_tab.sweep(lab, [], ["original"], "1", "1", 2, 0, None, None, None, progress=progress)),
     "at least one model"),
])
def test_empty_choices_and_out_of_range_controls(call, message, lab):
    with pytest.raises(gr.Error, match=message):
        call(lab)


@pytest.mark.parametrize("flags,message", [(["classify", CAT, "--top", "0"], "must be at least 1"),
                                           (["bench", "--tome-r", "-2"], "must be 0 or more"),
                                           (["bench", "--warmup", "-1"], "warmup must be"),
                                           (["bench", "--runs", "100000000"], "runs must be")])
def test_out_of_range_cli_flags(flags, message):
    out = subprocess.run([sys.executable, "-m", "deit_demo", *flags, "--model", "deit_tiny", "--weights", "random"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_checkpoint_with_code_is_refused_naming_the_call_and_never_advising_to_run_it(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(DeitDemoError) as caught:
        read_checkpoint(tmp_path / "evil.pth")
    message = str(caught.value)
    assert "contains code (it calls posix.system)" in message and "plain tensors" in message
    assert "weights_only" not in message


def test_safetensors_header_claiming_gigabytes_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes((8 * 2**30).to_bytes(8, "little") + b'{"a": 1}')
    with pytest.raises(DeitDemoError, match="claims a 8,192 MB header"):
        read_checkpoint(path)


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "is full"), (errno.EROFS, "read-only"),
                                        (errno.EACCES, "not writable")])
def test_disk_full_or_read_only_store_during_a_conversion(code, words, tiny, tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "store")

    def fail(model, path, ctx):
        path.write_bytes(b"half a file")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(VARIANTS["scripted"], "export", fail)
    rows = {r.variant: r for r in run_conversion(tiny, ["original", "scripted", "scripted_int8"], store)}
    assert rows["scripted"].status == "failed" and words in rows["scripted"].reason
    assert str(store.root) in rows["scripted"].reason and "nothing was saved" in rows["scripted"].reason
    assert rows["original"].status == "ok" and rows["scripted_int8"].status == "ok"
    assert not list(store.root.glob(".tmp-*"))
    assert not (store.folder(tiny.spec.key, tiny.weights_id, "scripted")).exists()


def test_store_that_cannot_make_a_work_folder(tiny, tmp_path, monkeypatch):
    import deit_demo.core.artifacts as artifacts

    store = ArtifactStore(tmp_path / "store")
    monkeypatch.setattr(artifacts.tempfile, "mkdtemp", lambda **kw: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")))
    row, = run_conversion(tiny, ["scripted"], store)
    assert row.status == "failed" and "read-only file system" in row.reason


def test_out_of_memory_during_a_conversion_is_a_clear_row(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(VARIANTS["scripted"], "export", lambda *a: (_ for _ in ()).throw(
        RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't allocate memory")))
    rows = {r.variant: r for r in run_conversion(tiny, ["original", "scripted"], ArtifactStore(tmp_path))}
    assert rows["scripted"].status == "failed" and rows["scripted"].reason.startswith("Ran out of memory")
    assert rows["original"].status == "ok"


@pytest.mark.slow
def test_conversion_over_a_memory_cap_fails_clearly_in_a_capped_process(tmp_path):
    """A real cap (RLIMIT_AS) on a real process: DeiT-B's weights do not fit, the command says so in one line."""
    probe = ("import resource, deit_demo.variants, deit_demo.service.lab; print(int(open('/proc/self/status').read()"
             ".split('VmPeak:')[1].split()[0]) * 1024)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DEIT_DEMO_HOME": str(tmp_path)}
    baseline = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env,
                                  timeout=120).stdout.split()[-1])
    cap = baseline + 600 * 2**20  # room to start, not for DeiT-B (346 MB of weights) and its copies

    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    out = subprocess.run([sys.executable, "-m", "deit_demo", "convert", "--model", "deit_base", "--weights", "random",
                          "--variants", "original,scripted,scripted_int8"], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=600, preexec_fn=limit)
    assert out.returncode in (1, 2, 3), out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "memory" in (out.stdout + out.stderr).lower()


def test_corrupted_manifest_is_rebuilt(tiny, tmp_path):
    store = ArtifactStore(tmp_path)
    variant = get_variant("original")
    first, _ = convert_variant(variant, tiny, store)
    (first.path.parent / MANIFEST).write_text("{ this is not json")
    assert store.lookup(tiny.spec.key, tiny.weights_id, "original") is None
    again, reused = convert_variant(variant, tiny, store)
    assert not reused and again.path.is_file()


def test_store_folder_deleted_while_the_app_runs_is_rebuilt(tmp_path):
    lab = Lab(AppConfig(model="deit_tiny", store_root=str(tmp_path / "store")))
    first = lab.convert("deit_tiny", ["original", "scripted"])
    assert all(r.status == "ok" for r in first.results)
    shutil.rmtree(lab.store.root)
    again = lab.convert("deit_tiny", ["original", "scripted"])
    assert all(r.status == "ok" and not r.reused for r in again.results) and Path(again.results[1].path).is_file()


def test_a_runtime_raising_mid_benchmark_fails_its_row_and_the_others_finish(tiny, store, monkeypatch):
    from deit_demo.measure import bench

    real_load = VARIANTS["scripted"].load

    def flaky_load(artifact, ctx):
        runner = real_load(artifact, ctx)
        calls = {"n": 0}
        inner = runner.fn

        def fn(x):
            calls["n"] += 1
            if calls["n"] > 3:
                raise RuntimeError("runtime crashed")
            return inner(x)

        runner.fn = fn
        return runner

    monkeypatch.setattr(VARIANTS["scripted"], "load", flaky_load)
    results = {r.variant: r for r in bench.run_benchmark(
        tiny, bench.BenchSettings(variants=["original", "scripted", "scripted_int8"], runs=6, warmup=1, threads=1,
                                  profile=False), store)}
    assert results["scripted"].status == "failed" and "failed while timing: RuntimeError: runtime crashed" in \
        results["scripted"].reason
    assert len(results["original"].latency.samples_ms) == 6 and len(results["scripted_int8"].latency.samples_ms) == 6


@pytest.fixture
def small_fs(tmp_path):
    """A real 8 MB tmpfs (root only): what safetensors, ONNX and torch raise on a full disk, not an injected OSError."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "worker"])
def test_a_real_full_then_read_only_store_says_so_everywhere_and_serves_what_it_holds(small_fs, isolate):
    import subprocess

    from deit_demo.measure.bench import BenchSettings
    from deit_demo.serve.settings import ServeSettings

    config = AppConfig(model="deit_tiny", weights="random", store_root=str(small_fs / "store"), auto_prepare=False,
                       isolate_conversions=isolate, serve=ServeSettings(auto_variants=("onnx_int8",)))
    lab = Lab(config)
    # deit_tiny's original is 22 MB: safetensors fails with its own error type ("SafetensorError: ... No space left
    # on device (os error 28)"); the 6 MB int8 TorchScript file fits
    rows = {r.variant: r for r in lab.convert("deit_tiny", ["original", "scripted_int8"]).results}
    assert rows["original"].status == "failed" and "is full (no space left on device)" in rows["original"].reason
    assert rows["scripted_int8"].status == "ok"
    _, bench_rows = lab.benchmark("deit_tiny", BenchSettings(variants=["onnx_fp32"], runs=2, warmup=0, threads=1))
    assert bench_rows[-1].status == "failed" and "is full" in bench_rows[-1].reason  # ONNX's writer, 22 MB
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_fs)]).returncode == 0
    with pytest.raises(DeitDemoError, match="is on a read-only file system"):
        lab.classify(CAT, "deit_tiny", "onnx_int8")  # it came from artifacts.new_workdir as a bare OSError
    choice = lab.server.auto.prepare("deit_tiny")
    assert "read-only file system" in choice.rejected["onnx_int8"] and choice.variant == "original"
    _, served = lab.classify(CAT, "deit_tiny", "scripted_int8")  # what the store holds is still served
    assert served.variant == "scripted_int8" and served.heads
