"""The process-wide settings a server needs: the GIL switch interval, torch.fx's thread confinement, Gradio's retried
imports and logging. Entry points (app.py, benchmarks/load.py, the tests' conftest) call `configure_server_process()`
once, where the process starts: the library never changes them as a side effect of being imported or building
something."""

from __future__ import annotations

import importlib.util
import logging
import sys

from deit_demo.service import configure_process

# How long a Python thread may hold the GIL while another waits for it (Python's default: 5 ms). A compile in the
# server (a benchmark of pt2e_int8) runs seconds of Python, and every answer takes the GIL many times on its way
# (event loop, handler, serving thread). DeiT-B, 8 visitors while one compiled: p95 1.6 and 1.7 s at 1 ms against
# 3.8 and 3.6 s at 5 ms (the phase of the compile; 2 runs each, 2-core EPYC).
GIL_SWITCH_INTERVAL_S = 0.001

# Gradio tries these on every event (matplotlib) and for every plot of every new session (bokeh); where they are not
# installed, each try walks sys.path: 16% of the event loop's time per classification through the /call/ API (a new
# session per request), 5% with a session per visitor (py-spy, 8 visitors).
GRADIO_RETRIED_IMPORTS = ("matplotlib", "bokeh")


def mark_missing_imports(names=GRADIO_RETRIED_IMPORTS) -> list[str]:
    """Record the modules that are not installed as missing (None in sys.modules), so that importing them fails at
    once, as it would anyway. Returns those it marked."""
    marked = [n for n in names if n not in sys.modules and importlib.util.find_spec(n) is None]
    for name in marked:
        sys.modules[name] = None
    return marked


def configure_server_process() -> None:
    """Everything a serving process changes for the whole process, in one visible place."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    configure_process(serving=True)  # torch.fx's tracer kept on its thread, upstream noise dropped
    mark_missing_imports()
    # Logging: an unexpected error reaches the `deit_demo` logger once, with its reference id and traceback; the
    # server's log is its standard error (what a Space shows), with a time on each record.
    logger = logging.getLogger("deit_demo")
    if not any(getattr(h, "deit_demo_server", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.deit_demo_server = True
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
