import json
import multiprocessing
import os
import signal
import time

import pytest
import torch

from deit_demo import DeitDemoError
from deit_demo.core.artifacts import MANIFEST, ArtifactStore
from deit_demo.variants import VARIANTS, get_variant
from deit_demo.variants.pipeline import (
    check_inputs,
    compare_answers,
    convert_variant,
    load_verified,
    prepare_variants,
    run_conversion,
    run_inputs,
    variant_context,
)


@pytest.fixture(scope="module")
def loaded_runners():
    return {}


@pytest.fixture(scope="module")
def rows(tiny, store, loaded_runners):
    # The runners loaded (from the committed, verified files) for the answer checks are kept for the tests below:
    # loading an inductor-compiled variant again would compile it again.
    return {r.variant: r for r in run_conversion(tiny, list(VARIANTS), store, keep=loaded_runners.__setitem__)}


@pytest.mark.parametrize("key", list(VARIANTS))
def test_variant_converts_loads_and_agrees(key, rows, loaded_runners, tiny, store):
    variant = VARIANTS[key]
    row = rows[key]
    assert variant.title and variant.description and variant.family
    ok, reason = variant.available()
    if not ok:
        assert row.status == "unavailable" and len(reason) > 40 and row.reason == reason
        pytest.skip(f"{key} is unavailable in this build: {reason}")
    assert row.status == "ok", row.reason
    assert row.size_bytes > 1_000_000 and len(row.sha256) == 64 and row.convert_s >= 0
    assert os.path.isfile(row.path)
    artifact, reused = convert_variant(variant, tiny, store)
    assert reused and artifact.sha256 == row.sha256  # the store hands back the committed file
    runner = loaded_runners[key]  # loaded by load_verified from that file
    # One file serves any batch size. A new batch size is a new inductor compile (20-54 s): the compiled variants share
    # one loader (`compiled.compile_frozen`), tested at batch 3 on pt2e_int8; token merging's batches in eager
    # (test_tome).
    rows_in = 3 if not variant.compiles_per_shape or key == "pt2e_int8" else 1
    batch = torch.randn(rows_in, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        out = runner(batch).float()
    assert out.shape == (rows_in, 1000) and torch.isfinite(out).all()
    if variant.lossy:  # computes less on purpose: its accuracy cost is measured on deit_synth (test_synth)
        assert row.top1_agreement is not None and row.notes.get("r") == tiny.spec.tome_r
        return
    diff = (out - tiny.model(batch)).abs().max()
    assert diff < {"fp32": 1e-4, "fp16": 0.05, "bf16": 0.1, "int8": 0.5}[variant.precision]
    if variant.precision == "fp32":
        assert row.top1_agreement == 1.0 and row.top5_overlap == 1.0
        assert row.max_abs_diff < 1e-4
    else:
        _reduced_precision_keeps_clear_decisions(variant, row, runner, tiny, rows)


def _reduced_precision_keeps_clear_decisions(variant, row, runner, tiny, rows):
    # Random weights give near-flat logits, so reduced precision may flip near-ties; it must never flip a decision
    # whose margin is larger than the variant's own error.
    inputs = check_inputs(tiny.spec)
    reference = run_inputs(tiny.model, inputs)
    got = run_inputs(runner, inputs)
    for name, ref in reference.items():
        top2 = ref.topk(2).values[0]
        if float(top2[0] - top2[1]) > 2 * row.max_abs_diff:
            assert ref.argmax() == got[name].argmax(), name
    # No floor on top-1 agreement here: with random weights it counts coin flips (a static-int8 runtime flipped 3 of
    # 8 near-ties); the margin rule above is the real check, and test_synth measures trained accuracy.
    assert row.top5_overlap >= 0.5
    if variant.precision in ("bf16", "fp16"):
        assert row.max_abs_diff < {"bf16": 0.1, "fp16": 0.05}[variant.precision]
    else:
        assert row.max_abs_diff < 0.5
        assert row.size_bytes < 0.5 * rows["original"].size_bytes  # int8 weights: several times smaller


@pytest.mark.parametrize("enabled", [False, True])
def test_mobile_optimized_follows_the_xnnpack_probe(enabled, monkeypatch):
    monkeypatch.setattr(torch._C, "_is_xnnpack_enabled", lambda: enabled, raising=False)
    ok, reason = VARIANTS["mobile_optimized"].available()
    assert ok is enabled
    if not enabled:
        assert "XNNPACK" in reason and "executorch" in reason.lower() and torch.__version__ in reason
    else:
        assert reason == ""


def test_one_loop_reports_every_outcome_and_goes_on(tiny, store, monkeypatch):
    monkeypatch.setattr(torch._C, "_is_xnnpack_enabled", lambda: False, raising=False)
    monkeypatch.setattr(VARIANTS["scripted"], "load", lambda *a: (_ for _ in ()).throw(RuntimeError("no runtime")))
    seen = {p.key: p for p in prepare_variants(tiny, ["original", "mobile_optimized", "scripted", "scripted_int8"],
                                                store)}
    assert [seen[k].status for k in seen] == ["ok", "unavailable", "failed", "ok"]
    assert seen["scripted"].reason == "RuntimeError: no runtime" and seen["scripted"].runner is None
    assert "XNNPACK" in seen["mobile_optimized"].reason
    assert seen["scripted_int8"].runner is not None and seen["original"].artifact.size_bytes > 0


def test_lite_says_what_it_was_built_from_and_how_it_ran(rows):
    notes = rows["lite"].notes
    assert notes["source"] in ("mobile_optimized", "scripted_int8")
    assert "loader" in notes
    if "fallback" in notes["loader"]:
        assert notes["lite_loader_error"]


def test_deprecated_apis_carry_a_successor_note():
    for key in ("scripted", "scripted_int8", "mobile_optimized", "lite"):
        assert "successor" in VARIANTS[key].deprecation or "superseded" in VARIANTS[key].deprecation


def test_answer_check_math():
    ref = {"a": torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]), "b": torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])}
    got = {"a": torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.5]]), "b": torch.tensor([[0.0, 4.0, 3.0, 2.0, 1.0, 5.0]])}
    check = compare_answers(ref, got)
    assert check.top1_agreement == 0.5
    assert check.top5_overlap == pytest.approx((5 / 5 + 4 / 5) / 2)
    assert check.max_abs_diff == pytest.approx(5.0)
    assert check.top1_unchanged == {"a": True, "b": False}


