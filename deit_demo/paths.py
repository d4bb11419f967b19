"""Where the project's own files are: the bundled assets (example images, trained checkpoints and their reports), and
how a library that reads its cache folder from the environment is pointed at ours."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@contextlib.contextmanager
def cache_folder(variable: str, folder: Path) -> Iterator[None]:
    """`$variable` set to `folder` for the block, then restored (unset if it was)."""
    previous = os.environ.get(variable)
    os.environ[variable] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = previous
