"""Input-preprocessing defenses: modules placed in front of a model, so every attack and evaluation takes
the defended model like any other ``nn.Module``::

    from advlab.defenses import defend, parse_defense
    defended = defend(model, [parse_defense("jpeg:quality=75"), parse_defense("bits:bits=4")])
    evaluate(defended, data, attacks=[parse_attack("pgd50-bpda")], eps=[0.1])

From the command line: ``advlab evaluate RUN --defense jpeg:quality=75 --attack pgd50-bpda --eps 0.1``.

=================  ===========================================================================================
defense            what it does (its gradient through autograd)
=================  ===========================================================================================
``bits:bits=B``    bit-depth reduction to B bits per channel, B in 1–8 (feature squeezing, Xu et al. 2018);
                   rounding: zero gradient almost everywhere
``jpeg:quality=Q`` JPEG compression and decompression through Pillow's codec, Q in 1–100 (Guo et al. 2018);
                   computed outside autograd: no gradient at all
``median:size=K``  a K × K median filter, K odd (spatial smoothing); differentiable (the median's pixel)
``resize-pad``     a random resize to between ``min_scale`` and 1 of the image, padded back to its size at a
                   random place (in the manner of Xie et al. 2018); randomized, differentiable
=================  ===========================================================================================

Each is a :class:`Preprocessing`: the real transform on the forward pass, and under BPDA (Athalye et al.
2018, the ``-bpda`` attack option, :func:`advlab.attacks.adaptive.straight_through`) the identity on the
backward pass. Attacking a defense with the gradient autograd gives is the *naive* evaluation that such
defenses fooled; the model checks flag its zero gradients.
"""

from __future__ import annotations

from torch import nn

from advlab.defenses.transforms import DEFENSES, Preprocessing, defense_help, parse_defense, register_defense

__all__ = ["DEFENSES", "Preprocessing", "defend", "defense_help", "describe", "parse_defense", "register_defense"]


def defend(model: nn.Module, defenses: list[Preprocessing]) -> nn.Module:
    """``model`` with ``defenses`` applied to its input, first to last (the model itself is not copied)."""
    if not defenses:
        return model
    return nn.Sequential(*defenses, model).train(model.training)  # in the mode the model was handed over in


def describe(defenses: list[Preprocessing]) -> list[dict]:
    """Each defense's name and parameters, as a defended evaluation records them."""
    return [d.describe() for d in defenses]
