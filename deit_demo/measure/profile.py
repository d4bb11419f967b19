"""Where each variant's time goes, by operator class, from each runtime's own profiler, side by side.

torch.profiler sees PyTorch's operators (eager, TorchScript, inductor's kernels), ONNX Runtime writes a per-node trace
(`SessionOptions.enable_profiling`), OpenVINO counts per layer (`PERF_COUNT`). Each variant family turns its
runtime's profile into `OpTime`s (`Variant.profile`); this module maps them onto one small set of classes with one
table (`RULES`), so that an operator nobody mapped shows as "other" with its name, never silently. Profiling runs in
its own calls, after the timed blocks: it never changes the timed figures.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deit_demo.variants.base import OpTime, RuntimeProfile

# The classes, in the order charts stack them (and one colour each)
CLASSES = ("linear: QKV", "linear: projection", "linear: MLP", "linear: other", "attention matmuls", "softmax",
           "layer norm", "GELU", "quantize / dequantize", "patch embedding", "data movement", "element-wise", "other")

# (operator kind, node name) patterns -> class; the first match wins. Linear layers are then split by role.
RULES: list[tuple[str, str, str]] = [
    ("", r"scaled_dot_product|ScaledDotProductAttention", "attention matmuls"),
    (r"scaled_dot_product|flash_attention|ScaledDotProductAttention", "", "attention matmuls"),
    (r"conv|patch_embed", "", "patch embedding"),
    ("", r"patch_embed\.proj|patch_embed/", "patch embedding"),
    # NNCF's SmoothQuant scales (a Multiply before each int8 layer, named "nncf_smooth", cut short in counters) are
    # the quantization's own work
    ("", r"nncf_smoo", "quantize / dequantize"),
    (r"softmax", "", "softmax"),
    (r"layer_?norm|MVN", "", "layer norm"),
    (r"gelu", "", "GELU"),
    (r"^(Dynamic)?QuantizeLinear$|^DequantizeLinear$|quantize_per|^aten::dequantize$", "", "quantize / dequantize"),
    (r"Subgraph", r"\.attn/", "attention matmuls"),  # OpenVINO's fused snippets inside attention
    # int8 matmuls (quantized::linear_dynamic, DynamicQuantizeMatMul, MatMulInteger, FullyConnectedQuantized...) are
    # linear layers: their own quantization of the activations is part of them
    (r"linear|addmm|aten::mm$|gemm|FullyConnected|MatMul|matmul|bmm|baddbmm|qlinear", "", "linear"),
    (r"quantize|FakeQuantize|Dequantization|Requantize", "", "quantize / dequantize"),
    (r"transpose|reshape|permute|concat|\bcat\b|split|slice|squeeze|expand|copy|clone|contiguous|reorder|gather|"
     r"\bview|shape|cast|_to_copy|flatten|broadcast|select|stack|empty|ListConstruct|ListUnpack|as_strided|narrow|"
     r"unbind|resize_|\bt$", "", "data movement"),
    # What is left of a ViT: the residual adds and scalings, e.g. OpenVINO's fused residual (an unnamed node
    # "Multiply_N" over a block's Add and its fc2), shown as Add, Multiply or PowerStatic
    (r"^(Add|Multiply|PowerStatic|Eltwise|Subtract|Divide|Power)$|^aten::(add|mul|div|sub)_?$", "", "element-wise"),
]


def classify(op: OpTime) -> str:
    """The class of one operator: by its kind and node name (`RULES`), linear layers by their role."""
    for kind, node, name in RULES:
        if ((not kind or re.search(kind, op.kind, re.IGNORECASE))
                and (not node or re.search(node, op.node, re.IGNORECASE))):
            return _linear_role(op) if name == "linear" else name
    return "other"


def _linear_role(op: OpTime) -> str:
    """QKV / projection / MLP from the node's name where the runtime keeps the module path (OpenVINO), else from the
    layer's shape: in -> 3 x in is QKV, in -> in the projection, in <-> 4 x in the MLP. A product of two
    activations (rank 4: heads) is attention."""
    node = op.node
    if re.search(r"attn\.qkv|\.qkv[/.]", node):
        return "linear: QKV"
    if re.search(r"attn\.proj", node):
        return "linear: projection"
    if re.search(r"mlp\.fc", node):
        return "linear: MLP"
    if re.search(r"scaled_dot_product|/aten::matmul|attn/.*MatMul", node):
        return "attention matmuls"
    if op.rank >= 4 or re.search(r"bmm|baddbmm", op.kind):  # products of two activations: a ViT's attention
        return "attention matmuls"
    if op.features is None:
        return "linear: other"
    n_in, n_out = op.features
    if n_out == 3 * n_in:
        return "linear: QKV"
    if n_out == n_in:
        return "linear: projection"
    if n_out == 4 * n_in or n_in == 4 * n_out:
        return "linear: MLP"
    return "linear: other"


@dataclass
class Breakdown:
    """One variant's time per image by class, from its runtime's profiler, beside its wall-clock median."""

    variant: str
    runtime: str = ""
    status: str = "ok"  # ok | unavailable
    reason: str = ""
    ms: dict[str, float] = field(default_factory=dict)  # class -> ms per image
    top_ops: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # class -> [(operator, ms per image)]
    unmapped: list[str] = field(default_factory=list)  # operators that fell to "other", by name
    total_ms: float = 0.0  # what the profiler attributes to operators, per image
    wall_ms: float | None = None  # the timed median, for comparison
    trace: str = ""  # a Chrome trace event file (opens in Perfetto and chrome://tracing)

    @property
    def share(self) -> dict[str, float]:
        return {k: v / self.total_ms for k, v in self.ms.items()} if self.total_ms else {}

    def gap_note(self) -> str:
        """The profiler's total against the wall time, with what the difference means."""
        if self.wall_ms is None or not self.total_ms:
            return ""
        if self.total_ms > self.wall_ms:
            return (f"operators {self.total_ms:.1f} ms against {self.wall_ms:.1f} ms wall: the profiler sums operator "
                    "time over threads")
        return (f"operators {self.total_ms:.1f} ms against {self.wall_ms:.1f} ms wall: the rest is between the nodes "
                "(scheduling, the runtime's own overhead) or not seen by the profiler")

    def to_row(self) -> dict:
        row = asdict(self)
        row["share"], row["gap"] = self.share, self.gap_note()
        return row


