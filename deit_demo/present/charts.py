"""Plotly figures from benchmark results (no Gradio here). One colour per variant across every chart."""

from __future__ import annotations

import math
from pathlib import Path

import plotly.graph_objects as go
from plotly.colors import qualitative

from deit_demo.measure.bench import BenchResult
from deit_demo.measure.decide import pareto_front
from deit_demo.measure.profile import CLASSES
from deit_demo.measure.results import accuracy_of, pair_name
from deit_demo.variants import ORIGINAL

_PALETTE = qualitative.Plotly + qualitative.D3


def variant_color(key: str) -> str:
    """A stable colour per variant: registry position first, so charts agree across runs and tabs."""
    from deit_demo.variants import VARIANTS

    keys = list(VARIANTS)
    index = keys.index(key) if key in keys else len(keys) + sum(map(ord, key))
    return _PALETTE[index % len(_PALETTE)]


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, template="plotly_white",
                      margin=dict(l=50, r=20, t=50, b=90), height=380, showlegend=False,
                      font=dict(size=12), xaxis_tickangle=-30)
    return fig


def _busy(rows) -> str:
    """A title's mark for figures timed while the server was busy (core.activity)."""
    busy = any((r.get("disturbed") if isinstance(r, dict) else getattr(r, "disturbed", "")) for r in rows)
    return "<br><sup>⚠ measured while the server was busy: rerun when it is idle</sup>" if busy else ""


def _timed(results: list[BenchResult], batch_size: int | None = None) -> list[BenchResult]:
    rows = [r for r in results if r.latency and r.latency.samples_ms]
    if batch_size is None and rows:
        batch_size = min(r.batch_size for r in rows)
    return [r for r in rows if r.batch_size == batch_size]


def latency_chart(results: list[BenchResult], batch_size: int | None = None) -> go.Figure:
    """Median latency per variant, with p10..p90 as an asymmetric error bar."""
    rows = _timed(results, batch_size)
    fig = go.Figure(go.Bar(
        x=[r.variant for r in rows], y=[r.latency.median_ms for r in rows],
        marker_color=[variant_color(r.variant) for r in rows],
        error_y=dict(type="data", symmetric=False, array=[r.latency.p90_ms - r.latency.median_ms for r in rows],
                     arrayminus=[r.latency.median_ms - r.latency.p10_ms for r in rows]),
        hovertemplate="%{x}: %{y:.2f} ms<extra></extra>",
    ))
    batch = rows[0].batch_size if rows else 1
    return _layout(fig, f"Latency per call (batch {batch}; bar = median, whisker = p10–p90){_busy(rows)}",
                   "variant", "latency (ms)")


def size_chart(results: list[BenchResult]) -> go.Figure:
    rows = _first_per_variant([r for r in results if r.size_bytes])
    fig = go.Figure(go.Bar(x=[r.variant for r in rows], y=[r.size_bytes / 1e6 for r in rows],
                           marker_color=[variant_color(r.variant) for r in rows],
                           hovertemplate="%{x}: %{y:.1f} MB<extra></extra>"))
    return _layout(fig, "File size per variant", "variant", "size (MB)")


def reduction_chart(results: list[BenchResult], batch_size: int | None = None) -> go.Figure:
    """Latency and size reduction vs the original, in percent (positive = smaller/faster)."""
    rows = _timed(results, batch_size)
    base = next((r for r in rows if r.variant == ORIGINAL), None)
    fig = go.Figure()
    if base:
        others = [r for r in rows if r.variant != ORIGINAL]
        fig.add_bar(name="latency", x=[r.variant for r in others],
                    y=[100 * (1 - r.latency.median_ms / base.latency.median_ms) for r in others],
                    marker_color=[variant_color(r.variant) for r in others],
                    hovertemplate="%{x}: %{y:.0f}% faster<extra>latency</extra>")
        sized = [r for r in others if r.size_bytes and base.size_bytes]
        fig.add_bar(name="size", x=[r.variant for r in sized],
                    y=[100 * (1 - r.size_bytes / base.size_bytes) for r in sized],
                    marker_color=[variant_color(r.variant) for r in sized], marker_pattern_shape="/",
                    hovertemplate="%{x}: %{y:.0f}% smaller<extra>size</extra>")
    _layout(fig, "Reduction vs original (solid = latency, hatched = size)", "variant", "reduction (%)")
    fig.update_layout(barmode="group")
    return fig


