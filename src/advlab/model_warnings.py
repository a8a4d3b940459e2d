"""Model warnings: what is wrong with a model before, and after, any attack runs on it.

In the spirit of AutoAttack's ``checks.py`` and ``flags_doc.md`` (Croce & Hein 2020): a robustness number
is only as good as the model it was measured on, and some models make every gradient attack weak without
being robust. Each is a documented warning (its JSON entry names it as its *flag*) with its numbers; an
evaluation shows them on the command line and keeps them in its JSON and report. A warning is not a verdict
on the model, it says where the number may overstate robustness and what to run instead.

============================  ================================================================================
flag                          what it means, and what to do
============================  ================================================================================
``train-mode``                The model was handed over in train mode. advlab attacks and judges it in eval mode
                              (BatchNorm's running statistics, dropout off) and gives the mode back; if train
                              mode is how it is deployed, its behaviour there is not what was measured.
``probabilities``             Every output row is in [0, 1] and sums to 1: the model ends in a softmax. The
                              cross-entropy of a softmax of probabilities saturates and its gradient vanishes;
                              give the attacks the logits (drop the final softmax).
``zero-gradients``            The input gradient of the loss is exactly zero (or not finite) on some correctly
                              classified images: a gradient attack cannot move them, so their robustness is
                              not measured. Typical of quantizing or thresholding layers and of logits scaled so
                              far that the softmax saturates. Use the gradient-free attack (``square``) and an
                              adaptive attack (BPDA) or a margin/DLR loss.
``randomized``                Two forward passes of the same images in eval mode differ: the model is random.
                              A single attack run sees one draw; use ``--suite rand`` (EOT over draws).
``few-classes``               Fewer than 3 classes: the DLR loss needs 3 (targeted DLR, and so APGD-T, 4);
                              the suites fall back to what the classes allow.
``black-box-beats-white-box`` The gradient-free attack broke images that every gradient attack left robust:
                              the gradients are misleading (masked). Trust the worst case, and attack the model
                              adaptively before believing any gradient attack's number on it.
============================  ================================================================================

Python::

    flags = model_warnings(model, x, y, training=model.training)   # a list of {"flag", "message", "numbers"}

``advlab.evaluate.evaluate`` runs them on the first batch and, after its attacks, adds
``black-box-beats-white-box`` (:func:`black_box_warning`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WARNINGS: tuple[str, ...] = (  # the names each warning's JSON entry has as its "flag"
    "train-mode",
    "probabilities",
    "zero-gradients",
    "randomized",
    "few-classes",
    "black-box-beats-white-box",
)
CHECK_IMAGES = 256  # images of the first batch the checks look at: enough to see a share of 1%, and cheap
PROBABILITY_TOLERANCE = 1e-4  # |row sum − 1| below this, for every row, means the outputs are probabilities
RANDOM_TOLERANCE = 1e-5  # two passes differing by more than this (relative to the logits' scale) are random


class ModelWarning(UserWarning):
    """A model warning, said before ``advlab attack`` or ``certify`` runs on a user's model."""


def returns_probabilities(outputs: torch.Tensor) -> bool:
    """Every row in [0, 1] and summing to 1: the model ends in a softmax (the ``probabilities`` flag)."""
    outputs = outputs.float()
    return (
        bool(((outputs >= 0) & (outputs <= 1)).all())
        and float((outputs.sum(dim=1) - 1).abs().max()) < PROBABILITY_TOLERANCE
    )


def _flag(name: str, message: str, **numbers) -> dict:
    assert name in WARNINGS, name
    return {"flag": name, "message": message, "numbers": numbers}


def _differ(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Two passes' logits differ beyond float noise (RANDOM_TOLERANCE of their scale): the model is random."""
    scale = float(first.abs().max().clamp_min(1e-12))
    return float((first - second).abs().max()) > RANDOM_TOLERANCE * scale


def is_randomized(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether two forward passes of the same images differ (a random defense, dropout left on...): the
    ``randomized`` flag's rule, which the evaluation also uses to judge such a model by several passes."""
    with torch.inference_mode():
        return _differ(model(x).float(), model(x).float())


def model_warnings(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, training: bool) -> list[dict]:
    """The checks that need only the model and some images (pixels in [0, 1], true labels ``y``).

    ``training``: whether the model was in train mode when it was handed over (the caller reads it before
    switching to eval mode). The model must already be in eval mode here; its parameters get no gradient.
    """
    flags = []
    if training:
        flags.append(
            _flag(
                "train-mode",
                "the model was given in train mode; it was attacked and judged in eval "
                "mode (dropout off, BatchNorm running statistics), the mode it got back afterwards",
            )
        )
    x, y = x[:CHECK_IMAGES].detach(), y[:CHECK_IMAGES]
    if x.shape[0] == 0:
        return flags
    with torch.no_grad():
        first, second = model(x).float(), model(x).float()
    classes = first.shape[1]
    if classes < 4:
        flags.append(
            _flag(
                "few-classes",
                f"the model has {classes} classes: the DLR loss needs 3 and APGD-T 4, "
                "so attacks using them are left out or refused",
                classes=classes,
            )
        )
    if returns_probabilities(first):
        rows = first.sum(dim=1)
        flags.append(
            _flag(
                "probabilities",
                "the outputs are probabilities (each row in [0, 1], summing to 1), "
                "not logits: the cross-entropy of their softmax saturates and gradient attacks weaken; "
                "remove the final softmax",
                max_row_error=float((rows - 1).abs().max()),
            )
        )
    difference = float((first - second).abs().max())
    if _differ(first, second):
        flags.append(
            _flag(
                "randomized",
                f"two forward passes of the same images differ (by up to {difference:.3g} "
                "in the logits): the model is random, and one attack run sees one draw; evaluate it with "
                "--suite rand (EOT over draws)",
                max_difference=difference,
            )
        )
    correct = first.argmax(1) == y
    if bool(correct.any()):
        xs = x[correct].clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(F.cross_entropy(model(xs).float(), y[correct], reduction="sum"), xs)
        flat = grad.flatten(1)
        dead = ~torch.isfinite(flat).all(dim=1) | (flat.abs().amax(dim=1) == 0)
        count = int(dead.sum())
        if count:
            flags.append(
                _flag(
                    "zero-gradients",
                    f"the loss's input gradient is zero or not finite on {count} of "
                    f"{len(xs)} correctly classified images: a gradient attack cannot move them; run the "
                    "gradient-free attack (--suite standard includes square) before trusting the number",
                    images=count,
                    of=len(xs),
                )
            )
    return flags


def black_box_warning(broken: int, of: int, eps: float, attack: str) -> dict:
    """``broken`` of ``of`` images that every gradient attack left robust at ``eps`` fell to ``attack``."""
    return _flag(
        "black-box-beats-white-box",
        f"at ε = {eps:g} the gradient-free {attack} broke {broken} of {of} "
        "images that every gradient attack left robust: the gradients mislead (masking); trust the worst "
        "case and try an adaptive attack",
        eps=eps,
        images=broken,
        of=of,
        attack=attack,
    )


__all__ = ["CHECK_IMAGES", "WARNINGS", "ModelWarning", "black_box_warning", "model_warnings", "returns_probabilities"]
