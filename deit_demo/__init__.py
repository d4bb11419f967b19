"""DeiT Deployment Lab: classify, convert and benchmark Data-efficient Image Transformers.

The packages, each importing only those listed before it (tests/test_architecture.py checks it):

    core       errors, paths, CPUs, the model catalog, images, the artifact store, file helpers
    train      the models trained here: their data, architectures, trainers; their catalog entries
    variants   the deployment variants (one registry) and the pipeline that converts, loads and checks them
    measure    the one timing loop, benchmark, sweeps, accuracy, recommendation, charts, tables, results files
    serve      the serving component: serving thread, CPU budget, loaded variants, Auto, lanes
    service    the `Lab` facade the app and the CLI share, its configuration and visitors' sessions
    app, cli   the entry points' own code: Gradio (the only package that imports it) and the command line

Process-wide settings (the GIL switch interval, torch.fx's thread confinement, logging) are set by the entry points
(`app.py`, `deit_demo.cli`), never by importing the library.
"""

from deit_demo import train  # noqa: F401  (registers the models trained here into the catalog)
from deit_demo.core.errors import DeitDemoError

__all__ = ["DeitDemoError"]
__version__ = "0.1.0"
