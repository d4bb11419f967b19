"""Statistics shared by measuring and training: seeded bootstrap intervals for an accuracy and for the difference
between two models on the same images, and how many images would settle a close call."""

from __future__ import annotations

BOOTSTRAP_SAMPLES = 2000


def accuracy_interval(correct, level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES,
                      seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap interval for the mean of per-image 0/1 outcomes (seeded: the same data, the same
    interval)."""
    import numpy as np

    correct = np.asarray(correct, dtype=np.float64)
    if correct.size == 0:
        return float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, correct.size, (samples, correct.size))
    means = correct[draws].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def difference_interval(reference, candidate, level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES,
                        seed: int = 0) -> tuple[float, float]:
    """A paired percentile-bootstrap interval for mean(reference) - mean(candidate), both 0/1 outcomes on the same
    images in the same order: resampling images keeps each image's pair together, so the interval is much narrower
    than the two accuracies' intervals side by side when the two models mostly answer alike."""
    import numpy as np

    diff = np.asarray(reference, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)
    return accuracy_interval(diff, level, samples, seed)  # the same bootstrap of a mean, over per-image differences


def images_to_settle(reference, candidate, margin: float, z: float = 1.96) -> int | None:
    """About how many labelled images a paired interval needs to be narrower than `margin` (a fraction: how far the
    measured difference is from the threshold), if the two models keep differing as they did here. None when they
    never differed (nothing to settle)."""
    import math

    import numpy as np

    diff = np.asarray(reference, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)
    spread = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    if spread == 0 or margin <= 0:
        return None
    return math.ceil((z * spread / margin) ** 2)