def scatter_chart(results: list[BenchResult], batch_size: int | None = None) -> go.Figure:
    """Size vs latency, coloured by top-1 agreement with the original."""
    rows = [r for r in _timed(results, batch_size) if r.size_bytes]
    fig = go.Figure(go.Scatter(
        x=[r.size_bytes / 1e6 for r in rows], y=[r.latency.median_ms for r in rows], mode="markers+text",
        text=[r.variant for r in rows], textposition="top center",
        marker=dict(size=14, color=[r.top1_agreement if r.top1_agreement is not None else 0 for r in rows],
                    colorscale="Viridis", cmin=0, cmax=1, line=dict(width=2, color=[variant_color(r.variant)
                                                                                  for r in rows]),
                    colorbar=dict(title="top-1 agree", thickness=10)),
        hovertemplate="%{text}: %{x:.1f} MB, %{y:.2f} ms<extra></extra>",
    ))
    return _layout(fig, "Size vs latency (colour = top-1 agreement)", "size (MB)", "median latency (ms)")


def throughput_chart(results: list[BenchResult]) -> go.Figure:
    """Images per second against batch size, one line per variant (the batch sweep)."""
    fig = go.Figure()
    for variant in dict.fromkeys(r.variant for r in results if r.latency):
        rows = sorted((r for r in results if r.variant == variant and r.latency), key=lambda r: r.batch_size)
        fig.add_scatter(x=[r.batch_size for r in rows], y=[r.latency.throughput_ips for r in rows],
                        mode="lines+markers", name=variant, line=dict(color=variant_color(variant)))
    _layout(fig, "Throughput vs batch size", "batch size", "throughput (images/s)")
    fig.update_layout(showlegend=True, xaxis_type="log", xaxis_tickangle=0)
    return fig


def _first_per_variant(results: list[BenchResult]) -> list[BenchResult]:
    seen: dict[str, BenchResult] = {}
    for r in results:
        seen.setdefault(r.variant, r)
    return list(seen.values())


def all_charts(results: list[BenchResult]) -> dict[str, go.Figure]:
    charts = {"latency": latency_chart(results), "size": size_chart(results), "reduction": reduction_chart(results),
              "scatter": scatter_chart(results)}
    if len({r.batch_size for r in results if r.latency}) > 1:
        charts["throughput"] = throughput_chart(results)
    profiled = [r.breakdown for r in _first_per_variant(results) if r.breakdown is not None]
    if any(b.status == "ok" for b in profiled):
        charts["breakdown"] = breakdown_chart(profiled)
    return charts


def write_html(results: list[BenchResult], path: Path | str, title: str = "DeiT benchmark") -> Path:
    """All charts in one standalone HTML file (plotly.js inlined, so it opens offline)."""
    return write_figures_html(list(all_charts(results).values()), path, title)


def write_figures_html(figures: list[go.Figure], path: Path | str, title: str) -> Path:
    """Figures in one standalone HTML file (plotly.js inlined once, so it opens offline)."""
    parts = [f"<html><head><meta charset='utf-8'><title>{title}</title>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'></head><body>"]
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts))
    return Path(path)


