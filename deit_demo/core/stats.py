"""Statistics shared by measuring and training: a seeded bootstrap interval for an accuracy."""

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
