"""The About tab's text: what DeiT is, the variants, what is deprecated, the method, and the models trained here."""

from __future__ import annotations

import json
from pathlib import Path

from deit_demo.service import MODELS, VARIANTS

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


def digits_markdown(report_path: Path) -> str:
    """The distillation experiment on scikit-learn's digits (assets/deit_digits.json, from deit_demo.train.digits)."""
    r = json.loads(report_path.read_text())
    gain = 100 * (r["student_average"] - r["student_without_distillation"])
    verdict = (f"On a task this small both students come within {abs(gain):.1f} points of each other: the teacher's "
               "help is within noise here." if abs(gain) < 1 else
               f"Here distillation changed the student's accuracy by {gain:+.1f} points.")
    return f"""
## Distillation, measured here: `deit_digits`

A DeiT trained here on scikit-learn's bundled handwritten digits (8×8 images upsampled to 32×32; {r['test_images']}
held-out test images): a small CNN teacher, then a {r['params']:,}-parameter DeiT student with a distillation token
trained with **hard-label distillation** (class head ← labels, distillation head ← the teacher's argmax).

| model | test accuracy |
|---|---|
| CNN teacher | {r['teacher']:.2%} |
| student, class-token head | {r['student_class_head']:.2%} |
| student, distillation-token head | {r['student_distillation_head']:.2%} |
| student, average of both heads (DeiT's output) | {r['student_average']:.2%} |
| same student trained on labels only (no teacher) | {r['student_without_distillation']:.2%} |

{verdict} Trained in {r['train_seconds']:.0f} s on a 2-core CPU.
"""


def _ci(head: dict) -> str:
    return f"{head['top1']:.2%} [{head['ci95'][0]:.1%}, {head['ci95'][1]:.1%}]"


def synth_markdown(report_path: Path) -> str:
    """The distillation comparison on procedural textures (assets/deit_synth.json, from deit_demo.train.distill_synth)."""
    r = json.loads(report_path.read_text())
    students = r["students"]
    rows = "\n".join(f"| {mode} | {_ci(h['class'])} | {_ci(h['distillation'])} | {_ci(h['average'])} |"
                     for mode, h in students.items())
    best = max(students, key=lambda m: students[m]["average"]["top1"])
    none_ci = students["none"]["average"]["ci95"] if "none" in students else None
    best_ci = students[best]["average"]["ci95"]
    if best == "none":
        verdict = "Here the control (no teacher) scored best: distillation did not help on this task."
    elif none_ci and best_ci[0] > none_ci[1]:
        verdict = (f"**{best}** distillation beat the control and the intervals do not overlap: on this task the "
                   "teacher helped.")
    else:
        verdict = (f"**{best}** distillation scored highest, but its interval overlaps the control's: on "
                   f"{r['test_images']} images the gain is not distinguishable from noise.")
    return f"""
## Distillation, measured here: `deit_synth`

A DeiT with a distillation token, trained here on procedurally drawn textures ({len(r['classes'])} classes:
{', '.join(r['classes'])}; 64×64 pixels, the texture inside a random region, with random scale, rotation, colour,
contrast, clutter and noise, so 64 patch tokens),
{r['train_images']} training and **{r['test_images']} held-out test images** (one point = {r['test_images'] // 100}
images). A CNN teacher ({_ci(r['teacher'])}) taught three students of one architecture, same seed and data order,
differing only in the distillation token's target, as in the DeiT paper: none (labels on both heads), soft (KL at
τ = {r['soft']['tau']}, λ = {r['soft']['lambda']}) and hard (the teacher's argmax as a second label).
Top-1 with 95% bootstrap intervals:

| distillation | class head | distillation head | average (DeiT's output) |
|---|---|---|---|
{rows}

{verdict} The catalog's `deit_synth` is the **{r['shipped']}** student, trained in {r['train_seconds'] / 60:.1f} minutes on
2 CPU cores. Its accuracy is what the Convert tab and `evaluate` measure per variant, so a technique's cost is visible.
"""


def about_markdown() -> str:
    rows = ["| variant | what it is for |", "|---|---|"]
    rows += [f"| **{v.title}**<br>`{v.key}` · {v.family} · {v.precision} | {v.description} |" for v in VARIANTS.values()]
    parts = [ABOUT.replace("{variants}", "\n".join(rows))]
    for spec in MODELS.values():
        if spec.report and Path(spec.report).is_file():
            report = Path(spec.report)
            # a distillation comparison with intervals (train_synth) or the earlier two-student one (train_digits)
            parts.append((synth_markdown if "students" in json.loads(report.read_text()) else digits_markdown)(report))
    return "\n".join(parts)
