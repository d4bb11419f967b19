"""Component preprocessing inside the handler's edge, for events whose inputs are plain values (no files).

Gradio preprocesses an event's inputs before its handler runs, so an API client that sends `None` to a checkbox
group or a string to a slider got Gradio's bare "The upstream Gradio app has raised an exception" and nothing else.
Such events are bound with `preprocess=False` and this wrapper: each input goes through its component's own
`preprocess` here, and what it refuses becomes a one-line message that names the input and quotes at most ~80
characters of what came. (Events with file inputs keep Gradio's preprocessing: it also checks that a file came from
the upload folder.)
"""

import functools
import inspect
from collections.abc import Callable, Sequence

import gradio as gr

from deit_demo.service import DeitDemoError, quoted


def preprocessed(handler: Callable, components: Sequence[gr.components.Component]) -> Callable:
    """`handler` taking its first len(components) positional inputs raw, as `preprocess=False` hands them over."""

    def values(args: tuple) -> list:
        out = list(args)
        for i, component in enumerate(components):
            try:
                out[i] = component.preprocess(args[i])
            except gr.Error as err:  # Gradio's own words (a value not among the choices), kept short
                message = err.message if len(err.message) <= 200 else err.message[:200] + "…"
                raise gr.Error(f"{_name(component)}: {message}", print_exception=False) from None
            except Exception:
                raise gr.Error(f"{_name(component)} expects {_kind(component)} (got {quoted(args[i])}).",
                               print_exception=False) from None
        return out

    if inspect.isgeneratorfunction(getattr(handler, "func", handler)):
        @functools.wraps(handler)
        def streaming(*args, **kwargs):
            yield from handler(*values(args), **kwargs)
        return streaming

    @functools.wraps(handler)
    def plain(*args, **kwargs):
        return handler(*values(args), **kwargs)
    return plain


def _name(component: gr.components.Component) -> str:
    label = (component.label or "").split(" (")[0]
    return f"The {label!r} input" if label else f"Input {component._id}"


def _kind(component: gr.components.Component) -> str:
    kinds = {gr.CheckboxGroup: "a list of choices", gr.Slider: "a number", gr.Number: "a number",
             gr.Checkbox: "true or false", gr.Dropdown: "one of its choices", gr.Textbox: "text"}
    return next((kind for cls, kind in kinds.items() if isinstance(component, cls)), "another kind of value")


def tome_r_box(value) -> int | None:
    """The r box: empty means the model's default; otherwise a whole number."""
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if number != number or number != int(number):
        raise DeitDemoError(f"The token-merging r must be a whole number (got {quoted(value)}).")
    return int(number)


def budget_box(value, what: str) -> float | None:
    """A budget box: empty (or 0) is no budget; anything else a positive number, or a message quoting what came."""
    text = "" if value is None else str(value).strip()
    if text in ("", "0"):
        return None
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not 0 < number < float("inf"):
        raise DeitDemoError(f"The {what} must be a positive number, or empty for none (got {quoted(text)}).")
    return number
