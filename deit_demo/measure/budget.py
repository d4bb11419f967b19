"""The accuracy budget: a pair qualifies only if its top-1, measured on its model's labelled set with a 95% interval,
is within POINTS of its model's original on the same images.

`judge` compares two runners' per-image outcomes (`evaluate.outcomes`) on the same images: top-1 and top-5 with
their intervals, the drop in points with a paired interval, the agreement with the original on those very images, and
a verdict: `within` (the measured drop fits), `uncertain` (only the interval's favourable end fits; the note says how
many images would settle it), `over`, or `unjudged` (no labelled data: never presented as safe).
"""

from __future__ import annotations

from dataclasses import dataclass

from deit_demo.core.errors import DeitDemoError, quoted
from deit_demo.core.models import ModelSpec
from deit_demo.core.stats import accuracy_interval, difference_interval, images_to_settle
from deit_demo.measure.evaluate import LabelledSet, Outcomes, labelled_set

WITHIN, UNCERTAIN, OVER, UNJUDGED = "within", "uncertain", "over", "unjudged"
MAX_DROP_POINTS = 100.0


def signed(points: float) -> str:
    """A change in points with its sign, two decimals (never "-0.00")."""
    return f"{points + 0.0:+.2f}"


def check_max_drop(value) -> float | None:
    """Points of top-1 a pair may lose against its model's original: a number from 0 to 100, or None (no budget)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_DROP_POINTS:
        raise DeitDemoError(f"The accuracy budget (max drop) is a number of top-1 points from 0 to 100, e.g. 1 or 0.5 "
                            f"(got {quoted(value)}).")
    return float(value)


@dataclass
class Judgement:
    """One pair's accuracy against its model's original, on one named labelled set."""

    verdict: str  # within | uncertain | over | unjudged
    note: str = ""
    data: str = ""
    n_images: int = 0
    top1: float | None = None  # fractions, as everywhere in results
    top1_ci95: tuple[float, float] | None = None
    top5: float | None = None
    top5_ci95: tuple[float, float] | None = None
    top1_drop: float | None = None  # points: the original's top-1 minus this pair's, on the same images
    top1_drop_ci95: tuple[float, float] | None = None  # points, paired bootstrap
    agreement: float | None = None  # same top-1 class as the original, on the same images
    settle_images: int | None = None  # for `uncertain`: about how many labelled images would settle it

    @property
    def images(self) -> str:
        """The images every figure of this judgement comes from, named, with their count."""
        return f"{self.data} ({self.n_images} images)" if self.n_images else ""

    def to_row(self) -> dict:
        return {"accuracy_verdict": self.verdict, "accuracy_note": self.note, "eval_data": self.data,
                "n_images": self.n_images, "top1": self.top1, "top1_ci95": self.top1_ci95, "top5": self.top5,
                "top5_ci95": self.top5_ci95, "top1_drop": self.top1_drop, "top1_drop_ci95": self.top1_drop_ci95,
                "settle_images": self.settle_images}


def unjudged(reason: str) -> Judgement:
    return Judgement(UNJUDGED, note=f"could not be judged: {reason}")


def find_labelled(spec: ModelSpec, data: str | None) -> tuple[LabelledSet | None, str]:
    """The model's labelled set (`data` folder, else its built-in test split) or None and why there is none."""
    if not data and spec.eval_set is None:
        return None, (f"{spec.key} has no labelled data here (only the models trained here ship some); pass "
                      "--eval-data FOLDER with one sub-folder per class")
    try:
        return labelled_set(spec, data), ""
    except DeitDemoError as err:
        return None, str(err)


def judge(reference: Outcomes, candidate: Outcomes, max_drop: float | None) -> Judgement:
    """`candidate` against `reference` (the original) on the same images, under a budget of `max_drop` points."""
    if candidate.n_images != reference.n_images or candidate.data != reference.data:
        raise ValueError("a judgement compares outcomes on the same images")
    n = candidate.n_images
    top1, top5 = sum(candidate.top1) / n, sum(candidate.top5) / n
    drop = 100 * (sum(reference.top1) - sum(candidate.top1)) / n
    low, high = difference_interval(reference.top1, candidate.top1)
    found = Judgement(WITHIN, data=candidate.data, n_images=n, top1=top1, top1_ci95=accuracy_interval(candidate.top1),
                      top5=top5, top5_ci95=accuracy_interval(candidate.top5), top1_drop=drop,
                      top1_drop_ci95=(100 * low, 100 * high),
                      agreement=sum(a == b for a, b in zip(reference.predicted, candidate.predicted)) / n)
    if max_drop is None:
        return found
    change = (f"{signed(-drop)} points [{signed(-100 * high)}, {signed(-100 * low)}] against the original on "
              f"{found.images}")
    if drop <= max_drop + 1e-9:
        found.note = f"within the {max_drop:g}-point budget: {change}"
    elif 100 * low <= max_drop:
        found.verdict = UNCERTAIN
        found.settle_images = images_to_settle(reference.top1, candidate.top1, (drop - max_drop) / 100)
        more = f"about {found.settle_images} labelled images" if found.settle_images else "more labelled images"
        found.note = (f"uncertain: {change}; the measured drop is over the {max_drop:g}-point budget but its interval "
                      f"reaches within it; {more} would settle it")
    else:
        found.verdict = OVER
        found.note = f"over the {max_drop:g}-point budget: {change}"
    return found
