"""A fabricated study run folder (metrics.json + gallery.safetensors) for report tests; no training needed.

    from report_fixture import make_fake_run
    metrics = make_fake_run(tmp_path)            # then advlab.report.build_report(tmp_path)

The numbers are plausible for Fashion-MNIST at ε = 0.1 and follow the schema of
``advlab.study.collect_metrics``; the images are random.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from advlab.files import write_json
from advlab.tensor_files import save_tensors

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
EPS_GRID = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3]
# name -> (label, method, clean, FGSM curve, PGD curve) with accuracies as fractions
MODELS = {
    "standard": (
        "standard",
        "standard",
        0.9083,
        [0.9083, 0.2391, 0.0612, 0.0305, 0.0211, 0.0102],
        [0.9083, 0.0843, 0.0121, 0.0, 0.0, 0.0],
    ),
    "fgsm": (
        "fast FGSM AT",
        "fgsm",
        0.8712,
        [0.8712, 0.7933, 0.7214, 0.5528, 0.3307, 0.1104],
        [0.8712, 0.7641, 0.6650, 0.4023, 0.1530, 0.0210],
    ),
    "pgd": (
        "PGD-10 AT",
        "pgd",
        0.8674,
        [0.8674, 0.8015, 0.7420, 0.5890, 0.3716, 0.1260],
        [0.8674, 0.7835, 0.7100, 0.4412, 0.1827, 0.0340],
    ),
    "trades-b1": (
        "TRADES β=1",
        "trades",
        0.8821,
        [0.8821, 0.7902, 0.6911, 0.5102, 0.2915, 0.0907],
        [0.8821, 0.7713, 0.6420, 0.3815, 0.1402, 0.0150],
    ),
    "trades-b6": (
        "TRADES β=6",
        "trades",
        0.8390,
        [0.8390, 0.7855, 0.7251, 0.5933, 0.3899, 0.1313],
        [0.8390, 0.7707, 0.6980, 0.4520, 0.1911, 0.0388],
    ),
}


# worst case at ε = 0.1 over the study's attacks and the sanity checks' extra ones (below the study's own)
ALL_ATTACKS = {"pgd": 0.7050, "trades-b1": 0.6380}


def _attack(name: str, steps: int) -> dict:
    return {
        "name": name,
        "norm": "linf",
        "steps": steps,
        "restarts": 1,
        "step_ratio": None,
        "random_start": name == "pgd",
        "loss": "ce",
        "targeted": False,
        "targets": None,
        "eot": 1,
        "bpda": False,
    }


def _hyper(name: str, steps: int, eps: float) -> dict:
    return {
        "attack": name,
        "norm": "linf",
        "eps": eps,
        "alpha": eps if name == "fgsm" else 2.5 / steps * eps,
        "steps": 1 if name == "fgsm" else steps,
        "restarts": 1,
        "random_start": name == "pgd",
        "loss": "ce",
        "targeted": False,
    }


def _epochs(clean: float, robust: float, n: int = 4) -> list[dict]:
    return [
        {
            "epoch": e,
            "lr": 1e-3,
            "eps": 0.1,
            "train_loss": 1.2 / e,
            "train_clean_acc": clean * (0.8 + 0.05 * e),
            "train_adv_acc": robust * (0.8 + 0.05 * e),
            "val_clean_acc": clean * (0.8 + 0.05 * e),
            "val_robust_acc": robust * (0.8 + 0.05 * e),
            "val_fgsm_acc": robust * (0.85 + 0.05 * e),
            "seconds": 3.0,
            "val_seconds": 0.5,
        }
        for e in range(1, n + 1)
    ]


def _race_row(
    model,
    label,
    defense,
    clean,
    naive,
    adaptive,
    undefended,
    *,
    oblivious=None,
    flags=(),
    attack="PGD-20 L∞",
    draws=1,
    resists=False,
    near=None,
) -> dict:
    row = {
        "model": model,
        "label": label,
        "defense": defense,
        "clean": clean,
        "naive": naive,
        "adaptive": adaptive,
        "undefended": undefended,
        "adaptive_attack": attack,
        "flags": list(flags),
    }
    if defense is not None:
        row.update(
            oblivious=oblivious,
            verdict_draws=draws,
            resists=resists,
            seconds=1.5,
            naive_unreliable=(
                ["the checks find zero or non-finite gradients through the defense"]
                if "zero-gradients" in flags
                else []
            ),
        )
        if near is not None:
            row["pixels_within_eps_of_threshold"] = near
    return row


# The arms race as the quick preset measures it (numbers in the range benchmarks/results/defenses.json shows).
ARMS_RACE = {
    "eps": 0.1,
    "n": 200,
    "attack": "PGD-20 L∞",
    "eot": 10,
    "inputs": {"n": 200},
    "rows": [
        _race_row("standard", "standard", None, 0.915, 0.024, 0.024, 0.024),
        _race_row(
            "standard",
            "standard",
            {"defense": "jpeg", "quality": 75, "randomized": False},
            0.91,
            0.887,
            0.057,
            0.024,
            oblivious=0.061,
            flags=["zero-gradients"],
            attack="PGD-20 L∞ BPDA",
        ),
        _race_row(
            "standard",
            "standard",
            {"defense": "bits", "bits": 1, "randomized": False},
            0.821,
            0.784,
            0.497,
            0.024,
            oblivious=0.55,
            flags=["zero-gradients"],
            attack="PGD-20 L∞ BPDA",
            resists=True,
            near=0.031,
        ),
        _race_row(
            "standard",
            "standard",
            {"defense": "resize-pad", "min_scale": 0.8, "randomized": True},
            0.86,
            0.101,
            0.085,
            0.024,
            oblivious=0.208,
            flags=["randomized"],
            attack="PGD-20 L∞ EOT-10",
            draws=20,
        ),
        _race_row("pgd", "PGD-10 AT", None, 0.788, 0.63, 0.63, 0.63),
        _race_row(
            "pgd",
            "PGD-10 AT",
            {"defense": "jpeg", "quality": 75, "randomized": False},
            0.787,
            0.784,
            0.637,
            0.63,
            oblivious=0.64,
            flags=["zero-gradients"],
            attack="PGD-20 L∞ BPDA",
        ),
    ],
}


def _top(logits: torch.Tensor) -> tuple[list, list]:
    values, indices = logits.softmax(-1).topk(5, dim=-1)
    return indices.tolist(), values.tolist()


def _fake_explorer(x: torch.Tensor, labels: torch.Tensor, g: torch.Generator) -> tuple[dict, dict]:
    """The explorer's record (as advlab.study.explorer writes it) and images, for every fake model."""
    n, k = len(labels), len(CLASSES)
    tensors = {"x": x, "labels": labels}
    numbers = {
        "attack": "PGD-20 L∞",
        "hyperparameters": [_hyper("pgd", 20, e) for e in EPS_GRID],
        "eps": EPS_GRID,
        "images": list(range(n)),
        "labels": labels.tolist(),
        "top": 5,
        "models": {},
    }
    for name in MODELS:
        tensors[f"{name}.x_adv"] = torch.stack(
            [(x + e * torch.randn(x.shape, generator=g).sign()).clamp(0, 1) for e in EPS_GRID]
        )
        top_classes, top_probs = _top(torch.randn(len(EPS_GRID), n, k, generator=g))
        numbers["models"][name] = {
            "top_classes": top_classes,
            "top_probs": top_probs,
            "predictions": [[row[0] for row in at] for at in top_classes],
        }
    tensors["targeted.x_adv"] = (x[:, None] + 0.2 * torch.randn(n, k, *x.shape[1:], generator=g).sign()).clamp(0, 1)
    top_classes, top_probs = _top(torch.randn(n, k, k, generator=g))
    numbers["targeted"] = {
        "model": "standard",
        "attack": "PGD-50 L∞ targeted",
        "eps": 0.2,
        "hyperparameters": {**_hyper("pgd", 50, 0.2), "targeted": True},
        "top_classes": top_classes,
        "top_probs": top_probs,
        "reached": [[row[t][0] == t for t in range(k)] for row in top_classes],
    }
    return numbers, tensors


