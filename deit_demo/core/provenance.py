"""Where a result came from, beyond the machine: package versions, the project's commit, the CPU's flags. Written into
every results file (`measure.results.results_payload`) and every deployment card, so two runs can be told apart."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

from deit_demo.core.cpus import cpu_flags, usable_cpus

# The packages whose versions change what a variant computes or how fast (and the app's, for its tables)
PACKAGES = ("torch", "timm", "numpy", "onnx", "onnxruntime", "openvino", "nncf", "executorch", "safetensors",
            "gradio", "plotly")
PROJECT = Path(__file__).resolve().parents[2]


def package_versions() -> dict[str, str]:
    """Installed version of each package in PACKAGES ("not installed" where absent), without importing them."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The project's commit (with "+changes" when the work tree differs from it), or "unknown" outside a checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def run_metadata(rows: list[dict] | None = None) -> dict:
    """The run block of a results file: packages, commit, CPU flags, CPUs usable, and the thread counts, batch sizes
    and weights its rows were measured with (so `compare` can warn when overlaid files differ in them)."""
    rows = rows or []

    def values(name: str) -> list:
        return sorted({r[name] for r in rows if r.get(name) not in (None, "")}, key=str)

    return {"packages": package_versions(), "commit": git_commit(), "cpu_flags": sorted(cpu_flags()),
            "usable_cpus": usable_cpus(), "threads": values("threads"), "batch_sizes": values("batch_size"),
            "weights": values("weights")}
