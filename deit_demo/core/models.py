"""The DeiT model catalog and the one way to load a model with its weights.

Weights come from exactly one explicit source, reported back to the caller:
  * ``hub``: timm + the Hugging Face hub cache (honours HF_HOME and HF_HUB_OFFLINE);
  * a checkpoint path: a ``.safetensors`` file, or an official DeiT ``.pth`` (state dict under ``"model"``),
    read with ``weights_only=True``;
  * ``random``: seeded random initialisation, for offline demos and tests (labels are then meaningless).
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from deit_demo.core.errors import DeitDemoError, describe, quoted
from deit_demo.core.paths import ASSETS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_SEED = 0
# Converting these takes seconds on any catalog model; the ahead-of-time compilers take minutes on DeiT-B.
QUICK_VARIANTS = ("original", "scripted", "scripted_int8", "mobile_optimized", "lite", "onnx_fp32", "onnx_int8")


DEIT_PAPER = "DeiT paper (Touvron et al., ICML 2021), ImageNet-1k val"
DEIT3_PAPER = "DeiT III paper (Touvron et al., ECCV 2022), ImageNet-1k val, trained on ImageNet-1k"
TIMM_RESULTS = "timm results/results-imagenet.csv (the fb_in1k weights)"


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry. `params`, `top1` and `top5` are published figures (papers, timm's results files) for the
    pretrained models and measured ones for the models trained here; `accuracy_source` says which."""

    key: str
    timm_name: str
    tag: str
    label: str
    params: int
    input_size: int
    distilled: bool
    top1: float
    top5: float | None = None
    accuracy_source: str = ""
    family: str = "DeiT"
    crop_pct: float = 0.875  # DeiT evaluates 224 models at resize 256 -> crop 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    labels: tuple[str, ...] = ()  # empty: ImageNet-1k
    bundled: str = ""  # a checkpoint shipped in this repo: what "hub" means for this model
    builder: Callable[[], nn.Module] | None = None  # for models timm has no name for
    examples: str = "*.jpg"  # glob under assets/: example, calibration and answer-check images
    eval_set: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None  # built-in labelled data (x, y), if any
    eval_name: str = ""  # what `eval_set` is, in words
    report: str = ""  # the training report of a model trained here (assets/*.json)
    quick_variants: tuple[str, ...] = QUICK_VARIANTS  # what the Convert tab ticks by default
    tome_r: int = 13  # tokens merged per block by default (ToMe's DeiT-S setting: 79.4% vs 79.8% top-1)

    def example_paths(self) -> list[Path]:
        return sorted(ASSETS.glob(self.examples))

    @property
    def hub_name(self) -> str:
        """timm's pretrained name, e.g. ``deit_base_patch16_224.fb_in1k``."""
        return f"{self.timm_name}.{self.tag}"

    @property
    def hf_repo(self) -> str:
        return f"timm/{self.hub_name}"

    @functools.cached_property
    def resize_size(self) -> int:  # computed once: preprocessing reads it for every image
        return int(self.input_size / self.crop_pct)


def _deit(key: str, timm_name: str, label: str, params: int, top1: float, top5: float, *, size: int = 224,
          distilled: bool = False, family: str = "DeiT") -> ModelSpec:
    paper = DEIT3_PAPER if family == "DeiT III" else DEIT_PAPER
    return ModelSpec(key=key, timm_name=timm_name, tag="fb_in1k", label=label, params=params, input_size=size,
                     distilled=distilled, top1=top1, top5=top5, family=family,
                     accuracy_source=f"top-1: {paper}; top-5: {TIMM_RESULTS}", crop_pct=0.875 if size == 224 else 1.0,
                     tome_r=13 if size == 224 else 24)  # 384: 577 tokens, 24 per block keeps half of them


MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in [
        _deit("deit_tiny", "deit_tiny_patch16_224", "DeiT-Ti", 5_717_416, 72.2, 91.100),
        _deit("deit_small", "deit_small_patch16_224", "DeiT-S", 22_050_664, 79.8, 95.056),
        _deit("deit_base", "deit_base_patch16_224", "DeiT-B", 86_567_656, 81.8, 95.740),
        _deit("deit_base_384", "deit_base_patch16_384", "DeiT-B 384", 86_859_496, 83.1, 96.376, size=384),
        _deit("deit_tiny_distilled", "deit_tiny_distilled_patch16_224", "DeiT-Ti ⚗", 5_910_800, 74.5, 91.898,
              distilled=True),
        _deit("deit_small_distilled", "deit_small_distilled_patch16_224", "DeiT-S ⚗", 22_436_432, 81.2, 95.378,
              distilled=True),
        _deit("deit_base_distilled", "deit_base_distilled_patch16_224", "DeiT-B ⚗", 87_338_192, 83.4, 96.492,
              distilled=True),
        _deit("deit_base_distilled_384", "deit_base_distilled_patch16_384", "DeiT-B ⚗ 384", 87_630_032, 85.2, 97.332,
              size=384, distilled=True),
        _deit("deit3_small", "deit3_small_patch16_224", "DeiT III-S", 22_059_496, 81.4, 95.454, family="DeiT III"),
        _deit("deit3_medium", "deit3_medium_patch16_224", "DeiT III-M", 38_849_512, 83.0, 96.284, family="DeiT III"),
        _deit("deit3_base", "deit3_base_patch16_224", "DeiT III-B", 86_585_320, 83.8, 96.584, family="DeiT III"),
    ]
}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add `spec` to the catalog, after those already there (the order of tables). Models trained here register
    theirs from their own package (`deit_demo.train`), as timm's model files register theirs."""
    MODELS[spec.key] = spec
    return spec


DEFAULT_MODEL = "deit_base"


def get_spec(key: str) -> ModelSpec:
    """The catalog entry for `key`, or a project error listing the valid keys."""
    if not key:
        raise DeitDemoError(f"Choose a model: one of {', '.join(MODELS)}.")
    try:
        return MODELS[key]
    except KeyError:
        raise DeitDemoError(f"Unknown model {quoted(key)}. Choose one of: {', '.join(MODELS)}.") from None


@dataclass
class LoadedModel:
    """A model in eval mode plus where its weights came from.

    `weights` is what the UI and result rows show (``hub`` / ``checkpoint:<name>`` / ``random``); `weights_id` is a
    fingerprint of the actual tensors, so converted artifacts are keyed by the weights they were made from.
    """

    spec: ModelSpec
    model: nn.Module
    weights: str
    weights_id: str = field(default="")
    note: str = ""  # why these weights, where they are not the ones asked for (a fallback to random weights)

    def __post_init__(self) -> None:
        if not self.weights_id:
            self.weights_id = fingerprint(self.model)


def fingerprint(model: nn.Module) -> str:
    """A short sha256 over the state dict's names, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


# One model built at a time: building initialises its weights from torch's global generator, which every thread
# shares. Three threads loading random DeiT-B, DeiT-S and DeiT-Ti at once gave DeiT-B the weights ids 71d2cf86… and
# 3e00b5ae… (a5a5bde4… alone), and every launch of the app converted DeiT-B again under a new id.
_BUILDING = threading.RLock()


def create_model(spec: ModelSpec, *, pretrained: bool = False) -> nn.Module:
    """Build the timm architecture for `spec`; ``pretrained=True`` goes through timm's hub loading."""
    with _BUILDING:
        if spec.builder is not None:
            return spec.builder()
        import timm

        name = spec.hub_name if pretrained else spec.timm_name
        return timm.create_model(name, pretrained=pretrained, num_classes=spec.num_classes)


HUB_HELP = (
    "Pretrained weights for {name} could not be loaded from the Hugging Face hub ({why}). "
    "Either use --weights random (labels will be meaningless), pass a checkpoint path (--weights PATH.safetensors "
    "or an official DeiT .pth), or pre-fill the cache on a machine with network: "
    "`hf download {repo}` (copy HF_HOME/hub across and set HF_HUB_OFFLINE=1)."
)


