"""The one exception type for errors a user can cause or fix."""


class DeitDemoError(Exception):
    """An error with a message a person can act on (bad image, refused URL, missing weights, ...).

    The CLI prints it without a traceback; the UI turns it into `gr.Error`.
    """
