"""The study's certified stage: what each model can be proven to withstand, beside what attacks
measured.

For every model, on the study's test images at the training ε: the IBP-verified accuracy
(:func:`advlab.certify.verified_flags`; ``None``, with the reason, for a network interval bounds cannot go
through). For a model trained with Gaussian noise (``method = "gaussian"``), also randomized smoothing's
CERTIFY on the first ``smoothing_images`` images at that model's σ: certified accuracy against L2 radius.
A verified accuracy above the empirical worst case of the same images, or a single image both verified and
broken, is impossible for a sound bound and a correct attack, so :func:`check_certified_below_empirical`
makes it an error, never a figure.
"""

from __future__ import annotations

import sys

from torch import nn

from advlab.certify import UnsupportedLayer, get_certifier
from advlab.certify.smoothing import certify_dataset
from advlab.errors import Contradiction
from advlab.runtime import Runtime


def certified_numbers(
    model: nn.Module,
    test,
    *,
    eps: float,
    label: str,
    smoothing: dict | None,
    runtime: Runtime,
    progress: bool,
    verifier: str = "ibp",
) -> dict:
    """``{"eps", "n", "verified_accuracy", "verified_method", "unsupported"?, "smoothing"?}`` for one model;
    ``verifier``: the registered certifier that verifies its examples (:mod:`advlab.certify.registry`);
    ``smoothing``: ``{"sigma", "n", "n0", "alpha", "images"}`` for a noise-trained model, else None."""
    if progress:
        print(f"[study] certifying {label}", file=sys.stderr, flush=True)
    result: dict = {"eps": eps, "n": len(test), "verified_method": verifier}
    try:
        flags = get_certifier(verifier).flags(model, test, eps, device=runtime.device)
        result["verified_accuracy"] = float(flags.float().mean())
        result["verified_images"] = flags.nonzero().squeeze(1).tolist()
    except UnsupportedLayer as err:
        result["verified_accuracy"], result["unsupported"] = None, str(err)
    if smoothing is not None:
        x, y = test.subset(min(smoothing["images"], len(test))).tensors()
        certified = certify_dataset(
            model,
            x,
            y,
            sigma=smoothing["sigma"],
            n=smoothing["n"],
            n0=smoothing["n0"],
            alpha=smoothing["alpha"],
            classes=len(test.info.classes),
            seed=0,
            progress=progress,
        )
        result["smoothing"] = certified.to_dict()
    return result


def check_certified_below_empirical(
    name: str,
    verified: float | None,
    empirical: float | None,
    *,
    verified_images: list[int] | None = None,
    robust_images: list[int] | None = None,
) -> None:
    """Refuse a verified accuracy above the empirical robust accuracy on the same images, and, example by
    example, an image the bound proved robust that an attack broke: one of the two is wrong (an unsound
    bound or a broken attack), and neither number may be shown."""
    if verified_images is not None and robust_images is not None:
        broken = sorted(set(verified_images) - set(robust_images))
        if broken:
            shown = ", ".join(map(str, broken[:5])) + (", ..." if len(broken) > 5 else "")
            raise Contradiction(
                f"model {name}: {len(broken)} images its bound verified were broken by the study's attacks "
                f"(image {shown}), which a sound bound and a correct attack cannot give; please report it"
            )
    if verified is not None and empirical is not None and verified > empirical + 1e-9:
        raise Contradiction(
            f"model {name}: its IBP-verified accuracy ({verified:.4f}) is above its empirical "
            f"robust accuracy ({empirical:.4f}) on the same images, which a sound bound and a "
            "correct attack cannot give; please report it"
        )


__all__ = ["certified_numbers", "check_certified_below_empirical"]