def test_one_failing_variant_does_not_stop_others(tiny, store, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated exporter crash")

    monkeypatch.setattr(VARIANTS["scripted"], "export", boom)
    store2 = ArtifactStore(store.root.parent / "store_fail")
    rows = {r.variant: r for r in run_conversion(tiny, ["original", "scripted", "scripted_int8"], store2)}
    assert rows["scripted"].status == "failed" and "simulated exporter crash" in rows["scripted"].reason
    assert rows["original"].status == "ok" and rows["scripted_int8"].status == "ok"


def test_a_settled_file_is_hashed_once_and_a_later_change_is_still_caught(tiny, tmp_path, monkeypatch):
    from deit_demo.core import artifacts

    store = ArtifactStore(tmp_path)
    artifact, _ = convert_variant(get_variant("scripted"), tiny, store)
    hashed, real = [], artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda path: hashed.append(path) or real(path))
    monkeypatch.setattr(artifacts, "SETTLED_NS", 0)
    store.verify(artifact)
    store.verify(artifact)  # a page listing formats, then a download: hashed once
    assert len(hashed) == 1
    time.sleep(0.05)  # past the file clock's tick
    with open(artifact.path, "r+b") as handle:
        handle.seek(100)
        handle.write(b"tampered")
    with pytest.raises(DeitDemoError, match="sha256"):
        store.verify(artifact)


def test_tampered_artifact_is_refused_and_rebuilt(tiny, tmp_path):
    store = ArtifactStore(tmp_path)
    variant = get_variant("scripted")
    artifact, _ = convert_variant(variant, tiny, store)
    with open(artifact.path, "r+b") as handle:
        handle.seek(100)
        handle.write(b"tampered")
    with pytest.raises(DeitDemoError, match="sha256"):
        load_verified(variant, artifact, store)
    rebuilt, reused = convert_variant(variant, tiny, store)
    assert not reused
    load_verified(variant, rebuilt, store)