def tome_chart(rows) -> go.Figure:
    """Token merging: r against median latency (left axis) and top-1 (right axis: accuracy on labelled data, or
    agreement with the unmerged model)."""
    fig = go.Figure()
    rs = [row.r for row in rows]
    fig.add_scatter(x=rs, y=[row.latency.median_ms for row in rows], name="latency, eager fp32 (ms)",
                    mode="lines+markers", line=dict(color=variant_color("tome_fp32")))
    if any(row.int8_latency for row in rows):
        fig.add_scatter(x=rs, y=[row.int8_latency.median_ms if row.int8_latency else None for row in rows],
                        name="latency, int8 (ms)", mode="lines+markers", line=dict(color=variant_color("tome_int8")))
    if any(row.top1 is not None for row in rows):
        fig.add_scatter(x=rs, y=[100 * row.top1 for row in rows], name="top-1 on labelled data (%)", yaxis="y2",
                        mode="lines+markers", line=dict(dash="dot", color="black"),
                        error_y=dict(type="data", symmetric=False,
                                     array=[100 * (row.top1_ci95[1] - row.top1) for row in rows],
                                     arrayminus=[100 * (row.top1 - row.top1_ci95[0]) for row in rows]))
    fig.add_scatter(x=rs, y=[100 * row.top1_agreement for row in rows], name="top-1 agreement with r=0 (%)",
                    yaxis="y2", mode="lines+markers", line=dict(dash="dash", color="gray"))
    title = f"Token merging on {rows[0].model if rows else ''}: r vs latency and accuracy{_busy(rows)}"
    _layout(fig, title, "r (tokens merged per block)", "median latency (ms)")
    fig.update_layout(showlegend=True, xaxis_tickangle=0, legend=dict(orientation="h", y=-0.3),
                      yaxis2=dict(title="top-1 (%)", overlaying="y", side="right", rangemode="normal"))
    return fig


def log_ms_axis(values_ms: list[float]) -> dict:
    """A log axis in milliseconds spanning `values_ms` (data and budget lines), with 1-2-3-5 ticks labelled in ms.
    Plotly takes a log axis's range as powers of ten."""
    low, high = min(values_ms), max(values_ms)
    low, high = math.log10(low) - 0.08, math.log10(high) + 0.08  # a little room for markers and their labels
    ticks = [m * 10 ** e for e in range(math.floor(low) - 1, math.ceil(high) + 1) for m in (1, 2, 3, 5)
             if low <= math.log10(m * 10 ** e) <= high]
    if len(ticks) < 2:  # a narrow span: Plotly's own ticks, in ms
        return dict(type="log", range=[low, high], ticksuffix=" ms")
    return dict(type="log", range=[low, high], tickvals=ticks, ticktext=[f"{v:g} ms" for v in ticks])


def pareto_chart(rows, front, *, budget_ms: float | None = None, machine: str = "", choice=None,
                 max_drop: float | None = None) -> go.Figure:
    """Top-1 (measured where the sweep had an accuracy budget, else published) against measured latency; marker area
    ~ file size; the frontier drawn. With `choice` (a Recommendation), pairs it disqualified are faded and say why on
    hover; with `max_drop`, each model's accuracy budget is a dotted line (its original's measured top-1 less it)."""
    lost = {r["pair"]: r["why"] for r in (choice.rejected if choice is not None else [])
            if not r["why"].startswith("less accurate or slower")}
    fig = go.Figure()
    timed = [r for r in rows if r.get("median_ms") is not None and accuracy_of(r) is not None]
    for variant in dict.fromkeys(r["variant"] for r in timed):
        mine = [r for r in timed if r["variant"] == variant]
        why = [lost.get(pair_name(r), "") for r in mine]
        faded = [0.2 if w else (0.45 if r.get("lossy") and r.get("top1") is None else 0.85) for r, w in zip(mine, why)]
        fig.add_scatter(x=[r["median_ms"] for r in mine], y=[accuracy_of(r) for r in mine], mode="markers+text",
                        name=variant, text=[r["model"] + (f" r={r['tome_r']}" if r.get("tome_r") is not None else "")
                                            for r in mine], textposition="top center",
                        marker=dict(size=[max(8, min(40, 4 * (r.get("size_bytes", 0) / 1e6) ** 0.5)) for r in mine],
                                    color=variant_color(variant), opacity=faded, line=dict(width=1, color="black")),
                        customdata=[[r.get("size_bytes", 0) / 1e6, r.get("threads"), r.get("batch_size"),
                                     ("<br>disqualified: " + "<br>".join(w[i:i + 90] for i in range(0, len(w), 90)))
                                     if w else ""] for r, w in zip(mine, why)],
                        hovertemplate="%{text} " + variant + ": %{x:.1f} ms, %{y:.2f}% top-1, %{customdata[0]:.0f} MB, "
                                      "%{customdata[1]} threads, batch %{customdata[2]}%{customdata[3]}<extra></extra>")
    if front:
        fig.add_scatter(x=[r["median_ms"] for r in front], y=[accuracy_of(r) for r in front], mode="lines",
                        name="Pareto frontier", line=dict(color="black", dash="dash", shape="hv"))
    accuracies = [accuracy_of(r) for r in timed] or [0.0, 100.0]
    references = {r["model"]: 100 * r["top1"] + r["top1_drop"] for r in timed
                  if max_drop is not None and r.get("top1") is not None and r.get("top1_drop") is not None}
    floors = {model: ref - max_drop for model, ref in references.items()}
    y_low, y_high = min(accuracies + list(floors.values())) - 1.5, max(accuracies) + 1.5
    span = [r["median_ms"] for r in timed] + ([budget_ms] if budget_ms else [])
    for model, floor in floors.items():  # a trace, not a shape: see the latency budget below
        fig.add_scatter(x=[min(span) * 0.9, max(span) * 1.1], y=[floor, floor], mode="lines",
                        name=f"accuracy budget {model}: {floor:.2f}% (original - {max_drop:g})",
                        line=dict(color="darkorange", dash="dot"), hoverinfo="name")
    if budget_ms:
        # A trace, not a shape: on a log axis Plotly reads a shape's x as a power of ten (a 50 ms budget drew a line at
        # 10^50 and stretched the axis to 10^54, every point squeezed against the left edge).
        fig.add_scatter(x=[budget_ms, budget_ms], y=[y_low, y_high], mode="lines", name=f"budget {budget_ms:g} ms",
                        line=dict(color="red", dash="dot"), hoverinfo="name")
    measured = any(r.get("top1") is not None and r.get("n_images") for r in timed)
    _layout(fig, f"Accuracy vs latency{' on ' + machine if machine else ''} (marker area ~ size; faded = "
                 f"{'disqualified, hover for why' if lost else 'lossy, accuracy not measured'}"
                 f"{'; top-1 measured on labelled data' if measured else ''}){_busy(timed)}",
            "median latency per call (log scale)", "top-1 (%)")
    fig.update_layout(showlegend=True, xaxis_tickangle=0, height=480, yaxis_range=[y_low, y_high],
                      xaxis=log_ms_axis(span) if span else dict(type="log"))
    return fig