def make_fake_run(folder: str | Path, *, n_images: int = 4, gallery: bool = True) -> dict:
    """Write ``metrics.json`` (and ``gallery.safetensors`` unless ``gallery=False``) into ``folder``; return metrics."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = {}
    for name, (label, method, clean, fgsm, pgd) in MODELS.items():
        models[name] = {
            "method": method,
            "label": label,
            "train_config": {"method": method, "epochs": 4, "eps": 0.1},
            "train_seconds": 12.5 if name != "fgsm" else None,  # a model trained before times were kept
            "epochs": _epochs(clean, pgd[2]) if name != "fgsm" else [],
            "clean_accuracy": clean,
            "robust_accuracy": {"FGSM L∞": list(fgsm), "PGD-20 L∞": list(pgd)},
            "worst_case_accuracy": [min(a, b) for a, b in zip(fgsm, pgd)],
            "eval_seconds": 4.0,
            "n_eval": 1000,
            "collapse": None,
            "model_flags": [],
            "certified": {
                "eps": 0.1,
                "n": 1000,
                "verified_method": "ibp",
                "verified_accuracy": 0.0,
                "inputs": {"model": "0123456789abcdef"},
            },
        }
        if name in ALL_ATTACKS:  # the sanity checks' extra attacks found a little more at ε = 0.1
            models[name]["worst_case_all_attacks"] = {
                "eps": 0.1,
                "accuracy": ALL_ATTACKS[name],
                "attacks": ["FGSM L∞", "PGD-20 L∞", "PGD-40×2 L∞", "noise L∞"],
            }
    checks = []
    for name in MODELS:
        passed = name != "fgsm"
        checks.append(
            {
                "model": name,
                "check": "iterative beats single-step",
                "passed": True,
                "status": "pass",
                "detail": "PGD-20 L∞ 50.0% ≤ FGSM L∞ 60.0% at ε = 0.1",
                "numbers": {"PGD-20 L∞": 0.5, "FGSM L∞": 0.6},
            }
        )
        checks.append(
            {
                "model": name,
                "check": "more steps and restarts change little",
                "passed": passed,
                "status": "pass" if passed else "fail",
                "detail": "PGD-40×2 L∞ vs PGD-20 L∞: 2.3 points (< 1 needed)"
                if not passed
                else "PGD-40×2 L∞ vs PGD-20 L∞: 0.2 points (< 1 needed)",
                "numbers": {"PGD-40×2 L∞": 0.4},
            }
        )
    info = {
        "file": "gallery.safetensors",
        "eps": 0.1,
        "attack": "PGD-20 L∞",
        "models": ["standard", "pgd"],
        "targeted_model": "standard",
        "targeted_eps": 0.2,
        "targeted_attack": "PGD-50 L∞ targeted",
        "targets": [(k + 5) % 10 for k in range(n_images)],
        "targeted_hyperparameters": {**_hyper("pgd", 50, 0.2), "targeted": True, "targets": "all others"},
        "inputs": {
            "standard": "0123456789abcdef",
            "pgd": "fedcba9876543210",
            "size": n_images,
            "eps": 0.1,
            "targeted_eps": 0.2,
            "attacks": ["fgsm", "pgd20"],
            "n": 1000,
            "seed": 0,
        },
    }
    metrics = {
        "advlab_version": "0.1.0",
        "created": "2025-01-01T00:00:00Z",
        "preset": "quick",
        "dataset": "fashion-mnist",
        "classes": CLASSES,
        "train_eps": 0.1,
        "eps_grid": EPS_GRID,
        "n_eval": 1000,
        "chance_accuracy": 0.1,
        "headline_attack": "PGD-20 L∞",
        "attacks": {"FGSM L∞": _attack("fgsm", 1), "PGD-20 L∞": _attack("pgd", 20)},
        "attack_hyperparameters": {
            "FGSM L∞": [_hyper("fgsm", 1, e) for e in EPS_GRID],
            "PGD-20 L∞": [_hyper("pgd", 20, e) for e in EPS_GRID],
        },
        "models": models,
        "best_robust_model": "pgd",
        "sanity_checks": checks,
        "arms_race": copy.deepcopy(ARMS_RACE),
        "check_attacks": {
            "PGD-40×2 L∞ (sanity check)": {**_hyper("pgd", 20, 0.1), "steps": 40, "restarts": 2},
            "noise L∞ (sanity check)": {**_hyper("noise", 1, 0.1), "alpha": None, "steps": 0, "random_start": False},
            "PGD-20 L∞ transfer (sanity check)": _hyper("pgd", 20, 0.1),
        },
    }
    if gallery:
        metrics["gallery"] = info
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n_images, 1, 28, 28, generator=g)
        labels = torch.arange(n_images) % 10
        tensors = {"x": x, "labels": labels}
        for name in info["models"] + ["targeted"]:
            eps = 0.2 if name == "targeted" else 0.1
            tensors[f"{name}.x_adv"] = (x + eps * torch.randn(x.shape, generator=g).sign()).clamp(0, 1)
            tensors[f"{name}.logits_clean"] = torch.randn(n_images, 10, generator=g)
            tensors[f"{name}.logits_adv"] = torch.randn(n_images, 10, generator=g)
        tensors["targeted.targets"] = torch.tensor(info["targets"])
        save_tensors(folder / "gallery.safetensors", tensors, metadata={"gallery": json.dumps(info)})
        metrics["explorer"], explorer = _fake_explorer(x, labels, g)
        save_tensors(folder / "explorer.safetensors", explorer)
    write_json(folder / "metrics.json", metrics)
    return metrics