def test_manifest_cannot_point_outside_its_folder(tiny, tmp_path):
    store = ArtifactStore(tmp_path)
    artifact, _ = convert_variant(get_variant("original"), tiny, store)
    manifest = artifact.path.parent / MANIFEST
    data = json.loads(manifest.read_text())
    # A manifest naming a file elsewhere in the store, a copy of its own: it would pass the sha256 check there, but
    # a manifest only ever names a file in its own folder, so it serves its own.
    elsewhere = store.root / "elsewhere" / artifact.path.name
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(artifact.path.read_bytes())
    data["path"] = f"../../../elsewhere/{artifact.path.name}"
    manifest.write_text(json.dumps(data))
    assert store.lookup(tiny.spec.key, tiny.weights_id, "original").path == artifact.path
    # One naming a file outside the store: none by that name in its folder, so nothing is served, and the folder
    # goes, to be rebuilt.
    data["path"] = "../../../../etc/passwd"
    manifest.write_text(json.dumps(data))
    assert store.lookup(tiny.spec.key, tiny.weights_id, "original") is None
    assert not artifact.path.parent.exists()
    rebuilt, reused = convert_variant(get_variant("original"), tiny, store)
    assert not reused and rebuilt.path == artifact.path


def _slow_convert(root: str) -> None:
    from deit_demo.core.models import load_model

    loaded = load_model("deit_tiny", "random")
    variant = get_variant("scripted")
    original_export = variant.export

    def slow_export(model, path, ctx):
        original_export(model, path, ctx)
        open(os.path.join(root, "exported"), "w").close()
        time.sleep(60)  # killed here: file written, manifest not yet
        return {}

    variant.export = slow_export
    convert_variant(variant, loaded, ArtifactStore(root))


def _convert_marking(root: str, marks: str) -> None:
    from deit_demo.core.models import load_model

    loaded = load_model("deit_tiny", "random")
    variant = get_variant("scripted")
    original_export = variant.export

    def marked_export(model, path, ctx):
        open(os.path.join(marks, f"export-{os.getpid()}"), "w").close()
        time.sleep(5)  # long enough that the other process asks for the file meanwhile
        return original_export(model, path, ctx)

    variant.export = marked_export
    artifact, reused = convert_variant(variant, loaded, ArtifactStore(root))
    with open(os.path.join(marks, f"done-{os.getpid()}-{reused}"), "w") as handle:
        handle.write(artifact.sha256)


def test_two_processes_on_one_store_convert_a_file_once(tmp_path):
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=_convert_marking, args=(str(tmp_path / "store"), str(tmp_path)))
                 for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(240)
    assert [p.exitcode for p in processes] == [0, 0]
    assert len(list(tmp_path.glob("export-*"))) == 1  # one converted...
    done = sorted(tmp_path.glob("done-*"), key=lambda p: p.name.endswith("True"))
    assert [p.name.rsplit("-", 1)[1] for p in done] == ["False", "True"]  # ...the other waited and reused its file
    assert done[0].read_text() == done[1].read_text()


def test_killed_conversion_leaves_nothing_reusable(tiny, tmp_path):
    process = multiprocessing.get_context("spawn").Process(target=_slow_convert, args=(str(tmp_path),))
    process.start()
    deadline = time.time() + 90
    while not (tmp_path / "exported").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (tmp_path / "exported").exists()
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    store = ArtifactStore(tmp_path)
    assert list(tmp_path.glob(".tmp-*/*.pt"))  # the half-done work is there...
    assert store.lookup(tiny.spec.key, tiny.weights_id, "scripted") is None  # ...but never reused
    assert store.artifacts() == []


def test_store_cap_evicts_least_recently_used(tiny, tmp_path):
    store = ArtifactStore(tmp_path, cap_bytes=10**12)
    first, _ = convert_variant(get_variant("original"), tiny, store)
    time.sleep(0.05)
    second, _ = convert_variant(get_variant("scripted_int8"), tiny, store)
    time.sleep(0.05)
    assert store.lookup(tiny.spec.key, tiny.weights_id, "original") is not None  # touch: now most recent
    store.cap_bytes = first.size_bytes + 1_000_000
    removed = store.evict()
    assert [p.name for p in removed] == ["scripted_int8"]
    assert sum(size for _, size, _ in store.artifacts()) <= store.cap_bytes
    third, _ = convert_variant(get_variant("scripted"), tiny, store)  # newest stays even if alone over the cap
    assert third.path.exists() and not first.path.exists()


