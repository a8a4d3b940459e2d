"""The arms race: preprocessing defenses that look robust, the adaptive attacks that break them.

The standard model and the study's most robust adversarially trained model each go behind every defense
of the study's ``defenses`` (:mod:`advlab.defenses`), and on the first ``arms_race_n`` test images at the
training ε each is measured five ways:

* **clean** accuracy behind the defense;
* **oblivious**: the attack made on the undefended model, then passed through the defense (a transfer);
* **naive**: the white-box attack with the gradient autograd gives through the defense (zero through
  rounding, none at all through Pillow's JPEG codec): the evaluation such defenses fooled;
* **adaptive**: BPDA (the identity on the backward pass) through a deterministic defense, EOT (the gradient
  averaged over ``arms_race_eot`` draws) through a randomized one (Athalye, Carlini & Wagner 2018);
* the **undefended** model under the same attack, the number the adaptive one is held against.

A naive number is marked unreliable when the model checks flag the defended model (zero or NaN gradients,
a random forward pass) or the oblivious attack, a black-box one, beats it. A defense whose adaptive robust
accuracy stays well above the undefended model's (``RESISTS`` points) is said to resist, with the reason
where one can be computed: for bit-depth reduction, how few pixels lie within ε of a rounding threshold.
A randomized defended model is judged, clean and attacked alike, on 20 passes: its figures are the expected
accuracy over the draws (:mod:`advlab.tally`).
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from advlab.attacks import parse_attack
from advlab.defenses import defend, parse_defense
from advlab.evaluate import evaluate, transfer_flags
from advlab.runtime import Runtime

RESISTS = 0.10  # adaptive robust accuracy this far above the undefended model's: the defense resists


def adaptive_name(attack: str, randomized: bool, eot: int) -> str:
    """The adaptive form of ``attack`` for a defense: EOT through a randomized one, BPDA otherwise."""
    return f"{attack}-eot{eot}" if randomized else f"{attack}-bpda"


def pixels_near_threshold(x: torch.Tensor, bits: int, eps: float) -> float:
    """The fraction of pixels that an L∞ perturbation of ``eps`` can move across a rounding threshold of
    ``bits``-bit depth reduction: the only pixels such a perturbation can change after the defense."""
    levels = 2**bits - 1
    scaled = x * levels
    distance = (scaled - torch.floor(scaled) - 0.5).abs() / levels  # to the nearest threshold (k + ½) / levels
    return float((distance < eps).float().mean())


def measure_arms_race(
    models: dict[str, nn.Module],
    names: list[str],
    labels: dict[str, str],
    test,
    *,
    defenses: list[str],
    attack: str,
    eot: int,
    eps: float,
    n: int,
    seed: int,
    runtime: Runtime,
    progress: bool,
) -> dict:
    """The rows of the arms race for the models ``names`` (see the module's docstring); JSON-ready."""
    data = test.subset(min(n, len(test)))
    base = parse_attack(attack)
    x, _ = data.tensors()
    if progress:
        print(
            f"[study] arms race: {', '.join(labels[n] for n in names)} behind {len(defenses)} defenses, "
            f"{len(data)} test images",
            file=sys.stderr,
            flush=True,
        )
    rows = []
    for name in names:
        model = models[name]
        bare = evaluate(model, data, attacks=[base], eps=[eps], seed=seed, progress=False, runtime=runtime)
        undefended = bare.robust[base.label][0]
        rows.append(
            {
                "model": name,
                "label": labels[name],
                "defense": None,
                "clean": bare.clean_accuracy,
                "naive": undefended,
                "adaptive": undefended,
                "undefended": undefended,
                "adaptive_attack": base.label,
                "flags": [f["flag"] for f in bare.model_warnings],
            }
        )
        for text in defenses:
            start = time.perf_counter()
            defense = parse_defense(text)
            guarded = defend(model, [defense])
            adaptive = parse_attack(adaptive_name(attack, defense.randomized, eot))
            result = evaluate(
                guarded, data, attacks=[base, adaptive], eps=[eps], seed=seed, progress=False, runtime=runtime
            )
            oblivious = transfer_flags(guarded, model, data, attack=base, eps=eps, seed=seed, runtime=runtime)
            row = {
                "model": name,
                "label": labels[name],
                "defense": defense.describe(),
                "clean": result.clean_accuracy,
                "oblivious": float(oblivious.float().mean()),
                "naive": result.robust[base.label][0],
                "adaptive": result.robust[adaptive.label][0],
                "undefended": undefended,
                "adaptive_attack": adaptive.label,
                "flags": sorted({f["flag"] for f in result.model_warnings}),
                "verdict_draws": result.draws,
            }
            row["naive_unreliable"] = _unreliable(row)
            row["resists"] = row["adaptive"] - undefended >= RESISTS
            if defense.name == "bits":
                row["pixels_within_eps_of_threshold"] = pixels_near_threshold(x, defense.bits, eps)
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            if progress:
                print(
                    f"[study] arms race: {labels[name]} behind {text}: naive {row['naive']:.1%}, adaptive "
                    f"{row['adaptive']:.1%} (undefended {undefended:.1%})",
                    file=sys.stderr,
                    flush=True,
                )
    return {"eps": eps, "n": len(data), "attack": base.label, "eot": eot, "rows": rows}


def _unreliable(row: dict) -> list[str]:
    """Why the naive number of a row cannot be trusted (empty: no check says so)."""
    reasons = []
    if "zero-gradients" in row["flags"]:
        reasons.append("the checks find zero or non-finite gradients through the defense")
    if "randomized" in row["flags"]:
        reasons.append("the defended model is random: one pass's gradient is one draw")
    if row["oblivious"] < row["naive"]:
        reasons.append(f"the oblivious (black-box) attack beats it ({row['oblivious']:.1%} < {row['naive']:.1%})")
    return reasons


__all__ = ["RESISTS", "adaptive_name", "measure_arms_race", "pixels_near_threshold"]