CLASS_COLORS = dict(zip(CLASSES, ("#1f77b4", "#4a98c9", "#9ecae1", "#c6dbef", "#d62728", "#ff9896", "#2ca02c",
                                    "#98df8a", "#9467bd", "#8c564b", "#bcbd22", "#17becf", "#7f7f7f")))


def breakdown_chart(breakdowns) -> go.Figure:
    """Each variant's time per image by operator class, stacked in a fixed order, from its runtime's own profiler;
    a diamond marks the timed median (profilers sum over threads, or miss work between nodes)."""
    rows = [b for b in breakdowns if b.status == "ok" and b.total_ms]
    fig = go.Figure()
    names = [b.variant for b in rows]
    for name in CLASSES:
        if not any(b.ms.get(name) for b in rows):
            continue
        tops = ["<br>".join(f"{op}: {ms:.2f} ms" for op, ms in b.top_ops.get(name, [])) for b in rows]
        fig.add_bar(name=name, x=names, y=[b.ms.get(name, 0.0) for b in rows], marker_color=CLASS_COLORS[name],
                    customdata=[[f"{100 * b.share.get(name, 0):.0f}", top] for b, top in zip(rows, tops)],
                    hovertemplate=f"%{{x}} · {name}: %{{y:.2f}} ms (%{{customdata[0]}}%)<br>%{{customdata[1]}}"
                                  "<extra></extra>")
    walls = [b.wall_ms for b in rows]
    if any(w is not None for w in walls):
        fig.add_scatter(x=names, y=walls, mode="markers", name="wall-clock median",
                        marker=dict(symbol="diamond", size=11, color="black"),
                        hovertemplate="%{x}: %{y:.2f} ms timed<extra></extra>")
    _layout(fig, "Where the time goes (each runtime's own profiler, per image)", "variant", "ms per image")
    fig.update_layout(barmode="stack", showlegend=True, legend=dict(orientation="h", y=-0.35), height=460)
    return fig


