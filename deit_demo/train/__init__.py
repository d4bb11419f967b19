"""The models trained here as offline fixtures (deit_digits, deit_synth): data, architectures, trainers, and their
catalog entries, registered on import. May import `deit_demo.core` only."""

from deit_demo.train import fixtures  # noqa: F401  (registers deit_digits and deit_synth)
