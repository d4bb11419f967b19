"""Native libraries (torch's profiler, ExecuTorch's runtime) write chatter straight to file descriptor 2, past Python's
logging. `filtered_stderr` drops the lines that match a pattern while a block runs and passes everything else on."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading

_LOCK = threading.Lock()

# Kineto's "External init callback must run in same thread as registerClient": printed once, when a process first
# profiles on a thread other than its main thread (as the app's benchmarks do); CPU events are recorded all the same.
PROFILER_NOISE = re.compile(r"^(USDT|STAGE):|gpuGetDeviceCount failed|Completed Stage:|External init callback must run")
EXECUTORCH_NOISE = re.compile(r"^\[(cpuinfo_utils|threadpool)\.cpp:\d+\]")


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern):
    with _LOCK, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not noise.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
