"""The variant registry (like timm's `_registry.py`): keys to instances, lookups, and parsing of key lists."""

from __future__ import annotations

from collections.abc import Iterable

from deit_demo.core.errors import DeitDemoError, quoted
from deit_demo.variants.base import Variant

VARIANTS: dict[str, Variant] = {}
# The model as trained, run eagerly: every other variant is checked and timed against it, and it always serves.
ORIGINAL = "original"


def register(cls: type[Variant]) -> type[Variant]:
    """Class decorator: one instance per variant, under its key, in registration order (the order of tables)."""
    VARIANTS[cls.key] = cls()
    return cls


def get_variant(key: str) -> Variant:
    try:
        return VARIANTS[key]
    except (KeyError, TypeError):
        raise DeitDemoError(f"Unknown variant {quoted(key)}. Choose from: {', '.join(VARIANTS)}.") from None


def parse_variant_keys(text: str | Iterable[str]) -> list[str]:
    """``all`` or a comma list -> registry keys in registry order (``original`` always first)."""
    keys = [k.strip() for k in (text.split(",") if isinstance(text, str) else text) if k and k.strip()]
    if not keys:
        raise DeitDemoError(f"Choose at least one variant ({', '.join(VARIANTS)}, or all).")
    if keys == ["all"]:
        return list(VARIANTS)
    for key in keys:
        get_variant(key)
    return [ORIGINAL] + [k for k in VARIANTS if k in keys and k != ORIGINAL]
