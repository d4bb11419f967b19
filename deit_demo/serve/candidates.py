"""Auto's measurement: each candidate prepared (cheapest first), its answers checked against the original, all of
them timed together beside it, and the policy asked. The same steps whether Auto prepares in this process
(`serve.auto`) or as a task on a cluster's worker node (`cluster.jobs`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from deit_demo.core.models import LoadedModel
from deit_demo.measure.timing import Entry, TimingSettings, entries_from, measure
from deit_demo.serve.policy import Decision, Rules, choose, measured
from deit_demo.variants import ORIGINAL, get_variant
from deit_demo.variants.pipeline import ProgressFn, answer_check, check_inputs, prepare_variants


@dataclass
class Measurement:
    """What Auto measured: the policy's decision, how many check inputs it used, the timed entries (their runners
    loaded for this job's threads) and each prepared candidate's file."""

    decision: Decision
    checked: int
    entries: dict[str, Entry]
    artifacts: dict = field(default_factory=dict)


def measure_candidates(loaded: LoadedModel, candidates: tuple[str, ...], store, *, threads: int, timing_runs: int = 6,
                       rules: Rules = Rules(), progress: ProgressFn | None = None,
                       on_prepared: Callable[[Entry, Entry, object, int], None] | None = None) -> Measurement:
    """Prepare, check and time `candidates` beside the original; `on_prepared(original, candidate, x, checked)` hears
    each one as soon as it is ready (Auto serves the first fast one meanwhile)."""
    inputs = check_inputs(loaded.spec)
    check, x = answer_check(loaded.model, inputs), next(iter(inputs.values()))
    # Cheapest to prepare first (stable: the given order decides among equals), so that the first verified one to
    # beat the original serves while the others are prepared (DeiT-B: the int8 ONNX model in seconds, the compiled
    # graph after minutes).
    order = sorted(candidates, key=lambda k: get_variant(k).prepare_cost)
    entries, artifacts = [Entry(ORIGINAL, loaded.model)], {}
    for item in prepare_variants(loaded, order, store, progress=progress):
        entries += entries_from([item], check=check)
        if item.artifact is not None:
            artifacts[item.key] = item.artifact
        if on_prepared is not None and item.runner is not None and not item.variant.compiles_per_shape:
            on_prepared(entries[0], entries[-1], x, len(inputs))
    timing = TimingSettings(runs=timing_runs, warmup=2, block=3)
    timed = {e.name: e for e in measure(entries, x, timing, threads=threads, min_agreement=rules.min_agreement)}
    return Measurement(choose([measured(e) for e in timed.values()], rules), len(inputs), timed, artifacts)
