"""Auto's policy, as a function of data: what it measured in, a typed decision out.

No threads, locks, loading or compiling here (`serve.auto` does those around it), so the policy is tested with a
table of cases (tests/test_policy.py). `measured` reads what the timing loop gives back into the policy's terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from deit_demo.measure.timing import Entry, LatencyStats
from deit_demo.variants import ORIGINAL, get_variant


@dataclass(frozen=True)
class Rules:
    """What a candidate must show before Auto serves it."""

    min_agreement: float = 1.0  # top-1 agreement with the original on every check input: Auto is exact in intent


@dataclass(frozen=True)
class Measured:
    """One candidate (or the original) as Auto measured it: prepared, checked and timed at batch 1 beside the
    original, in the same process state."""

    variant: str
    status: str = "ok"  # ok | rejected (answers differ) | unavailable | failed
    median_ms: float | None = None
    agreement: float | None = None  # top-1 agreement with the original on the check inputs (None: not checked)
    compiles: bool = False  # compiled per shape: a call can wait for another thread's compile
    reason: str = ""


@dataclass(frozen=True)
class Decision:
    """What Auto serves and why: the fastest verified variant, and what stands in for it while another thread
    compiles (when it is a compiled graph): the fastest verified one that compiles nothing, else the original."""

    variant: str = ORIGINAL
    agreement: float | None = None
    median_ms: dict[str, float] = field(default_factory=dict)  # every timed one, the original included
    rejected: dict[str, str] = field(default_factory=dict)  # candidate -> why Auto does not serve it
    fallback: str = ORIGINAL
    fallback_agreement: float | None = None

    @property
    def speedup(self) -> float | None:
        if self.variant == ORIGINAL or not self.median_ms.get(self.variant) or not self.median_ms.get(ORIGINAL):
            return None
        return self.median_ms[ORIGINAL] / self.median_ms[self.variant]


def why_not(m: Measured, rules: Rules) -> str:
    """Why `m` may not serve, or "" when it may."""
    if m.status == "ok" and m.variant != ORIGINAL and (m.agreement is None or m.agreement < rules.min_agreement):
        return (f"rejected: top-1 agreement {m.agreement if m.agreement is not None else 'unknown'} is below "
                f"{rules.min_agreement:g}")
    if m.status == "ok":
        return ""
    if m.status == "rejected" or m.reason.startswith("failed while"):
        return m.reason
    return f"{m.status}: {m.reason.split(chr(10))[0][:160]}"


def choose(measured: Sequence[Measured], rules: Rules = Rules()) -> Decision:
    """The fastest verified candidate by median (the original when none is faster), its stand-in, and why each
    other candidate lost. Ties keep the order given (a preference among equals)."""
    rejected = {m.variant: why for m in measured if (why := why_not(m, rules))}
    timed = [m for m in measured if m.variant not in rejected and m.median_ms is not None]
    medians = {m.variant: round(m.median_ms, 2) for m in timed}
    exact = {m.variant: m for m in timed}
    fastest = min(timed, key=lambda m: m.median_ms).variant if timed else ORIGINAL
    decision = Decision(variant=fastest, agreement=exact[fastest].agreement if fastest in exact else None,
                        median_ms=medians, rejected=rejected)
    if fastest == ORIGINAL or not exact[fastest].compiles:
        return decision
    plain = sorted((m for m in timed if not m.compiles and m.variant != ORIGINAL), key=lambda m: m.median_ms)
    if not plain:
        return decision
    return replace(decision, fallback=plain[0].variant, fallback_agreement=plain[0].agreement)


def beats_original(candidate: Measured, original: Measured, rules: Rules = Rules()) -> bool:
    """Whether a candidate timed briefly beside the original may serve while the others prepare: verified, timed,
    and faster."""
    return (not why_not(candidate, rules) and not why_not(original, rules) and candidate.median_ms is not None
            and original.median_ms is not None and candidate.median_ms < original.median_ms)


def measured(entry: Entry) -> Measured:
    """What the policy reads of an entry the timing loop has checked and timed."""
    return Measured(entry.name, entry.status,
                    LatencyStats(entry.samples_ms).median_ms if entry.ok and entry.samples_ms else None,
                    entry.answers.top1_agreement if entry.answers is not None else None,
                    get_variant(entry.name).compiles_per_shape, entry.reason)
