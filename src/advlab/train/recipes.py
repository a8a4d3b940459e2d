"""Recipes: the default training settings of each data set and method, each from its source.

A setting a user leaves out of a :class:`~advlab.train.config.TrainConfig` (``None``) is taken from the
recipe of its data set and method, so ``advlab train --dataset mnist --method fgsm --eps 0.3`` trains Wong
et al.'s MNIST network the way they did, not a Fashion-MNIST setting that collapses there. A setting the
user gives always wins. The run's ``config.json`` names the recipe and holds every resolved value::

    from advlab.train.recipes import find_recipe
    find_recipe("mnist", "fgsm").name        # 'mnist-wong'
    advlab train --list-recipes              # the table, with sources

Values are numbers or functions of ε (a step size or a regularizer weight that scales with the budget).
Settings no recipe names come from :data:`BASE`, advlab's own Fashion-MNIST recipe. The CIFAR-10 recipes
train on random 4-pixel-padded crops and horizontal flips, as every paper below does
(:mod:`advlab.data.augment`, tensor ops on the training device). The CIFAR-10 and MNIST recipes have not
been run to the end on advlab's machines (no offline copy of either data set there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

# The settings a recipe decides. Every other TrainConfig field has one default for every data set.
RECIPE_KEYS = ("model", "optimizer", "lr", "schedule", "epochs", "batch_size", "momentum", "weight_decay",
               "eps_warmup_epochs", "clean_epochs", "steps", "alpha", "grad_align_lambda", "augment")

# advlab's own recipe (issue 3, measured on Fashion-MNIST at ε = 0.1 in BENCHMARKS.md), and the value of
# any setting a recipe below leaves out. alpha None: the method's own rule (fgsm 1.25ε, nfgsm ε, ...).
BASE: dict[str, Any] = {
    "model": "small_cnn", "optimizer": "adam", "lr": 0.002, "schedule": "onecycle", "epochs": 10,
    "batch_size": 128, "momentum": 0.9, "weight_decay": 0.0, "eps_warmup_epochs": 0.0, "clean_epochs": 0.0,
    "steps": 7, "alpha": None,
    # GradAlign's λ: the paper's CIFAR-10 value at its standard ε = 8/255. Neither paper nor code gives one
    # for 28×28 images; it is a starting point, not a tuned value.
    "grad_align_lambda": 0.2,
    "augment": "none",  # 28×28 digits and clothes: the papers train on them as they are
}

FAST = frozenset({"standard", "fgsm", "nfgsm", "gradalign", "free"})
MULTI_STEP = frozenset({"pgd", "trades", "mart"})


@dataclass(frozen=True)
class Recipe:
    """Default settings for some methods on one data set, and where they come from."""

    name: str
    dataset: str
    methods: frozenset[str]
    settings: Mapping[str, Any] = field(default_factory=dict)  # values or functions of ε
    source: str = ""

    def values(self, eps: float) -> dict[str, Any]:
        """Every recipe setting at budget ``eps``: this recipe's, else BASE's."""
        merged = {**BASE, **self.settings}
        return {key: value(eps) if callable(value) else value for key, value in merged.items()}


def _cifar_grad_align_lambda(eps: float) -> float:
    """Andriushchenko & Flammarion's λ for CIFAR-10 (sh/exps_diff_eps_cifar10.sh): 0.02·10^(ε/8), ε in
    1/255 units: 0.2 at 8/255, 2.0 at 16/255."""
    return 0.02 * 10 ** (eps * 255 / 8)


RECIPES: tuple[Recipe, ...] = (
    Recipe("fashion-mnist", "fashion-mnist", FAST | MULTI_STEP,
           {"eps_warmup_epochs": lambda eps: 3.0 if eps > 0.15 else 0.0},
           "advlab (issue 3): small_cnn, Adam one-cycle peak 0.002, 10 epochs, batch 128, measured at ε = 0.1 "
           "(BENCHMARKS.md); above ε = 0.15, ε ramps up over the first 3 epochs (at most half the run), as "
           "Andriushchenko & Flammarion and de Jorge et al. ramp ε on SVHN: without it PGD-10 training at "
           "ε = 0.3 stayed at chance (benchmarks/bench_fast_at_grid.py)"),
    Recipe("fashion-mnist-ibp", "fashion-mnist", frozenset({"ibp"}),
           {"model": "wong_mnist", "optimizer": "adam", "lr": 0.001, "schedule": "piecewise", "epochs": 30,
            "batch_size": 100, "clean_epochs": 1.0, "eps_warmup_epochs": 10.0},
           "Gowal et al. 2018 (IBP) scaled to a CPU: Wong & Kolter's small certified-training network "
           "(conv16-conv32, stride 2, fc100; no pooling), Adam 1e-3 ÷10 at half and again at three quarters, "
           "batch 100, one clean epoch, then ε ramped linearly over 10 epochs while κ falls from 1 to 0.5"),
    Recipe("mnist-wong", "mnist", FAST,
           {"model": "wong_mnist", "optimizer": "adam", "lr": 0.005, "schedule": "onecycle", "epochs": 10,
            "batch_size": 100},
           "Wong, Rice & Kolter 2020 (MNIST/train_mnist.py): their 2-conv network, Adam, cyclic lr peaking at "
           "0.005 at 2/5 of training, 10 epochs, batch 100, FGSM α = 1.25ε (0.375 at ε = 0.3); N-FGSM and "
           "GradAlign have no MNIST setting of their own and use this one"),
    Recipe("mnist-madry", "mnist", MULTI_STEP,
           {"model": "madry_cnn", "optimizer": "adam", "lr": 1e-4, "schedule": "constant", "epochs": 83,
            "batch_size": 50, "steps": 40, "alpha": lambda eps: eps / 30},
           "Madry et al. 2018 (mnist_challenge/config.json): conv32-conv64-fc1024, PGD-40 with α = 0.01 at "
           "ε = 0.3, Adam 1e-4, 100,000 steps of batch 50 (83 epochs)"),
    Recipe("cifar10-wong", "cifar10", frozenset({"standard", "fgsm", "free"}),
           {"model": "preact_resnet18", "optimizer": "sgd", "lr": 0.2, "schedule": "triangle", "epochs": 15,
            "batch_size": 128, "momentum": 0.9, "weight_decay": 5e-4, "augment": "crop-flip"},
           "Wong, Rice & Kolter 2020 (CIFAR10/train_fgsm.py): PreActResNet-18, SGD momentum 0.9, weight "
           "decay 5e-4, cyclic lr 0 → 0.2 → 0 peaking half-way, 15 epochs, batch 128, α = 1.25ε (10/255)"),
    Recipe("cifar10-nfgsm", "cifar10", frozenset({"nfgsm"}),
           {"model": "preact_resnet18", "optimizer": "sgd", "lr": 0.2, "schedule": "triangle", "epochs": 30,
            "batch_size": 128, "momentum": 0.9, "weight_decay": 5e-4, "augment": "crop-flip"},
           "de Jorge et al. 2022 (N-FGSM train.py): PreActResNet-18, SGD, cyclic lr peak 0.2 half-way, "
           "30 epochs, noise k = 2, α = ε"),
    Recipe("cifar10-gradalign", "cifar10", frozenset({"gradalign"}),
           {"model": "preact_resnet18", "optimizer": "sgd", "lr": 0.3, "schedule": "onecycle", "epochs": 30,
            "batch_size": 128, "momentum": 0.9, "weight_decay": 5e-4, "grad_align_lambda": _cifar_grad_align_lambda,
            "augment": "crop-flip"},
           "Andriushchenko & Flammarion 2020 (sh/exps_diff_eps_cifar10.sh): PreActResNet-18, SGD, cyclic lr "
           "peak 0.3 at 2/5, 30 epochs, FGSM from x, λ = 0.02·10^(ε·255/8)"),
    Recipe("cifar10-rice", "cifar10", MULTI_STEP,
           {"model": "preact_resnet18", "optimizer": "sgd", "lr": 0.1, "schedule": "piecewise", "epochs": 200,
            "batch_size": 128, "momentum": 0.9, "weight_decay": 5e-4, "steps": 10, "alpha": lambda eps: eps / 4,
            "augment": "crop-flip"},
           "Rice, Wong & Kolter 2020: PreActResNet-18, PGD-10 with α = 2/255 at ε = 8/255, SGD 0.1 ÷10 at "
           "epochs 100 and 150 of 200; keep the best checkpoint (advlab's best.safetensors)"),
)


def find_recipe(dataset: str, method: str) -> Recipe:
    """The recipe of ``dataset`` (canonical name) and ``method``; advlab's base recipe for other pairs."""
    for recipe in RECIPES:
        if recipe.dataset == dataset and method in recipe.methods:
            return recipe
    return Recipe("base", dataset, frozenset({method}), {},
                  "advlab's Fashion-MNIST defaults (no recipe for this data set and method)")


def recipe_table() -> str:
    """The recipes as text, for ``--help`` and ``--list-recipes``."""
    lines = []
    for recipe in RECIPES:
        lines.append(f"{recipe.name}: {recipe.dataset}, methods {', '.join(sorted(recipe.methods))}")
        lines.append(f"    {recipe.source}")
    return "\n".join(lines)


__all__ = ["BASE", "RECIPES", "RECIPE_KEYS", "Recipe", "find_recipe", "recipe_table"]
