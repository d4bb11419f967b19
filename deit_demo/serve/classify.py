"""Top-k predictions, with the class-token and distillation-token heads of distilled DeiTs kept apart."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import torch

from deit_demo.core.cpus import torch_threads
from deit_demo.core.images import ImageSource, load_image, preprocess
from deit_demo.core.models import LoadedModel
from deit_demo.variants import ORIGINAL

HEAD_TITLES = {"logits": "Prediction", "class": "Class token head", "distillation": "Distillation token head",
               "average": "Average (what DeiT reports)"}


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    prob: float


@dataclass
class ClassifyResult:
    """Top-k per head (``logits`` for plain models; ``class``/``distillation``/``average`` for distilled ones)."""

    model: str
    weights: str
    variant: str
    heads: dict[str, list[Prediction]]
    elapsed_ms: float
    batch_size: int = 1  # images classified together with this one (visitors batched together)
    one_pass: bool = True  # whether they shared one forward pass (else one pass each; elapsed_ms covers them all)
    lanes: int = 1  # passes run side by side, each on its share of the CPUs (when not one pass)
    note: str = ""  # how the variant was chosen (Auto says which it used and its agreement with the original)
    agreement: float | None = None  # the variant's top-1 agreement with the original on the check inputs

    @property
    def top1(self) -> Prediction:
        return self.heads["average" if "average" in self.heads else "logits"][0]

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, offline from timm's bundled metadata."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i).split(",")[0] for i in range(info.num_classes()))


def labels_for(loaded: LoadedModel) -> tuple[str, ...]:
    if loaded.spec.labels:
        return loaded.spec.labels
    labels = imagenet_labels()
    if loaded.spec.num_classes != len(labels):
        return tuple(f"class {i}" for i in range(loaded.spec.num_classes))
    return labels


def forward_heads(model: torch.nn.Module, x: torch.Tensor, *, distilled: bool) -> dict[str, torch.Tensor]:
    """Logits per head. Distilled DeiTs average their two heads in eval mode; here both are kept apart."""
    if not distilled:
        return {"logits": model(x)}
    tokens = model.forward_features(x)
    cls_logits = model.head(tokens[:, 0])
    dist_logits = model.head_dist(tokens[:, 1])
    return {"class": cls_logits, "distillation": dist_logits, "average": (cls_logits + dist_logits) / 2}


def top_k(logits, labels: tuple[str, ...], k: int = 5) -> list[Prediction]:
    """The k likeliest classes of one image's logits (a tensor, or an array from a replica)."""
    probs = torch.softmax(torch.as_tensor(logits).float().reshape(-1), dim=0)
    values, indices = probs.topk(min(k, probs.numel()))
    return [Prediction(int(i), labels[int(i)], float(v)) for v, i in zip(values, indices)]


def classify_tensors(loaded: LoadedModel, tensors: list[torch.Tensor], *, k: int = 5,
                     runner: Callable[[torch.Tensor], torch.Tensor] | None = None, variant: str = ORIGINAL,
                     one_pass: bool = True, lanes: Sequence[Callable[[torch.Tensor], torch.Tensor]] = ()
                     ) -> list[ClassifyResult]:
    """Classify preprocessed images in one forward pass (several visitors' requests at once).

    With `one_pass=False` each image runs alone and the elapsed time is their sum: for dynamic int8 (activation
    scales come from the whole batch, so an image's answer would depend on its batch-mates) and for runners that
    compile once per batch size. Then `lanes` (copies of `runner`, the first `runner` itself) run that many of those
    passes side by side, each on its share of torch's threads (`run_in_lanes`).
    """
    lanes = lanes if runner is not None and not one_pass and len(tensors) > 1 and len(lanes) > 1 else ()
    start = time.perf_counter()
    with torch.inference_mode():
        if runner is None:
            heads = forward_heads(loaded.model, torch.cat(tensors), distilled=loaded.spec.distilled)
        elif one_pass:
            heads = {"logits": runner(torch.cat(tensors))}
        elif lanes:
            heads = {"logits": torch.cat(run_in_lanes(lanes, tensors))}
        else:
            heads = {"logits": torch.cat([runner(x) for x in tensors])}
    elapsed_ms = (time.perf_counter() - start) * 1e3
    return results_from(loaded, heads, k=k, variant=variant, elapsed_ms=elapsed_ms, one_pass=one_pass,
                        lanes=max(1, len(lanes)))


def results_from(loaded: LoadedModel, heads: dict, *, k: int, variant: str, elapsed_ms: float, one_pass: bool = True,
                 lanes: int = 1) -> list[ClassifyResult]:
    """One answer per row of `heads` (head name -> logits, a row per image): top-k with the model's labels. Wherever
    the logits were computed (here, or a replica on another node), the answer is made the same way."""
    labels = labels_for(loaded)
    rows = len(next(iter(heads.values())))
    return [ClassifyResult(model=loaded.spec.key, weights=loaded.weights, variant=variant,
                           heads={name: top_k(logits[i], labels, k) for name, logits in heads.items()},
                           elapsed_ms=elapsed_ms, batch_size=rows, one_pass=one_pass, lanes=lanes)
            for i in range(rows)]


_lane_pools: dict[int, ThreadPoolExecutor] = {}  # lanes -> the helper threads of the lanes beyond the caller's


def run_in_lanes(runners: Sequence[Callable[[torch.Tensor], torch.Tensor]],
                 tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each image alone, as many side by side as there are `runners` (copies of one model: lane i calls only
    runners[i], the first on the caller's thread), each lane on its share of torch's threads. A last group smaller
    than that runs one image at a time on all the threads, with the first runner.

    Why: on 2 CPUs, DeiT-B pt2e_int8 took 57-62 ms per image as two 1-thread passes side by side, against 64-71 ms as
    one 2-thread pass at a time, and a lane slowed by other work does not stall the other at each parallel region.
    Each runner must already be compiled for its share (an inductor graph recompiles for another thread count).
    """
    lanes = len(runners)
    share = max(1, torch.get_num_threads() // lanes)
    pool = _lane_pools.get(lanes) or _lane_pools.setdefault(
        lanes, ThreadPoolExecutor(max_workers=lanes - 1, thread_name_prefix="deit-lane"))

    def lane(runner, x: torch.Tensor) -> torch.Tensor:
        with torch_threads(share), torch.inference_mode():
            return runner(x)

    out: list[torch.Tensor] = []
    whole = len(tensors) - len(tensors) % lanes
    for i in range(0, whole, lanes):
        others = [pool.submit(lane, r, x) for r, x in zip(runners[1:], tensors[i + 1:i + lanes])]
        first = lane(runners[0], tensors[i])
        out += [first, *(f.result() for f in others)]
    return out + [runners[0](x) for x in tensors[whole:]]


def classify(loaded: LoadedModel, source: ImageSource, *, k: int = 5,
             runner: Callable[[torch.Tensor], torch.Tensor] | None = None, variant: str = ORIGINAL) -> ClassifyResult:
    """Classify one image. `runner` replaces the eager model (a converted variant): it yields one averaged head."""
    x = preprocess(load_image(source), loaded.spec)
    return classify_tensors(loaded, [x], k=k, runner=runner, variant=variant)[0]
