"""Where the project's files are: the bundled assets (example images, trained checkpoints and their reports), the
home folder (`$DEIT_DEMO_HOME`, else ~/.cache/deit_demo: the artifact store, the CLI's error log), and how a library
that reads its cache folder from the environment is pointed at ours."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def home() -> Path:
    """The lab's own folder: ``$DEIT_DEMO_HOME``, else ``~/.cache/deit_demo`` (read each time: tests set it)."""
    folder = os.environ.get("DEIT_DEMO_HOME")
    return Path(folder) if folder else Path.home() / ".cache" / "deit_demo"


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