def compare_chart(latency_rows: list[dict], labels: list[str]) -> go.Figure:
    """Median latency per (model, variant), one bar per results file (machine), side by side."""
    fig = go.Figure()
    names = [f"{r['model']}/{r['variant']}" + (f" b{r['batch']}" if r["batch"] != 1 else "") for r in latency_rows]
    for label in labels:
        fig.add_bar(name=label, x=names, y=[float(r[f"{label} ms"]) if r.get(f"{label} ms") else None
                                            for r in latency_rows])
    _layout(fig, "Median latency per variant, per results file", "model/variant", "median latency (ms)")
    fig.update_layout(barmode="group", showlegend=True, legend=dict(orientation="h", y=-0.45))
    return fig


def device_chart(device: list[BenchResult], server: list[BenchResult]) -> go.Figure:
    """Each browser format on the visitor's device beside this server: median bars, p10–p90 whiskers, log ms axis."""
    fig = go.Figure()
    values = []
    for name, rows, color in (("your device", device, "#ef553b"), ("this server", server, "#636efa")):
        rows = _timed(rows, 1)
        if not rows:
            continue
        values += [v for r in rows for v in (r.latency.p10_ms, r.latency.p90_ms) if v > 0]
        fig.add_bar(name=name, x=[r.variant for r in rows], y=[r.latency.median_ms for r in rows],
                    marker_color=color,
                    error_y=dict(type="data", symmetric=False,
                                 array=[r.latency.p90_ms - r.latency.median_ms for r in rows],
                                 arrayminus=[r.latency.median_ms - r.latency.p10_ms for r in rows]),
                    hovertemplate=f"{name} · %{{x}}: %{{y:.1f}} ms<extra></extra>")
    _layout(fig, f"Your device against this server (batch 1; bar = median, whisker = p10–p90){_busy(server)}",
            "format", "latency per image")
    fig.update_layout(barmode="group", showlegend=True, legend=dict(orientation="h", y=1.02, x=0))
    if values:
        fig.update_yaxes(**log_ms_axis(values))
    return fig


SYMBOLS = ("circle", "diamond", "square", "triangle-up", "x", "star", "cross", "hexagon")


def fleet_pareto_chart(kinds: dict[str, list[dict]], *, budget_ms: float | None = None) -> go.Figure:
    """Every kind of node's sweep on one chart: a marker shape per kind, a colour per variant, and each kind's own
    Pareto front (what wins on one kind of node may lose on another)."""
    fig, span = go.Figure(), []
    for n, (kind, rows) in enumerate(kinds.items()):
        timed = [r for r in rows if r.get("median_ms") is not None and accuracy_of(r) is not None]
        span += [r["median_ms"] for r in timed]
        for variant in dict.fromkeys(r["variant"] for r in timed):
            mine = [r for r in timed if r["variant"] == variant]
            fig.add_scatter(x=[r["median_ms"] for r in mine], y=[accuracy_of(r) for r in mine], mode="markers",
                            name=f"{variant} · {kind[:40]}", legendgroup=kind, text=[pair_name(r) for r in mine],
                            marker=dict(size=11, color=variant_color(variant), symbol=SYMBOLS[n % len(SYMBOLS)],
                                        line=dict(width=1, color="black")),
                            hovertemplate="%{text} on " + kind[:60] + ": %{x:.1f} ms, %{y:.2f}%<extra></extra>")
        front = pareto_front(timed)
        if front:
            fig.add_scatter(x=[r["median_ms"] for r in front], y=[accuracy_of(r) for r in front], mode="lines",
                            name=f"frontier · {kind[:40]}", legendgroup=kind, line=dict(dash="dash", shape="hv"))
    if budget_ms:
        fig.add_scatter(x=[budget_ms, budget_ms], y=[0, 100], mode="lines", name=f"budget {budget_ms:g} ms",
                        line=dict(color="red", dash="dot"), hoverinfo="name")
    _layout(fig, f"Accuracy vs latency on {len(kinds)} kinds of node (shape = kind; one frontier each)",
            "median latency per call (log scale)", "top-1 (%)")
    fig.update_layout(showlegend=True, height=520, xaxis=log_ms_axis(span) if span else dict(type="log"))
    return fig
