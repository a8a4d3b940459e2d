"""Adaptive attacks on defenses that hide the gradient (Athalye, Carlini & Wagner, ICML 2018).

* **BPDA** (Backward Pass Differentiable Approximation): while an attack runs with the ``-bpda`` option
  (``pgd50-bpda``, ``apgd-ce-bpda``), every preprocessing module of the model that supports it (an
  attribute ``straight_through``, as :class:`advlab.defenses.Preprocessing` has) computes its real
  transform on the forward pass and the identity on the backward pass.
* **EOT** (Expectation over Transformation): ``-eotK`` averages each step's gradient over K passes of a
  randomized model (:func:`advlab.attacks.loop.perturb`, APGD).

Both together: ``pgd50-bpda-eot20``. The verdict on each example is always the model's own forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


def bpda_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that have a BPDA mode (an attribute ``straight_through``)."""
    return [m for m in model.modules() if isinstance(getattr(m, "straight_through", None), bool)]


@contextlib.contextmanager
def straight_through(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, the model's preprocessing passes the gradient straight through (BPDA); yields how
    many modules switched (0: the model has nothing to approximate, and BPDA is the plain attack)."""
    modules = bpda_modules(model) if enabled else []
    before = [m.straight_through for m in modules]
    for m in modules:
        m.straight_through = True
    try:
        yield len(modules)
    finally:
        for m, value in zip(modules, before):
            m.straight_through = value


__all__ = ["bpda_modules", "straight_through"]
