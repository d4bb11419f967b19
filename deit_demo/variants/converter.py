"""Conversions in a child process, for a store that a server shares (`ArtifactStore(isolate=True)`).

In the app, conversions ran on threads beside the visitors' answers, and two things leaked between them:
- the GIL: export, ONNX Runtime's quantizer and ExecuTorch's lowering are minutes of Python and numpy, and a served
  forward pass waited for the GIL at every eager op (answers of 2-3 s instead of 50 ms while Auto prepared);
- torch.export's process-wide state: while one thread exports, `torch.compiler.is_exporting()` is true on every
  thread, and a visitor's model load on another (`torch.manual_seed`) raced on `torch.fx.traceback.current_meta`
  (KeyError 'custom').
One spawned worker converts, at a lower CPU priority, and ends when it has been idle for a while (its memory with it).
The model crosses to it once per weights, as a file kept while the worker lives (Auto's candidates for DeiT-B saved
346 MB five times), and the worker keeps the last models it loaded: conversions never change the model they are given.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import tempfile
import threading
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from deit_demo.core.artifacts import Artifact
from deit_demo.core.errors import DeitDemoError, describe, quiet_upstream_noise

IDLE_S = 120.0  # a worker with no conversion for this long exits and gives its memory back
NICENESS = 10  # a conversion yields the CPUs to the visitors' answers
KEEP_MODELS = 2  # models the worker keeps loaded, and their files here (the app keeps 2 models loaded too)

_lock = threading.Lock()
_pool: concurrent.futures.ProcessPoolExecutor | None = None
_busy = 0
_idle_timer: threading.Timer | None = None
_staged: dict[tuple[str, str], Path] = {}  # (model key, weights id) -> the model saved for the worker, oldest first
_loaded: dict[str, torch.nn.Module] = {}  # in the worker: model file -> the model loaded from it, oldest first


def _start_child() -> None:
    quiet_upstream_noise()  # a process of its own: the server's filters do not cross the spawn
    try:
        os.nice(NICENESS)
    except OSError:
        pass  # not allowed here: it still converts, only at the server's priority
    _die_with_parent()


def _die_with_parent() -> None:
    """End this worker the moment its server ends, however it ends. A server killed by SIGKILL (the OOM killer) or
    stopped by SIGTERM mid-conversion left its worker (1.4-2.6 GB) and the worker's resource tracker running under
    pid 1. A thread waits on the parent's sentinel, which the kernel makes ready when the parent is gone.
    (PR_SET_PDEATHSIG would fire when the parent's *thread* that spawned it ends: Auto's, after 5 s idle.)"""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)  # no clean-up to wait for: the parent that would read the result is gone

    threading.Thread(target=watch, name="deit-watch-parent", daemon=True).start()


def _picklable(err: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(err))
        return True
    except Exception:
        return False


def _convert_here(variant_key: str, model_file: str, workdir: str, ctx, weights_id: str) -> Artifact:
    """Runs in the worker: load the copied model and convert it into `workdir`."""
    from deit_demo.variants import get_variant

    model = _loaded.pop(model_file, None)
    if model is None:
        model = torch.load(model_file, weights_only=False)  # our own file, written by the parent
        while len(_loaded) >= KEEP_MODELS:
            _loaded.pop(next(iter(_loaded)))
    _loaded[model_file] = model  # the newest last
    try:
        return get_variant(variant_key).convert(model, Path(workdir), ctx, weights_id=weights_id)
    except Exception as err:
        if _picklable(err):
            raise
        raise RuntimeError(describe(err)) from None  # the parent can only read errors that cross a pipe


def _pool_for_job() -> concurrent.futures.ProcessPoolExecutor:
    global _pool, _busy
    with _lock:
        if _idle_timer is not None:
            _idle_timer.cancel()
        if _pool is None:
            _pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_child)
        _busy += 1
        return _pool


def _job_done(pool: concurrent.futures.ProcessPoolExecutor, broken: bool) -> None:
    global _pool, _busy, _idle_timer
    with _lock:
        _busy -= 1
        if broken and _pool is pool:
            _pool = None
            _forget_staged()
            pool.shutdown(wait=False, cancel_futures=True)
        elif _busy == 0 and _pool is pool:
            _idle_timer = threading.Timer(IDLE_S, _stop_if_idle, args=(pool,))
            _idle_timer.daemon = True
            _idle_timer.start()


def _stop_if_idle(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _busy or _pool is not pool:
            return
        _pool = None
        _forget_staged()
    pool.shutdown(wait=True)


def shutdown() -> None:
    """End the worker now (tests; at exit, concurrent.futures ends it by itself)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
        if _idle_timer is not None:
            _idle_timer.cancel()
        _forget_staged()
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def _forget_staged() -> None:
    """Delete the model files kept for a worker that is gone (called with `_lock` held)."""
    for path in _staged.values():
        shutil.rmtree(path.parent, ignore_errors=True)
    _staged.clear()


def _stage(model: torch.nn.Module, key: tuple[str, str]) -> Path:
    """The file the worker loads `model` from: saved on the first conversion of these weights, then reused."""
    with _lock:
        path = _staged.pop(key, None)
        if path is None or not path.is_file():
            path = Path(tempfile.mkdtemp(prefix="deit-demo-model-")) / "model.pt"
            torch.save(model, path)
            while len(_staged) >= KEEP_MODELS:
                shutil.rmtree(_staged.pop(next(iter(_staged))).parent, ignore_errors=True)
        _staged[key] = path  # the newest last
        return path


def convert_in_child(variant_key: str, model: torch.nn.Module, workdir: Path, ctx, weights_id: str) -> Artifact:
    """`Variant.convert` of a copy of `model`, in the worker; raises what the conversion raised."""
    pool = _pool_for_job()  # first: a worker counted busy is not stopped, nor its model files deleted, meanwhile
    broken = False
    try:
        model_file = _stage(model, (ctx.spec.key, weights_id))
        return pool.submit(_convert_here, variant_key, str(model_file), str(workdir), ctx, weights_id).result()
    except BrokenProcessPool:
        broken = True
        raise DeitDemoError("The conversion process ended before it finished (it was killed, or ran out of "
                            "memory); nothing was saved.") from None
    finally:
        _job_done(pool, broken)
