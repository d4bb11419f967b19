"""Tools for agents (MCP) and API clients: classification and the read-only catalog. Convert and benchmark are not
tools: they take the server's CPUs for minutes. No `from __future__ import annotations`: Gradio derives each tool's
schema from these type hints and its description from the docstring."""

from deit_demo.app.handlers import boundary
from deit_demo.present.report import weights_banner
from deit_demo.service import MODELS, VARIANTS, DeitDemoError, Lab, quoted


def _agent_image(image: str):
    """An agent's image: a bundled example's file name, an http(s) URL (fetched safely), or a data: URI. Never a
    path on the server: an agent must not be able to probe the server's files."""
    import base64

    text = (image or "").strip()
    examples = {p.name: p for spec in MODELS.values() for p in spec.example_paths()}
    if text in examples:
        return examples[text]
    if text.startswith(("http://", "https://")):
        return text
    if text.startswith("data:image/") and ";base64," in text:
        try:
            return base64.b64decode(text.split(";base64,", 1)[1], validate=True)
        except ValueError:
            raise DeitDemoError("The data: URI is not valid base64.") from None
    raise DeitDemoError("Give an http(s) image URL, a data:image/...;base64 URI, or a bundled example's name "
                        f"({', '.join(sorted(examples))}).")


@boundary("Classification")
def classify_image(lab: Lab, image: str, model: str = "deit_base", variant: str = "auto", top_k: int = 5) -> dict:
    """Classify one image with a DeiT vision transformer and return its top-k labels.

    Args:
        image: the picture: an http(s) URL, a data:image/...;base64 URI, or the file name of a bundled example
            (for instance "chelsea_cat.jpg").
        model: a catalog key from list_models (default "deit_base"; "deit_synth" is trained here on textures).
        variant: "auto" for the fastest variant on this server that gave the original's answers on its check
            inputs (the original until that one is ready), "original" for eager fp32, or a variant key such as
            "onnx_int8" or "pt2e_int8" (converted on first use; must pass its answer check).
        top_k: how many labels to return per head, from 1 to 20.

    Returns:
        A dict with the model, variant, where the weights came from ("hub", "checkpoint:...", or "random", in which
        case the labels are meaningless), the forward-pass time in ms, and per head (a single "logits" head, or
        "class", "distillation" and "average" for distilled models) the top-k labels with probabilities.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 20:
        raise DeitDemoError(f"top_k must be a whole number from 1 to 20 (got {quoted(top_k)}).")
    loaded, result = lab.classify(_agent_image(image), model, variant or "auto", k=top_k)
    return {"model": result.model, "variant": result.variant, "how_chosen": result.note, "weights": result.weights,
            "weights_note": weights_banner(loaded, markdown=False), "elapsed_ms": round(result.elapsed_ms, 2),
            "heads": {head: [{"label": p.label, "index": p.index, "probability": round(p.prob, 6)} for p in preds]
                      for head, preds in result.heads.items()}}


@boundary("Listing the catalog")
def list_models(lab: Lab) -> list:
    """The DeiT model catalog (read-only): what classify_image accepts as `model`.

    Returns:
        One dict per model: key, label, family, parameter count, input size in pixels, whether it has a distillation
        token, its top-1 and top-5 ImageNet accuracy in percent (published; measured here for the models trained
        here) with their source, and the deployment variants available on this server.
    """
    available = [key for key, v in VARIANTS.items() if v.available()[0]]
    return [{"key": s.key, "label": s.label, "family": s.family, "params": s.params, "input_size": s.input_size,
             "distilled": s.distilled, "top1": s.top1, "top5": s.top5, "accuracy_source": s.accuracy_source,
             "variants": available} for s in MODELS.values()]