def _load_hub(spec: ModelSpec) -> nn.Module:
    try:
        return create_model(spec, pretrained=True)
    except Exception as err:  # huggingface_hub / requests / OSError: all mean "not reachable or not cached"
        why = describe(err, limit=200)
        raise DeitDemoError(HUB_HELP.format(name=spec.hub_name, why=why, repo=spec.hf_repo)) from err


def save_weights(model: nn.Module, path: Path | str, metadata: dict[str, str] | None = None) -> None:
    """`model`'s weights as a safetensors file (tensors only: loading it never runs code)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)


def load_weights(model: nn.Module, path: Path | str) -> nn.Module:
    """`model` with the weights of the safetensors file at `path` (written by `save_weights`)."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path), device="cpu"))
    return model


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or an official ``.pth`` (``{"model": state_dict}``), never unpickling code."""
    if not path.is_file():
        raise DeitDemoError(f"Checkpoint {path} does not exist or is not a file.")
    if path.suffix == ".safetensors":
        check_safetensors_header(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        code = re.search(r"GLOBAL ([\w.]+)", str(err)) or re.search(r"[Uu]nsupported global:? ([\w.]+)", str(err))
        if code:  # torch's own message would advise weights_only=False, which would run this file's code
            raise DeitDemoError(f"Refused: checkpoint {path.name} contains code (it calls {code.group(1)}). "
                                "Load only checkpoints saved as plain tensors (.safetensors, or a state dict of "
                                "tensors).") from None
        raise DeitDemoError(f"Could not read checkpoint {path.name} ({type(err).__name__}). Expected .safetensors or "
                            "a DeiT .pth saved as plain tensors.") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DeitDemoError(f"Checkpoint {path.name} does not hold a state dict of tensors.")
    return state


MAX_SAFETENSORS_HEADER = 100 * 2**20


def check_safetensors_header(path: Path) -> None:
    """Refuse a safetensors file whose header claims more than it can hold (a header read allocates that much)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8:
        raise DeitDemoError(f"Checkpoint {path.name} is too short to be a safetensors file.")
    claimed = int.from_bytes(head, "little")
    if claimed > min(MAX_SAFETENSORS_HEADER, size - 8):
        raise DeitDemoError(f"Refused: checkpoint {path.name} claims a {claimed / 2**20:,.0f} MB header in a file of "
                            f"{size / 2**20:,.1f} MB; it is damaged or hostile.")


def _load_checkpoint(spec: ModelSpec, path: Path) -> nn.Module:
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = create_model(spec)
    try:
        state = checkpoint_filter_fn(read_checkpoint(path), model)  # adapts official DeiT key names / pos-embed
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches: a checkpoint of another size
        raise DeitDemoError(f"Checkpoint {path.name} does not fit {spec.key} ({spec.timm_name}): "
                            f"{str(err).splitlines()[-1].strip()[:200]}. Pick the matching --model.") from None
    if missing or unexpected:
        raise DeitDemoError(
            f"Checkpoint {path.name} does not fit {spec.key} ({spec.timm_name}): missing {len(missing)} keys "
            f"(e.g. {missing[:3]}), unexpected {len(unexpected)} (e.g. {unexpected[:3]}). Pick the matching --model."
        )
    return model


def _load_random(spec: ModelSpec) -> nn.Module:
    # Seeded so every process (CLI, app, tests) gets the same random model and artifacts can be reused; under the
    # building lock, so that no other build draws from the generator meanwhile.
    with _BUILDING, torch.random.fork_rng():
        torch.manual_seed(RANDOM_SEED)
        return create_model(spec)


def load_model(key: str, weights: str | Path = "hub") -> LoadedModel:
    """Build `key` with weights from ``"hub"``, ``"random"`` or a checkpoint path; eval mode, grads off."""
    spec = get_spec(key)
    if weights == "hub" and spec.bundled:
        weights = spec.bundled
    if weights == "hub":
        model, source = _load_hub(spec), "hub"
    elif weights == "random":
        model, source = _load_random(spec), "random"
    else:
        path = Path(weights).expanduser()
        model, source = _load_checkpoint(spec, path), f"checkpoint:{path.name}"
    model.eval().requires_grad_(False)
    return LoadedModel(spec=spec, model=model, weights=source)
