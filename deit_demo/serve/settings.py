"""How the serving component uses the CPUs: `ServeSettings`, each default with the measurement behind it; validated
here, so every caller (app, CLI, a cluster's replicas) gets the same error."""

from __future__ import annotations

from dataclasses import dataclass

from deit_demo.core.cpus import HEAVY_NICENESS
from deit_demo.core.errors import DeitDemoError
from deit_demo.serve.auto import AUTO_CANDIDATES
from deit_demo.variants import ORIGINAL, get_variant


@dataclass
class ServeSettings:
    """How the serving component uses the CPUs. Tuning, with the measurement behind each default; validated here."""

    auto_variants: tuple[str, ...] = AUTO_CANDIDATES  # what Auto may serve, once converted and verified
    cpus: int = 0  # CPUs to share out; 0 = those this process may use
    classify_threads: int = 0  # per classification; 0 = every CPU free at that moment
    # Kept free of convert/benchmark jobs (all of them together) so classification stays responsive: a flood of
    # jobs once took both CPUs, and a visitor's DeiT-Ti classification was refused as "busy".
    reserved_cpus: int = 1
    max_runners: int = 4
    # Where Auto serves a compiled graph (one pass per image in a batch), a batch runs this many passes side by side,
    # each on a copy compiled for its share of the serving threads (classify.run_in_lanes).
    classify_lanes: int = 2
    # A benchmark's or sweep's timing runs on a thread this much nicer than the server's, so visitors' answers come
    # first (the CLI, with one user, passes 0). Not their preparation, nor conversions, which compile: Python holding
    # the GIL, where a descheduled holder makes every answer wait (timing.measure).
    heavy_niceness: int = HEAVY_NICENESS

    def __post_init__(self) -> None:
        # In the order given (a preference among equally fast ones), without the original: it is always the fallback.
        self.auto_variants = tuple(get_variant(k.strip()).key for k in self.auto_variants if k.strip() != ORIGINAL)
        lossy = [k for k in self.auto_variants if get_variant(k).lossy]
        if lossy:
            raise DeitDemoError(f"Auto serves only variants meant to give the original's answers; {', '.join(lossy)} "
                                "compute less on purpose (choose them by name instead).")
        for name in ("max_runners", "classify_lanes"):
            if getattr(self, name) < 1:
                raise DeitDemoError(f"{name} must be at least 1 (got {getattr(self, name)}).")
        for name in ("cpus", "classify_threads", "reserved_cpus", "heavy_niceness"):
            if getattr(self, name) < 0:
                raise DeitDemoError(f"{name} must be 0 or more (got {getattr(self, name)}).")
