"""The one exception type for errors a user can cause or fix."""


def describe(err: BaseException, limit: int = 300) -> str:
    """One line for a result row: the exception type and the first line of its message (which may be empty)."""
    first = str(err).strip().splitlines()[0][:limit] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


QUOTE_CHARS = 80


def quoted(value, limit: int = QUOTE_CHARS) -> str:
    """`value` as an error message shows what it got: its repr, cut to about `limit` characters (a 5000-character
    string was echoed back whole), with the full length said."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


class DeitDemoError(Exception):
    """An error with a message a person can act on (bad image, refused URL, missing weights, ...).

    The CLI prints it without a traceback; the UI turns it into `gr.Error`.
    """


class Cancelled(DeitDemoError):
    """A job was stopped by the person who started it."""


class Busy(DeitDemoError):
    """The server cannot take this now (its queue or the visitor's share of it is full): try again later."""


def check_cancel(cancel) -> None:
    """Raise `Cancelled` if the `threading.Event` (or None) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("Stopped.")


def reference_id() -> str:
    """A short id that ties a visitor's one-line message to the traceback in the server log."""
    import uuid

    return uuid.uuid4().hex[:8]


def log_unexpected(what: str, err: BaseException) -> str:
    """Log `err` with its traceback under a fresh reference id; return the one line a person should see."""
    import logging

    ref = reference_id()
    logging.getLogger("deit_demo").error("%s failed unexpectedly [ref %s]", what, ref, exc_info=err)
    return (f"{what} failed unexpectedly ({type(err).__name__}; reference {ref}). The details are in the server log "
            "under that reference; please try again, or report the reference.")


# Upstream warnings that say nothing a user of this project can act on, printed at every compile or export. Filtered
# only where a process starts (the CLI's `main`, the server's `configure_server_process`, the conversion worker's
# start), never on import.
UPSTREAM_NOISE = (
    # inductor's int8 (mkldnn) lowering copies weight zero points with torch.tensor(tensor): 4 lines per PT2E compile
    ("To copy construct from a tensor", UserWarning, r"torch\._inductor"),
)


# torch's own loggers that warn at every first compile: an Enum registration deprecated inside torch itself, and "No
# CUDA runtime is found" on a CPU-only machine, which is what this project runs on by design
UPSTREAM_NOISY_LOGGERS = ("torch.utils._pytree", "torch.utils.cpp_extension")


def quiet_upstream_noise() -> None:
    """Ignore `UPSTREAM_NOISE` and keep `UPSTREAM_NOISY_LOGGERS` to errors in this process (process-wide: for entry
    points only)."""
    import logging
    import warnings

    for message, category, module in UPSTREAM_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in UPSTREAM_NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
