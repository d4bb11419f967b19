"""Where the project's own files are: the bundled assets (example images, trained checkpoints and their reports)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
