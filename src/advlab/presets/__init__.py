"""The configurations that ship inside the package: ``study/NAME.toml`` and ``train/NAME.toml``.

Read with :mod:`importlib.resources`, so they are found the same way from a source checkout, an
editable install or a wheel installed anywhere::

    advlab study --preset quick --out runs/quick        # study/quick.toml
    advlab train --preset quick --out runs/train-quick   # train/quick.toml

Python: ``preset_text("study", "quick")``; ``preset_names("train")``. To start a config of your own, copy
one out: ``advlab study --show-preset quick > mine.toml`` (likewise ``advlab train --show-preset``).
"""

from __future__ import annotations

from importlib import resources

from advlab.errors import AdvlabError

KINDS = ("study", "train")


def _folder(kind: str):
    if kind not in KINDS:
        raise ValueError(f"preset kind must be one of {KINDS}, got {kind!r}")
    return resources.files(__name__).joinpath(kind)


def preset_names(kind: str) -> list[str]:
    """The names of the shipped presets of ``kind`` ("study" or "train"), sorted."""
    return sorted(entry.name[: -len(".toml")] for entry in _folder(kind).iterdir() if entry.name.endswith(".toml"))


def preset_text(kind: str, name: str) -> str:
    """The TOML text of preset ``name``; an AdvlabError that lists the known ones if there is none."""
    entry = _folder(kind).joinpath(f"{name}.toml")
    if not name or "/" in name or not entry.is_file():
        known = ", ".join(preset_names(kind)) or "none found"
        raise AdvlabError(f"unknown {kind} preset {name!r}; choose one of: {known}")
    return entry.read_text(encoding="utf-8")
