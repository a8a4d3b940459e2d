"""Interval bound propagation (Gowal et al. 2018, arXiv:1810.12715) and CROWN-IBP's tighter last pass
(Zhang et al., ICLR 2020, arXiv:1906.06316): sound bounds on a model's logits over an L∞ ball.

For an image ``x`` and budget ε the input box is ``[max(x − ε, 0), min(x + ε, 1)]``. IBP pushes the box
through every layer in centre-radius form: an affine layer maps the centre with its weights and the radius
with their absolute values; ReLU and max-pooling are monotone, so they map the ends. The last linear layer
is folded into the margins ``z_y − z_j`` (Gowal et al.'s elision), which is exact for a linear classifier.
CROWN-IBP keeps IBP's bounds on every ReLU's input and goes backward once from the margins, bounding each
ReLU by a line (CROWN's relaxation): exact whenever every ReLU is provably active or inactive; advlab
keeps, per margin, the larger of the two bounds, so it is never looser than IBP. Both are sound: the true margins are
never below the bounds (tests/test_certify.py checks it with hypothesis).

Python::

    from advlab.certify import margin_bounds, verified_accuracy
    lower = margin_bounds(model, x, y, eps=0.1)              # (N, classes): min of z_y - z_j over the ball
    verified = (lower > 0).sum(1) == classes - 1             # proven robust (the j = y entry is 0)

Supported layers: :class:`advlab.models.Normalize`, ``Conv2d`` (zero padding), ``Linear``, ``ReLU``,
``MaxPool2d``, ``AvgPool2d``, ``Flatten``, ``BatchNorm1d/2d`` in eval mode, ``Identity`` and ``Dropout`` in
eval mode; CROWN-IBP all but the pooling layers. A network is walked as a sequence: ``nn.Sequential``
nesting, or a module with an ``as_sequence()`` method giving its layers in order (advlab's own networks
have one). Anything else is refused, naming the layer.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from advlab.certify.registry import Option, register_certifier
from advlab.errors import AdvlabError


class UnsupportedLayer(AdvlabError):
    """A layer interval bounds cannot go through (a residual block, an attention layer, ...)."""


_AFFINE = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, nn.Identity, nn.Dropout)
_MONOTONE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d)


def sequence(model: nn.Module, path: str = "model") -> list[tuple[str, nn.Module]]:
    """The layers of ``model`` in order, each with its path (``model.1.features.0``), or UnsupportedLayer."""
    from advlab.models import Normalize

    if isinstance(model, nn.Sequential):
        return [item for name, child in model.named_children() for item in sequence(child, f"{path}.{name}")]
    if callable(getattr(type(model), "as_sequence", None)):
        return [item for i, child in enumerate(model.as_sequence()) for item in sequence(child, f"{path}[{i}]")]
    if isinstance(model, (*_AFFINE, *_MONOTONE, Normalize)):
        _check_supported(model, path)
        return [(path, model)]
    raise UnsupportedLayer(
        f"interval bounds cannot go through {path} ({type(model).__name__}): supported are "
        "Normalize, Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten, BatchNorm (eval mode), "
        "Identity and Dropout (eval mode), in a sequence"
    )


def _check_supported(layer: nn.Module, path: str) -> None:
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)) and layer.training:
        raise UnsupportedLayer(
            f"{path} ({type(layer).__name__}) is in train mode: its output depends on the "
            "batch, so no bound holds per example; put the model in eval mode"
        )
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        raise UnsupportedLayer(f"{path} (Conv2d) pads with {layer.padding_mode!r}; only zero padding is supported")
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)) and getattr(layer, "ceil_mode", False):
        raise UnsupportedLayer(f"{path} ({type(layer).__name__}) uses ceil_mode; it is not supported")


def input_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The L∞ ball of radius ``eps`` around ``x``, intersected with the pixel range [0, 1]."""
    return (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


def _affine_bounds(layer: nn.Module, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from advlab.models import Normalize

    mid, rad = (upper + lower) / 2, (upper - lower) / 2
    if isinstance(layer, nn.Linear):
        mid, rad = F.linear(mid, layer.weight, layer.bias), F.linear(rad, layer.weight.abs())
    elif isinstance(layer, nn.Conv2d):
        mid = layer(mid)
        rad = F.conv2d(rad, layer.weight.abs(), None, layer.stride, layer.padding, layer.dilation, layer.groups)
    elif isinstance(layer, Normalize):
        mid, rad = layer(mid), rad / layer.std
    elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = _bn_scale(layer)
        shape = (1, -1) + (1,) * (mid.dim() - 2)
        mid, rad = layer(mid), rad * scale.abs().view(shape)
    else:  # Flatten, Identity, Dropout (eval): the same map for both ends
        return layer(lower), layer(upper)
    return mid - rad, mid + rad


def _bn_scale(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight if layer.weight is not None else torch.ones_like(layer.running_var)
    return weight / torch.sqrt(layer.running_var + layer.eps)


def _propagate(layers, lower, upper) -> Iterator[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """Each layer with the bounds on its input, the bounds after the last one returned at the end."""
    for _, layer in layers:
        yield layer, lower, upper
        if isinstance(layer, nn.ReLU):
            lower, upper = F.relu(lower), F.relu(upper)
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            lower, upper = layer(lower), layer(upper)
        else:
            lower, upper = _affine_bounds(layer, lower, upper)
    yield None, lower, upper


def interval_bounds(model: nn.Module, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """IBP's lower and upper bounds on every logit over the ball (pixels in [0, 1])."""
    *_, (_, lower, upper) = _propagate(sequence(model), *input_box(x, eps))
    return lower, upper


def _margin_rows(last: nn.Linear, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The margins z_y − z_j as rows on the last layer's input: weights (N, C, D) and biases (N, C)."""
    weight = last.weight[y].unsqueeze(1) - last.weight.unsqueeze(0)
    bias = (
        last.bias[y].unsqueeze(1) - last.bias.unsqueeze(0)
        if last.bias is not None
        else torch.zeros(weight.shape[:2], device=weight.device, dtype=weight.dtype)
    )
    return weight, bias


def margin_bounds(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, method: str = "ibp"
) -> torch.Tensor:
    """Lower bounds on ``z_y − z_j`` over the ball, shape (N, classes) (0 at j = y): an example is verified
    when every other entry is positive. ``method``: ``ibp`` or ``crown-ibp`` (tighter, no pooling layers)."""
    if method not in ("ibp", "crown-ibp"):
        raise AdvlabError(f"unknown bound method {method!r}; choose ibp or crown-ibp")
    layers = sequence(model)
    lower, upper = input_box(x, eps)
    ibp = _ibp_margins(layers, lower, upper, y)
    if method == "crown-ibp":  # both are sound, so the larger is too: never looser than IBP alone
        return torch.maximum(_crown_margins(layers, lower, upper, y), ibp)
    return ibp


def _ibp_margins(layers, lower, upper, y) -> torch.Tensor:
    last = layers[-1][1]
    if isinstance(last, nn.Linear):  # Gowal et al.'s elision: the margins straight from the last layer's input
        *_, (_, lower, upper) = _propagate(layers[:-1], lower, upper)
        weight, bias = _margin_rows(last, y)
        mid, rad = (upper + lower) / 2, (upper - lower) / 2
        return torch.einsum("ncd,nd->nc", weight, mid) - torch.einsum("ncd,nd->nc", weight.abs(), rad) + bias
    *_, (_, lower, upper) = _propagate(layers, lower, upper)
    margins = lower.gather(1, y[:, None]) - upper
    return margins.scatter(1, y[:, None], 0.0)


def mixed_margin_bounds(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, crown_weight: float
) -> torch.Tensor:
    """CROWN-IBP training's margin bounds (Zhang et al. 2020): ``β·crown + (1 − β)·ibp`` with β =
    ``crown_weight``, differentiable in the weights through both passes (CROWN's pass skipped at β = 0).
    Shape and meaning as :func:`margin_bounds`; a convex combination of sound bounds is sound."""
    layers = sequence(model)
    lower, upper = input_box(x, eps)
    ibp = _ibp_margins(layers, lower, upper, y)
    if crown_weight <= 0:
        return ibp
    return crown_weight * _crown_margins(layers, lower, upper, y, differentiable=True) + (1 - crown_weight) * ibp


def _crown_margins(layers, lower, upper, y, *, differentiable: bool = False) -> torch.Tensor:
    """CROWN's backward pass from the margins, with IBP's bounds on every ReLU's input; ``differentiable``:
    keep the graph through every layer's transpose, for training."""
    pools = [path for path, layer in layers if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d))]
    if pools:
        raise UnsupportedLayer(f"crown-ibp does not go through pooling layers ({pools[0]}); use --method ibp")
    relu_bounds = {
        id(layer): (lo, hi) for layer, lo, hi in _propagate(layers, lower, upper) if isinstance(layer, nn.ReLU)
    }
    shapes = _shapes(layers, lower)
    # The linear function being bounded: coefficients A (N, K, *shape) on the current layer's output and a
    # constant c (N, K); it starts as the margins' rows on the logits (row j: e_y − e_j).
    eye = torch.eye(shapes[-1][-1], device=lower.device, dtype=lower.dtype)
    a = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    c = torch.zeros(a.shape[:2], device=lower.device, dtype=lower.dtype)
    for index in range(len(layers) - 1, -1, -1):
        layer = layers[index][1]
        if isinstance(layer, nn.ReLU):
            lo, hi = relu_bounds[id(layer)]
            lo, hi = lo.unsqueeze(1), hi.unsqueeze(1)
            active, unstable = lo >= 0, (lo < 0) & (hi > 0)
            slope = torch.where(unstable, hi / (hi - lo).clamp_min(1e-12), active.to(lo.dtype))  # upper line
            lower_slope = torch.where(unstable, (hi > -lo).to(lo.dtype), active.to(lo.dtype))  # CROWN's choice
            positive, negative = a.clamp(min=0), a.clamp(max=0)
            c = c + (negative * torch.where(unstable, -slope * lo, torch.zeros_like(lo))).flatten(2).sum(2)
            a = positive * lower_slope + negative * slope
        else:
            a, c = _affine_backward(layer, a, c, shapes[index], differentiable=differentiable)
    mid, rad = (upper + lower) / 2, (upper - lower) / 2
    return (a * mid.unsqueeze(1)).flatten(2).sum(2) - (a.abs() * rad.unsqueeze(1)).flatten(2).sum(2) + c


def _shapes(layers, lower) -> list[tuple[int, ...]]:
    """The shape of one example at each layer's input, then at the output."""
    shapes = []
    with torch.no_grad():
        out = lower[:1]
        for _, layer in layers:
            shapes.append(tuple(out.shape[1:]))
            out = F.relu(out) if isinstance(layer, nn.ReLU) else layer(out)
    return shapes + [tuple(out.shape[1:])]


def _affine_backward(
    layer: nn.Module, a: torch.Tensor, c: torch.Tensor, in_shape: tuple[int, ...], *, differentiable: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """For an affine layer f(h) = L h + f(0): A·f(h) + c = (Lᵀ A)·h + (c + A·f(0)). Convolutions and linear
    layers by their transpose (a plain differentiable op, for training); any other layer by autograd (with
    ``differentiable``, a graph of its own, so that training's gradient flows through L and A)."""
    n, k = a.shape[:2]
    if isinstance(layer, nn.Linear):
        offset = a @ layer.bias if layer.bias is not None else 0
        return a @ layer.weight, c + offset
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        flat = a.reshape(n * k, *a.shape[2:])
        size = [
            (
                in_shape[d + 1]
                - 1
                - (
                    (flat.shape[d + 2] - 1) * layer.stride[d]
                    - 2 * layer.padding[d]
                    + layer.dilation[d] * (layer.kernel_size[d] - 1)
                )
            )
            for d in (0, 1)
        ]
        back = F.conv_transpose2d(flat, layer.weight, None, layer.stride, layer.padding, size, 1, layer.dilation)
        offset = (a.flatten(3).sum(3) @ layer.bias) if layer.bias is not None else 0
        return back.reshape(n, k, *in_shape), c + offset
    out_shape = a.shape[2:]
    zeros = torch.zeros((n * k, *in_shape), device=a.device, dtype=a.dtype, requires_grad=True)
    with torch.enable_grad():
        image = layer(zeros)
        (grad,) = torch.autograd.grad(image, zeros, a.reshape(n * k, *out_shape), create_graph=differentiable)
    if not differentiable:
        image = image.detach()
    offset = (a * image.reshape(n, k, *out_shape)).flatten(2).sum(2)  # A·f(0)
    return grad.reshape(n, k, *in_shape), c + offset


def verified(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, method: str = "ibp") -> torch.Tensor:
    """Per example: correctly classified at every point of the ball, as the bounds prove (bool)."""
    with torch.no_grad():
        margins = margin_bounds(model, x, y, eps, method=method)
    others = torch.ones_like(margins, dtype=torch.bool).scatter(1, y[:, None], False)
    return ((margins > 0) | ~others).all(1)


def verified_flags(
    model: nn.Module,
    data,
    eps: float,
    *,
    method: str = "ibp",
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per example of ``data`` (an :class:`advlab.data.ImageData` or an ``(x, y)`` pair): verified at ``eps``
    (a CPU bool tensor). The model is bounded in eval mode and handed back in the mode it came in."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if isinstance(data, (tuple, list)):
        x_all, y_all = data
        batches = (
            (x_all[i : i + batch_size].to(device), y_all[i : i + batch_size].to(device))
            for i in range(0, len(y_all), batch_size)
        )
    else:
        batches = data.batches(batch_size, device=device)
    training = model.training
    model.eval()
    try:
        flags = [verified(model, x, y, eps, method=method).cpu() for x, y in batches]
    finally:
        model.train(training)
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


def verified_accuracy(
    model: nn.Module,
    data,
    eps: float,
    *,
    method: str = "ibp",
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> float:
    """The fraction of ``data`` verified at ``eps``: classified correctly at every point of the ball."""
    flags = verified_flags(model, data, eps, method=method, batch_size=batch_size, device=device)
    return float(flags.float().mean()) if len(flags) else 0.0


def worst_case_logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """IBP's worst-case logits for training (Gowal et al.): −(lower bound of z_y − z_j), so that the
    cross-entropy on them with label y bounds the worst-case cross-entropy over the ball from above."""
    return -margin_bounds(model, x, y, eps)


EPS = Option("eps", float, None, "the L∞ budget, e.g. 0.1 or 8/255", low=0.0, high=1.0, required=True)


def _bound_certifier(bound: str) -> Callable[..., dict]:
    """``advlab certify --method BOUND``: clean and verified accuracy at ε (CROWN-IBP with IBP's beside)."""

    def run(model, x, y, *, options, classes, batch_size, seed, device, progress, record) -> dict:
        eps = options["eps"]
        with torch.inference_mode():
            correct = torch.cat(
                [
                    model(x[i : i + batch_size].to(device)).argmax(1).cpu() == y[i : i + batch_size]
                    for i in range(0, len(y), batch_size)
                ]
            )
        result = {"images": len(y), "eps": eps, "clean_accuracy": float(correct.float().mean())}
        proven = torch.zeros_like(correct)
        for method in ("ibp", "crown-ibp") if bound == "crown-ibp" else ("ibp",):
            flags = verified_flags(model, (x, y), eps, method=method, batch_size=batch_size, device=device)
            if (flags & ~correct).any():
                raise AdvlabError(f"internal: {method} verified an example the model misclassifies; please report it")
            key = "verified_accuracy" if method == bound else f"verified_accuracy_{method.replace('-', '_')}"
            result[key] = float(flags.float().mean())
            proven |= flags
        # Which examples a bound proved (either, for crown-ibp): what `advlab certify --cross-check` attacks.
        result["verified_images"] = proven.nonzero().squeeze(1).tolist()
        return result

    return run


def _describe_bound(result: dict) -> str:
    line = (
        f"{result['method']} at eps = {result['eps']:g} on {result['images']} images: clean "
        f"{100 * result['clean_accuracy']:.2f}%, verified {100 * result['verified_accuracy']:.2f}%"
    )
    if "verified_accuracy_ibp" in result:
        line += f" (IBP alone {100 * result['verified_accuracy_ibp']:.2f}%)"
    return line


for _bound, _summary in (
    ("ibp", "interval bound propagation: verified accuracy over the L∞ ball"),
    ("crown-ibp", "CROWN-IBP's tighter bounds, no pooling layers; IBP's beside"),
):
    register_certifier(
        _bound,
        summary=_summary,
        options=(EPS,),
        describe=_describe_bound,
        flags=functools.partial(verified_flags, method=_bound),
    )(_bound_certifier(_bound))


__all__ = [
    "UnsupportedLayer",
    "input_box",
    "interval_bounds",
    "margin_bounds",
    "mixed_margin_bounds",
    "sequence",
    "verified",
    "verified_accuracy",
    "verified_flags",
    "worst_case_logits",
]