def breakdown(variant: str, profile: RuntimeProfile, wall_ms: float | None = None, top: int = 5) -> Breakdown:
    """`profile`'s operators summed by class, per image."""
    per_image = 1.0 / max(1, profile.images)
    result = Breakdown(variant, profile.runtime, wall_ms=wall_ms)
    by_class: dict[str, dict[str, float]] = {}
    for op in profile.ops:
        name = classify(op)
        label = op.kind if not op.node else f"{op.kind} ({op.node[:60]})"
        by_class.setdefault(name, {})
        by_class[name][op.kind if name != "other" else label] = \
            by_class[name].get(op.kind if name != "other" else label, 0.0) + op.ms * per_image
        if name == "other" and op.kind not in result.unmapped:
            result.unmapped.append(op.kind)
    for name in CLASSES:
        if name in by_class:
            ops = by_class[name]
            result.ms[name] = sum(ops.values())
            result.top_ops[name] = sorted(ops.items(), key=lambda kv: -kv[1])[:top]
    result.total_ms = sum(result.ms.values())
    return result


def unavailable(variant: str, reason: str) -> Breakdown:
    return Breakdown(variant, status="unavailable", reason=reason)


def write_trace(profile: RuntimeProfile, path: Path) -> Path:
    """`profile` as a Chrome trace event file."""
    path.write_text(json.dumps({"traceEvents": profile.trace, "displayTimeUnit": "ms",
                                "otherData": {"runtime": profile.runtime, "images": profile.images}}))
    return path


def write_traces(results, stem: Path | str) -> list[Path]:
    """Each profiled row's runtime trace as `<stem>_trace_<variant>_b<batch>.json` (Chrome trace event format)."""
    paths = []
    for row in results:
        if row.trace_events and row.breakdown is not None:
            path = Path(f"{stem}_trace_{row.variant}_b{row.batch_size}.json")
            path.write_text(json.dumps({"traceEvents": row.trace_events, "displayTimeUnit": "ms",
                                        "otherData": {"variant": row.variant, "runtime": row.breakdown.runtime}}))
            row.breakdown.trace = path.name
            paths.append(path)
    return paths


def explain(rows: list[Breakdown]) -> list[str]:
    """One sentence per variant against the fastest (by wall time, else by the profiler's total): which class
    accounts for most of the difference."""
    done = [r for r in rows if r.status == "ok" and r.total_ms]
    if len(done) < 2:
        return []

    def speed(r):
        return r.wall_ms if r.wall_ms is not None else r.total_ms

    fastest = min(done, key=speed)
    sentences = []
    for r in done:
        if r is fastest:
            continue
        gaps = {name: r.ms.get(name, 0.0) - fastest.ms.get(name, 0.0) for name in CLASSES}
        name, gap = max(gaps.items(), key=lambda kv: kv[1])
        if gap <= 0:
            sentences.append(f"{r.variant} spends no class's time more than {fastest.variant}; the difference is "
                             "outside the operators.")
            continue
        top = r.top_ops.get(name, [])
        detail = f" ({top[0][0]} in {r.runtime.split(' (')[0]})" if top else ""
        sentences.append(f"{r.variant} spends {gap:.1f} ms more than {fastest.variant} in {name}{detail}.")
    return sentences
