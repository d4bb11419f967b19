"""Doing less work: Token Merging (`deit_demo.variants.tome_merge`) in eager fp32, and stacked on the fastest int8
path (PT2E).

Both are lossy by design: merged tokens change the answers a little, which is why their accuracy cost is measured
(on deit_synth, and against the unmerged model wherever real weights are present). `r` (tokens merged per block)
comes from the context: `--tome-r`, the app's slider, or the model's default (`ModelSpec.tome_r`).
"""

from __future__ import annotations

import copy

from deit_demo.core.models import create_model, load_weights, save_weights
from deit_demo.variants.base import Runner, Variant
from deit_demo.variants.compiled import Pt2eInt8
from deit_demo.variants.registry import register
from deit_demo.variants.tome_merge import ToMe


class _TokenMerging(Variant):
    family = "less work"
    lossy = True

    def store_key(self, ctx) -> str:
        return f"{self.key}-r{ctx.r_for(self.key)}"

    def notes_for(self, artifact, ctx) -> dict:
        """How it runs: its r, and whether that r was tuned to an accuracy budget (`deit-demo tune`)."""
        r = int(artifact.notes.get("r", ctx.r_for(self.key)))
        tuned = ctx.tome_r is None and ctx.tuned_r.get(self.key) == r
        return {"r": r, **({"r_source": "tuned to an accuracy budget"} if tuned else {})}


@register
class TomeFp32(_TokenMerging):
    key = "tome_fp32"
    title = "Token merging fp32 (ToMe, eager)"
    description = ("ToMe (Bolya et al., ICLR 2023): in every block the r most similar tokens (cosine of attention "
                   "keys, bipartite matching) are merged by size-weighted average, with proportional attention; the "
                   "class and distillation tokens are never merged. No retraining. Eager PyTorch, fp32 weights.")
    suffix = ".safetensors"

    def export(self, model, path, ctx):
        r = ctx.r_for(self.key)
        save_weights(model, path, metadata={"r": str(r)})
        return {"r": r, "tokens_per_block": ToMe(model, r).tokens_per_block(_tokens(model))}

    def load(self, artifact, ctx):
        model = load_weights(create_model(ctx.spec), artifact.path)
        notes = self.notes_for(artifact, ctx)
        return Runner(ToMe(model.eval().requires_grad_(False), notes["r"]).eval(), notes)


@register
class TomeInt8(_TokenMerging, Pt2eInt8):
    key = "tome_int8"
    precision = "int8"
    title = "Token merging + PT2E int8 (ToMe on the X86 int8 path)"
    description = ("ToMe with r tokens merged per block, then the pt2e_int8 recipe: exported (token counts are static "
                   "for a given r), PT2E static int8 with the X86 inductor quantizer calibrated on the example "
                   "images, compiled by inductor with freezing when loaded. Less work on top of cheaper work.")
    version = 1

    def export(self, model, path, ctx):
        r = ctx.r_for(self.key)
        merged = ToMe(copy.deepcopy(model), r).eval()
        notes = Pt2eInt8.export(self, merged, path, ctx)
        return {**notes, "r": r, "tokens_per_block": merged.tokens_per_block(_tokens(model))}

    def load(self, artifact, ctx):
        runner = Pt2eInt8.load(self, artifact, ctx)
        runner.notes.update(self.notes_for(artifact, ctx))
        return runner


def _tokens(model) -> int:
    return model.patch_embed.num_patches + getattr(model, "num_prefix_tokens", 1)
