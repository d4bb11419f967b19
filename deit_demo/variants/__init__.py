"""Deployment variants: one small class each, registered by key (like timm's ``@register_model``), and the one way a
variant becomes usable (`pipeline`: convert or reuse, verified load, answers checked; `converter`: the child process a
server converts in; `tome_merge`: the token-merging transform).

May import `deit_demo.core` and `deit_demo.train` only. Family modules import `base` and `registry`, never this package.

This module only gathers: the base classes live in `base`, the registry in `registry`, and each family module
registers its variants on import. Registration order is the order of tables and charts: the tutorial's pipeline
first, then its successors. Adding a variant is one class plus ``@register`` in a family module.
"""

# Importing a family module registers its variants; this order is the order of tables and charts.
from deit_demo.variants import torchscript  # noqa: F401  isort: skip
from deit_demo.variants import executorch  # noqa: F401  isort: skip
from deit_demo.variants import onnx  # noqa: F401  isort: skip
from deit_demo.variants import compiled  # noqa: F401  isort: skip
from deit_demo.variants import openvino  # noqa: F401  isort: skip
from deit_demo.variants import tome  # noqa: F401  isort: skip
from deit_demo.variants import web  # noqa: F401  isort: skip
from deit_demo.variants.base import MAX_BATCH, Runner, Variant, VariantContext
from deit_demo.variants.registry import ORIGINAL, VARIANTS, get_variant, parse_variant_keys, register

__all__ = ["MAX_BATCH", "ORIGINAL", "Runner", "Variant", "VariantContext", "VARIANTS", "get_variant",
           "parse_variant_keys", "register"]
