"""The small pieces of the report's HTML: escaping, numbers, inlined images, lists in words."""

from __future__ import annotations

import base64
import html
from typing import Any


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def number(value: Any, digits: str = ".4g") -> str:
    return "—" if value is None else format(value, digits) if isinstance(value, (int, float)) else escape(value)


def image(data: bytes, alt: str, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img src="{uri}" alt="{escape(alt)}"><figcaption>{caption}</figcaption></figure>'


def in_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def at(series: list | None, i: int) -> float | None:
    return series[i] if series and len(series) > i else None


__all__ = ["at", "escape", "image", "in_words", "number"]
