"""The About tab's text: what DeiT is, the variants, what is deprecated, the method, and the models trained here."""

from __future__ import annotations

from pathlib import Path

from deit_demo.service import MODELS, VARIANTS, Head, TrainingReport

ABOUT = """
## What DeiT is, and why it matters

**DeiT** (Data-efficient Image Transformers, Touvron et al., 2021) showed that a plain Vision Transformer can reach
ResNet-class ImageNet accuracy **trained on ImageNet-1k alone**, on one 8-GPU node in under three days. Before it,
ViTs needed hundreds of millions of extra images (JFT-300M). The recipe: strong augmentation (RandAugment, Mixup,
CutMix, random erasing), stochastic depth, repeated augmentation, and AdamW with long schedules.

**The distillation token.** Besides the usual class token, DeiT adds a second learned token that travels through every
attention layer and has its own head. The class head learns from the true labels; the distillation head learns from
a **teacher** (a RegNet CNN). At test time the two heads' logits are averaged. The Classify tab shows both heads and
their average for the distilled models (⚗).

**Soft vs hard distillation.** *Soft*: the student matches the teacher's softened probabilities (KL divergence at a
temperature). *Hard*: the student is trained with cross-entropy on the teacher's **argmax** label, as if it were a
second ground truth. DeiT found hard distillation works better, and that a CNN teacher passes on useful inductive
bias: DeiT-B⚗ reaches 83.4% top-1 vs 81.8% without distillation.

## Shipping it: the variants

{variants}

## Doing less work: token merging

Dense int8 on this CPU is already within about 1.5x of what the silicon allows, so going much faster means computing
less. **Token Merging** (ToMe, Bolya et al., ICLR 2023) merges the `r` most similar tokens in every block, with no
retraining: tokens are split alternately into two sets, each token of one set is matched to its most similar token of
the other (cosine similarity of the attention keys), and the `r` best pairs are averaged, weighted by how many patches
each already stands for. Attention then adds log(size) to its logits (*proportional attention*), so a merged token
weighs as much as the patches it replaced. The class and distillation tokens are never merged. With `r = 0` the model
is exactly the original. The paper reports DeiT-S at r = 13: 79.4% top-1 against 79.8%, 2.7 against 4.6 GFLOPs.
Here `tome_fp32` runs it eagerly and `tome_int8` stacks it on the PT2E int8 path. The Benchmark tab's r sweep and
`python -m deit_demo tome-sweep` measure each r's latency and its accuracy cost on `deit_synth`.

## What is deprecated in today's PyTorch, and the successor

| then (the tutorial) | now | successor |
|---|---|---|
| `torch.jit.script` | deprecated (FutureWarning) | `torch.export` → ExecuTorch (phones), `torch.compile` (servers) |
| `torch.ao.quantization` | deprecated, removal announced | torchao / PT2E quantization, ONNX Runtime quantization |
| `optimize_for_mobile` | needs XNNPACK, absent from this build | ExecuTorch with the XNNPACK backend |
| lite interpreter `.ptl` | deprecated; its loader fails in this build | ExecuTorch `.pte` |

## How we measure
Wall clock with `perf_counter`, warm-up first, then the variants interleaved in blocks (each round, each variant
runs a few consecutive calls and the first is dropped), so machine drift hits all alike. We show the median with
p10–p90, and the profiler's self-CPU total beside it: that total sums operator time over threads and is **not**
wall time, which is why the tutorial's single profiled run overstated latency.
"""


TARGETS = {"none": "none (labels on both heads)", "hard": "hard (the teacher's argmax as a second label)"}
COUNTS = {1: "one", 2: "two", 3: "three"}


def _ci(head: Head | None) -> str:
    if head is None:
        return "not recorded"
    return f"{head.top1:.2%}" + (f" [{head.ci95[0]:.1%}, {head.ci95[1]:.1%}]" if head.ci95 else "")


def _target(mode: str, settings: dict) -> str:
    if mode == "soft":
        return f"soft (KL at τ = {settings['tau']}, λ = {settings['alpha']})"
    return TARGETS[mode]


def _verdict(r: TrainingReport) -> str:
    average = {mode: heads["average"] for mode, heads in r.students.items()}
    if "none" not in average:  # no control to compare with
        return ""
    best, control = max(average, key=lambda m: average[m].top1), average["none"]
    if best == "none":
        rival = max((m for m in average if m != "none"), key=lambda m: average[m].top1, default=None)
        if rival and average[rival].ci95 and control.ci95 and average[rival].ci95[1] >= control.ci95[0]:
            return (f"The control (no teacher) scored highest, {100 * (control.top1 - average[rival].top1):.1f} points "
                    f"above **{rival}** distillation, but their intervals overlap: on {r.test_images} images the "
                    "difference is within noise.")
        return "Here the control (no teacher) scored best: distillation did not help on this task."
    if control.ci95 and average[best].ci95 and average[best].ci95[0] > control.ci95[1]:
        return (f"**{best}** distillation beat the control and the intervals do not overlap: on this task the "
                "teacher helped.")
    return (f"**{best}** distillation scored highest, but its interval overlaps the control's: on "
            f"{r.test_images} images the gain is not distinguishable from noise.")


def training_markdown(key: str, report_path: Path) -> str:
    """A model trained here: its distillation comparison (assets/<key>.json, from deit_demo.train.distill)."""
    r = TrainingReport.load(report_path)
    rows = "\n".join(f"| {mode} | {_ci(h['class'])} | {_ci(h['distillation'])} | {_ci(h['average'])} |"
                     for mode, h in r.students.items())
    targets = [_target(mode, r.distillation[mode]) for mode in r.students]
    targets = ", ".join(targets[:-1]) + " and " + targets[-1] if len(targets) > 1 else targets[0]
    return f"""
## Distillation, measured here: `{key}`

A DeiT with a distillation token, trained here on {r.task}. {len(r.classes)} classes ({', '.join(r.classes)});
{r.train_images} training and **{r.test_images} held-out test images** (one point = {r.test_images / 100:g} images).
A CNN teacher ({_ci(r.teacher)}) taught {COUNTS.get(len(r.students), len(r.students))} students of one architecture
({r.params:,} parameters), same seed and data order, differing only in the distillation token's target, as in the
DeiT paper: {targets}. Top-1 with 95% bootstrap intervals:

| distillation | class head | distillation head | average (DeiT's output) |
|---|---|---|---|
{rows}

{_verdict(r)} The catalog's `{key}` is the **{r.shipped}** student, trained in {r.train_seconds / 60:.1f} minutes on
2 CPU cores. Its accuracy is what the Convert tab and `evaluate` measure per variant, so a technique's cost is visible.
"""


def about_markdown() -> str:
    rows = ["| variant | what it is for |", "|---|---|"]
    rows += [f"| **{v.title}**<br>`{v.key}` · {v.family} · {v.precision} | {v.description} |"
             for v in VARIANTS.values()]
    parts = [ABOUT.replace("{variants}", "\n".join(rows))]
    parts += [training_markdown(spec.key, Path(spec.report)) for spec in MODELS.values()
              if spec.report and Path(spec.report).is_file()]
    return "\n".join(parts)
