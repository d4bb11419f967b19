"""The one exception type for errors a user can cause or fix."""


def describe(err: BaseException, limit: int = 300) -> str:
    """One line for a result row: the exception type and the first line of its message (which may be empty)."""
    first = str(err).strip().splitlines()[0][:limit] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


class DeitDemoError(Exception):
    """An error with a message a person can act on (bad image, refused URL, missing weights, ...).

    The CLI prints it without a traceback; the UI turns it into `gr.Error`.
    """


class Cancelled(DeitDemoError):
    """A job was stopped by the person who started it."""


def check_cancel(cancel) -> None:
    """Raise `Cancelled` if the `threading.Event` (or None) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("Stopped.")
