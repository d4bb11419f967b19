import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deit_demo import DeitDemoError
from deit_demo.core.model_cache import ModelCache
from deit_demo.core.models import MODELS, create_model, fingerprint, get_spec, load_model
from deit_demo.serve.classify import forward_heads

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("key", list(MODELS))
def test_catalog_entry_builds_runs_and_matches_published_params(key):
    spec = MODELS[key]
    assert spec.hub_name.startswith(spec.timm_name + ".")
    assert spec.num_classes == 1000 or len(spec.labels) == spec.num_classes
    loaded = load_model(key, "random")
    params = sum(p.numel() for p in loaded.model.parameters())
    assert abs(params - spec.params) / spec.params < 0.01
    x = torch.randn(1, 3, spec.input_size, spec.input_size)
    with torch.inference_mode():
        heads = forward_heads(loaded.model, x, distilled=spec.distilled)
        plain = loaded.model(x)
    assert plain.shape == (1, spec.num_classes)
    if spec.distilled:
        assert set(heads) == {"class", "distillation", "average"}
        assert all(h.shape == (1, spec.num_classes) for h in heads.values())
        assert not torch.allclose(heads["class"], heads["distillation"])
        torch.testing.assert_close(heads["average"], plain)  # eval-mode timm averages the two heads
    else:
        assert list(heads) == ["logits"]
    assert loaded.weights == "random"


def test_random_weights_are_seeded_so_processes_agree():
    assert load_model("deit_tiny", "random").weights_id == load_model("deit_tiny", "random").weights_id


def test_unknown_model_is_a_project_error():
    with pytest.raises(DeitDemoError, match="Choose one of"):
        get_spec("resnet50")


def _write_hub_cache(hf_home: Path, spec_key: str) -> Path:
    from safetensors.torch import save_file

    spec = MODELS[spec_key]
    torch.manual_seed(1234)
    model = create_model(spec)
    repo = hf_home / "hub" / f"models--timm--{spec.hub_name}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    path = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_hub_path_loads_from_a_laid_out_cache_offline(tmp_path):
    from safetensors.torch import load_file

    path = _write_hub_cache(tmp_path / "hf", "deit_tiny")
    code = ("import json; from deit_demo.core.models import load_model; m = load_model('deit_tiny', 'hub');"
            "import hashlib; sd = m.model.state_dict();"
            "print(json.dumps({'weights': m.weights, 'keys': {k: hashlib.sha256(v.numpy().tobytes()).hexdigest()"
            " for k, v in sd.items()}}))")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["weights"] == "hub"
    import hashlib

    expected = {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in load_file(str(path)).items()}
    assert result["keys"] == expected


def test_hub_unreachable_is_actionable_error(tmp_path, monkeypatch):
    code = "from deit_demo.core.models import load_model; load_model('deit_tiny', 'hub')"
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode != 0
    assert "DeitDemoError" in out.stderr and "--weights random" in out.stderr and "HF_HUB_OFFLINE" in out.stderr


def test_checkpoint_safetensors_and_official_pth(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(7)
    source = create_model(MODELS["deit_tiny"])
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"model": state, "epoch": 300}, tmp_path / "deit_tiny.pth")
    for name in ("w.safetensors", "deit_tiny.pth"):
        loaded = load_model("deit_tiny", tmp_path / name)
        assert loaded.weights == f"checkpoint:{name}"
        assert loaded.weights_id == fingerprint(source.eval())


def test_checkpoint_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(DeitDemoError, match="contains code") as caught:
        load_model("deit_tiny", tmp_path / "evil.pth")
    assert "weights_only" not in str(caught.value)  # torch's advice would run the file's code


def test_checkpoint_for_another_model_says_so(tmp_path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in create_model(MODELS["deit_tiny"]).state_dict().items()},
              str(tmp_path / "tiny.safetensors"))
    with pytest.raises(DeitDemoError, match="Pick the matching --model|Could not"):
        load_model("deit_small", tmp_path / "tiny.safetensors")


def test_model_cache_is_bounded():
    cache = ModelCache(max_models=1)
    first = cache.get("deit_tiny", "random")
    assert cache.get("deit_tiny", "random") is first
    cache.get("deit_tiny_distilled", "random")
    assert len(cache) == 1


def test_random_weights_are_the_same_under_concurrency_and_in_every_process():
    # Built alone, each model's seeded random weights have one id. Built at once in threads (as Auto and the Your
    # device tab do in the app), they interleaved their draws from torch's one global generator: DeiT-B got new ids.
    import subprocess
    import sys
    import threading

    keys = ["deit_base", "deit_small", "deit_tiny"]
    alone = {key: load_model(key, "random").weights_id for key in keys}
    together, start = {}, threading.Barrier(len(keys))

    def load(key):
        start.wait()
        together[key] = load_model(key, "random").weights_id

    threads = [threading.Thread(target=load, args=(key,)) for key in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert together == alone
    other = subprocess.run([sys.executable, "-c", "from deit_demo.core.models import load_model; "
                            "print(load_model('deit_tiny', 'random').weights_id)"],
                           capture_output=True, text=True, timeout=300)
    assert other.stdout.strip().splitlines()[-1] == alone["deit_tiny"], other.stderr[-500:]
