"""What every Gradio event shares besides its error edge (`handlers.boundary`): binding a handler to the lab
(`partial`), the visitor's session, the library's progress on a Gradio bar, and a job streamed into redrawn
components.

No `from __future__ import annotations` here: Gradio reads the `gr.Request` annotation to pass the visitor's session.
"""

import inspect
import queue
import threading
import time

import gradio as gr


def gradio_progress(progress: gr.Progress):
    """The library's progress callback (what, done, total) drawn on a gr.Progress bar."""
    return lambda what, done, total: progress((done, max(total, 1)), desc=what)


def session_of(request) -> str | None:
    """The visitor's session id (None outside a request: a test or a script calling the handler)."""
    return getattr(request, "session_hash", None)


def stream_job(job, view, message: str):
    """Run `job(publish)` in a worker thread and yield `view(latest, message) + [None]` as it publishes rows (at most
    twice a second, at once for `publish(rows, now=True)`), so charts fill in live; returns (job's result, its
    exception or None, the latest rows)."""
    updates: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work():
        try:
            outcome["value"] = job(lambda rows, now=False: updates.put((list(rows), now)))
        except Exception as err:  # handed back to the handler, which reports it; the server keeps serving
            outcome["error"] = err
        finally:
            updates.put(None)

    threading.Thread(target=work, daemon=True).start()
    latest, last_draw = [], 0.0
    while (item := updates.get()) is not None:
        latest, now = item
        if now or time.monotonic() - last_draw > 0.5:
            last_draw = time.monotonic()
            yield view(latest, message) + [None]
    return outcome.get("value"), outcome.get("error"), latest


def partial(handler, lab, *, agent_tool: bool = False):
    """`handler(lab, ...)` as a Gradio event function. Unlike functools.partial it keeps the remaining parameters'
    annotations, which is how Gradio knows to pass the visitor's `gr.Request` (and `gr.Progress`). Only functions
    made with `agent_tool=True` are listed as MCP tools; the UI's events stay API endpoints."""
    signature = inspect.signature(handler)
    params = list(signature.parameters.values())[1:]
    if inspect.isgeneratorfunction(handler):
        def event(*args, **kwargs):
            yield from handler(lab, *args, **kwargs)
    else:
        def event(*args, **kwargs):
            return handler(lab, *args, **kwargs)
    event.__signature__ = inspect.Signature(params, return_annotation=signature.return_annotation)
    event.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty}
    event.__name__ = event.__qualname__ = handler.__name__
    event.__doc__ = handler.__doc__
    if not agent_tool:
        event._mcp_type = "none"  # Gradio lists an endpoint as an MCP tool unless its function says otherwise
    return event