def test_new_recipe_version_is_rebuilt_not_reused(tiny, tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    variant = get_variant("original")
    first, _ = convert_variant(variant, tiny, store)
    assert convert_variant(variant, tiny, store)[1]  # same recipe: reused
    monkeypatch.setattr(variant, "version", variant.version + 1)
    second, reused = convert_variant(variant, tiny, store)
    assert not reused and second.recipe_version == variant.version


def test_token_merging_artifacts_are_keyed_by_r(tiny, tmp_path):
    store = ArtifactStore(tmp_path)
    variant = get_variant("tome_fp32")
    first, reused = convert_variant(variant, tiny, store, variant_context(tiny.spec, store, tome_r=2))
    assert not reused and first.notes["r"] == 2 and first.path.parent.name == "tome_fp32-r2"
    second, reused = convert_variant(variant, tiny, store, variant_context(tiny.spec, store, tome_r=4))
    assert not reused and second.path.parent.name == "tome_fp32-r4"
    assert convert_variant(variant, tiny, store, variant_context(tiny.spec, store, tome_r=2))[1]  # reused by its r
    runner = load_verified(variant, second, store)
    assert runner.notes["r"] == 4


def test_openvino_artifact_is_one_verified_file_holding_the_ir(tiny, store):
    import tarfile

    if not VARIANTS["openvino_fp32"].available()[0]:
        pytest.skip(VARIANTS["openvino_fp32"].available()[1])
    artifact, _ = convert_variant(get_variant("openvino_fp32"), tiny, store)
    with tarfile.open(artifact.path) as tar:
        assert sorted(tar.getnames()) == ["model.bin", "model.xml"]


def test_variant_lists_parse_to_registry_order_with_the_original_first():
    from deit_demo.variants import parse_variant_keys

    assert parse_variant_keys("all") == list(VARIANTS)
    assert parse_variant_keys(" onnx_int8, scripted ") == ["original", "scripted", "onnx_int8"]
    with pytest.raises(DeitDemoError, match="Unknown variant 'nope'"):
        parse_variant_keys("scripted,nope")


def test_conversion_exports_a_copy_never_the_module_that_serves(tiny, tmp_path, monkeypatch):
    # Non-strict torch.export swaps fake tensors into the module it traces; visitors classifying with the same module
    # on other threads then failed ("Could not guard on data-dependent expression").
    seen = []
    real_export = VARIANTS["scripted"].export
    monkeypatch.setattr(VARIANTS["scripted"], "export", lambda model, path, ctx: seen.append(model) or
                        real_export(model, path, ctx))
    convert_variant(VARIANTS["scripted"], tiny, ArtifactStore(tmp_path / "store"))
    assert seen and seen[0] is not tiny.model
    assert all(torch.equal(a, b) for a, b in zip(seen[0].state_dict().values(), tiny.model.state_dict().values()))


def test_bf16_attention_rewrite_replaces_every_attention_and_keeps_answers_close(tiny):
    from deit_demo.variants.compiled import attention_in_bf16, bf16_attention
    from deit_demo.variants.tome_merge import ToMe

    q, k, v = (torch.randn(2, 3, 17, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    mask = torch.randn(2, 1, 1, 17, generator=torch.Generator().manual_seed(4))
    for attn_mask in (None, mask):  # ToMe's proportional attention passes log(size) as a mask
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        got = bf16_attention(q, k, v, attn_mask=attn_mask)
        assert got.dtype == torch.float32 and (got - want).abs().max() < 0.05
    with pytest.raises(ValueError):
        bf16_attention(q, k, v, is_causal=True)
    assert bf16_attention(q.bfloat16(), k.bfloat16(), v.bfloat16()).dtype == torch.bfloat16  # compiled_bf16's graph

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    for model in (tiny.model, ToMe(tiny.model, 4).eval()):
        graph = torch.export.export(model, (x,)).module()
        with torch.inference_mode():
            want = graph(x)
        assert attention_in_bf16(graph) == len(tiny.model.blocks)
        assert not any(n.target is torch.ops.aten.scaled_dot_product_attention.default for n in graph.graph.nodes)
        with torch.inference_mode():
            got = graph(x)
        assert (got - want).abs().max() < 0.1 and torch.equal(got.argmax(-1), want.argmax(-1))


def test_a_trace_on_one_thread_never_reaches_a_forward_pass_on_another():
    # While tracing, torch.fx patches nn.Module.__call__ for the whole process; a visitor served the eager original
    # while Auto converted in the background got "NameError: module is not installed as a submodule" (1215 of 2034
    # eager calls failed while deit_tiny's Auto candidates were prepared on another thread).
    import threading

    from deit_demo.variants.base import confine_fx_patches_to_their_thread

    assert confine_fx_patches_to_their_thread()  # as the entry points set it (and conftest did); idempotent
    inside, release = threading.Event(), threading.Event()

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, x):
            inside.set()
            release.wait(30)  # hold the trace open: the patches are in place now
            return self.linear(x)

    errors = []

    def trace():
        try:
            torch.fx.symbolic_trace(Traced())
        except Exception as err:
            errors.append(err)

    served = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval()
    x = torch.randn(3, 4)
    with torch.inference_mode():
        want = served(x)
    thread = threading.Thread(target=trace)
    thread.start()
    try:
        assert inside.wait(30)
        with torch.inference_mode():
            got = served(x)
    finally:
        release.set()
        thread.join(60)
    assert torch.equal(got, want) and not errors


def test_a_compiled_int8_runner_runs_its_prepacked_kernels_for_every_kind_of_input(rows, loaded_runners):
    # A tensor made inside inference_mode differs from one made outside only in its dispatch keys; dynamo recompiles
    # for it, and that compile must be frozen too. It was not (the runner's own guard ignored the difference): DeiT-B
    # pt2e_int8 then ran at 262 ms per image instead of 54 whenever its input was made inside inference_mode.
    # The int8 linears fuse into prepacked oneDNN kernels only in a frozen compile (the pattern matcher's qlinear
    # counters); the C++ wrapper calls them directly, so a profile no longer lists them.
    from torch._dynamo.utils import counters

    runner, compiled = loaded_runners["pt2e_int8"], []
    made_outside = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        for x in (torch.randn(1, 3, 224, 224), made_outside):
            counters.clear()
            runner(x)  # compiles, where this kind of input is new
            if counters["stats"]["unique_graphs"]:
                compiled.append(x.is_inference())
                fused = sum(v for k, v in counters["inductor"].items() if "qlinear" in k and k.endswith("_count"))
                assert fused >= 12 * 4, dict(counters["inductor"])  # every block's 4 linears at least
    assert True in compiled  # the input made inside inference_mode is new to the runner


@pytest.mark.parametrize("key", [k for k, v in VARIANTS.items() if v.compiles_per_shape])
def test_a_compiled_pass_runs_in_cpp_not_a_python_call_per_kernel(key, rows, loaded_runners, store):
    # Inductor's Python wrapper calls each kernel from Python and takes the GIL back between kernels, so any other
    # Python thread (Gradio's event loop) stalled the pass at every kernel: DeiT-B pt2e_int8 served at 70-81 ms per
    # image instead of 58-62. Its C++ wrapper runs the whole pass in one call without the GIL.
    import sys

    if rows[key].status != "ok":
        pytest.skip(rows[key].reason)
    runner, x, calls = loaded_runners[key], torch.randn(1, 3, 224, 224), []
    with torch.inference_mode():
        runner(x)
        sys.setprofile(lambda frame, event, _: calls.append(frame.f_code) if event == "call" else None)
        try:
            runner(x)
        finally:
            sys.setprofile(None)
    generated = [c.co_name for c in calls if c.co_filename.startswith(str(store.root))]
    per_kernel = [c for c in calls if c.co_name == "__call__" and c.co_filename.endswith("torch/_ops.py")]
    assert generated and "call" not in generated and not per_kernel, (generated, len(per_kernel))
