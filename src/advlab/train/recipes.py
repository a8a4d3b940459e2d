"""Recipes: the default training settings of each data set and method, each from its source.

A setting a user leaves out of a :class:`~advlab.train.config.TrainConfig` (``None``) is taken from the
recipe of its data set and method, so ``advlab train --dataset mnist --method fgsm --eps 0.3`` trains Wong
et al.'s MNIST network the way they did, not a Fashion-MNIST setting that collapses there. A setting the
user gives always wins. The run's ``config.json`` names the recipe and holds every resolved value::

    from advlab.train.recipes import find_recipe
    find_recipe("mnist", "fgsm", "single-step").name      # 'mnist-wong' (the method, then its family)
    advlab train --list-recipes              # the table, with sources

Values are numbers or functions of ε (a step size or a regularizer weight that scales with the budget).
Settings no recipe names come from :data:`BASE`, advlab's own Fashion-MNIST recipe. The CIFAR-10 recipes
train on random 4-pixel-padded crops and horizontal flips, as every paper below does
(:mod:`advlab.data.augment`, tensor ops on the training device). Every method has a recipe on every data
set. The CIFAR-10 recipes have not been run on advlab's machines (no CIFAR-10 copy there); the MNIST ones
were, on the official MNIST (BENCHMARKS.md, "Reproducing the papers").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

# The settings a recipe decides. Every other TrainConfig field has one default for every data set.
RECIPE_KEYS = (
    "model",
    "optimizer",
    "lr",
    "schedule",
    "epochs",
    "batch_size",
    "momentum",
    "weight_decay",
    "eps_warmup_epochs",
    "clean_epochs",
    "steps",
    "alpha",
    "grad_align_lambda",
    "augment",
    "clip_start",
    "co_remedy",
    "train_eps",
)

# advlab's own recipe (measured on Fashion-MNIST at ε = 0.1 in BENCHMARKS.md), and the value of
# any setting a recipe below leaves out. alpha None: the method's own rule (fgsm 1.25ε, nfgsm ε, ...).
BASE: dict[str, Any] = {
    "model": "small_cnn",
    "optimizer": "adam",
    "lr": 0.002,
    "schedule": "onecycle",
    "epochs": 10,
    "batch_size": 128,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "eps_warmup_epochs": 0.0,
    "clean_epochs": 0.0,
    "steps": 7,
    "alpha": None,
    # GradAlign's λ: the paper's CIFAR-10 value at its standard ε = 8/255. Neither paper nor code gives one
    # for 28×28 images; it is a starting point, not a tuned value.
    "grad_align_lambda": 0.2,
    "augment": "none",  # 28×28 digits and clothes: the papers train on them as they are
    # The random start clipped to the image before the first gradient: Madry et al.'s PGD, Wong et al.'s
    # CIFAR-10 FGSM and de Jorge et al.'s N-FGSM code do so (Wong et al.'s MNIST FGSM does not).
    "clip_start": True,
    "co_remedy": "stop",  # what the catastrophic-overfitting guard does when it fires (advlab.train.guard)
    "train_eps": None,  # certified training's bounds at the training ε itself (None), or above it
}

# Method families (advlab.train.methods.FAMILIES): a recipe that names a family fits every method of it.
NATURAL, SINGLE_STEP, MULTI_STEP, CERTIFIED = "natural", "single-step", "multi-step", "certified"


@dataclass(frozen=True)
class Recipe:
    """Default settings for some methods on one data set, and where they come from."""

    name: str
    dataset: str
    methods: frozenset[str]  # method names or families (natural, single-step, multi-step, certified)
    settings: Mapping[str, Any] = field(default_factory=dict)  # values or functions of ε
    source: str = ""
    # What of it has been run to the end here, on the real data (BENCHMARKS.md); "" : not run (the table says so).
    ran: str = ""

    def values(self, eps: float) -> dict[str, Any]:
        """Every recipe setting at budget ``eps``: this recipe's, else BASE's."""
        merged = {**BASE, **self.settings}
        return {key: value(eps) if callable(value) else value for key, value in merged.items()}


def _cifar_grad_align_lambda(eps: float) -> float:
    """Andriushchenko & Flammarion's λ for CIFAR-10 (sh/exps_diff_eps_cifar10.sh): 0.02·10^(ε/8), ε in
    1/255 units: 0.2 at 8/255, 2.0 at 16/255."""
    return 0.02 * 10 ** (eps * 255 / 8)


FASHION_FAST_COLLAPSE = 0.25  # Fashion-MNIST: from this ε no single-step method held (BENCHMARKS.md, fast-AT)


def _mnist_ibp_train_eps(eps: float) -> float:
    """Gowal et al.'s and Zhang et al.'s training ε on MNIST: 0.2 for a test ε up to 0.1 (and 0.2), 0.4 above
    (CROWN-IBP's config/mnist_dm-large_0.2.json and _0.4.json); never below the test ε."""
    return max(eps, 0.2 if eps <= 0.2 else 0.4)


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "fashion-mnist",
        "fashion-mnist",
        frozenset({NATURAL, SINGLE_STEP, MULTI_STEP}),
        {
            "eps_warmup_epochs": lambda eps: 3.0 if eps > 0.15 else 0.0,
            "steps": lambda eps: 10 if eps >= FASHION_FAST_COLLAPSE else 7,
            "co_remedy": lambda eps: "fallback" if eps >= FASHION_FAST_COLLAPSE else "stop",
        },
        "advlab: small_cnn, Adam one-cycle peak 0.002, 10 epochs, batch 128, measured at ε = 0.1 "
        "(BENCHMARKS.md); above ε = 0.15, ε ramps up over the first 3 epochs (at most half the run), as "
        "Andriushchenko & Flammarion and de Jorge et al. ramp ε on SVHN: without it PGD-10 training at "
        "ε = 0.3 stayed at chance (benchmarks/bench_fast_at_grid.py); from ε = 0.25, where no single-step "
        "method held, a collapse falls back to PGD-10 (the multi-step methods' default there too)",
        ran="standard, fgsm, nfgsm, gradalign, pgd, trades, mart, free and gradreg at ε = 0.1, gaussian "
        "σ = 0.25; fgsm also at ε = 0.2 and 0.3",
    ),
    Recipe(
        "fashion-mnist-ibp",
        "fashion-mnist",
        frozenset({CERTIFIED}),
        {
            "model": "wong_mnist",
            "optimizer": "adam",
            "lr": 0.001,
            "schedule": "piecewise",
            "epochs": 30,
            "batch_size": 100,
            "clean_epochs": 1.0,
            "eps_warmup_epochs": 10.0,
        },
        "Gowal et al. 2018 (IBP) scaled to a CPU: Wong & Kolter's small certified-training network "
        "(conv16-conv32, stride 2, fc100; no pooling), Adam 1e-3 ÷10 at half and again at three quarters, "
        "batch 100, one clean epoch, then ε ramped linearly over 10 epochs while κ falls from 1 to 0.5 "
        "(crown-ibp: and CROWN-IBP's weight β from 1 to 0, Zhang et al. 2020)",
        ran="ibp and crown-ibp at ε = 0.1",
    ),
    Recipe(
        "mnist-wong",
        "mnist",
        frozenset({NATURAL, SINGLE_STEP}),
        {
            "model": "wong_mnist",
            "optimizer": "adam",
            "lr": 0.005,
            "schedule": "onecycle",
            "epochs": 10,
            "batch_size": 100,
            "clip_start": False,
            "steps": 10,
            "co_remedy": "fallback",
        },
        "Wong, Rice & Kolter 2020 (MNIST/train_mnist.py): their 2-conv network, Adam, cyclic lr peaking at "
        "0.005 at 2/5 of training, 10 epochs, batch 100, FGSM α = 1.25ε (0.375 at ε = 0.3) from a random "
        "start that is not clipped to the image before the gradient (their code; clipping it collapses, "
        "BENCHMARKS.md); a collapse falls back to PGD-10. GradAlign, free AT, gradreg and gaussian have "
        "no MNIST setting of their own and use this one",
        ran="fgsm at ε = 0.3, 5 seeds (gradalign, free, gradreg, gaussian: not run)",
    ),
    Recipe(
        "mnist-nfgsm",
        "mnist",
        frozenset({"nfgsm"}),
        {
            "model": "wong_mnist",
            "optimizer": "adam",
            "lr": 0.005,
            "schedule": "onecycle",
            "epochs": 10,
            "batch_size": 100,
            "steps": 10,
            "co_remedy": "fallback",
        },
        "de Jorge et al. 2022 have no MNIST setting: Wong et al.'s MNIST network and schedule, N-FGSM's "
        "noise clipped to the image as the authors' code does",
        ran="nfgsm at ε = 0.3: it collapses and falls back to PGD-10; with --clip-start no, 39% under PGD-50×10",
    ),
    Recipe(
        "mnist-madry",
        "mnist",
        frozenset({MULTI_STEP}),
        {
            "model": "madry_cnn",
            "optimizer": "adam",
            "lr": 1e-4,
            "schedule": "constant",
            "epochs": 83,
            "batch_size": 50,
            "steps": 40,
            "alpha": lambda eps: eps / 30,
        },
        "Madry et al. 2018 (mnist_challenge/config.json): conv32-conv64-fc1024, PGD-40 with α = 0.01 at "
        "ε = 0.3, Adam 1e-4, 100,000 steps of batch 50 (83 epochs)",
        ran="one epoch of pgd, for its time (the whole recipe: not run, a day on this CPU)",
    ),
    Recipe(
        "mnist-ibp",
        "mnist",
        frozenset({CERTIFIED}),
        {
            "model": "wong_mnist",
            "optimizer": "adam",
            "lr": lambda eps: 1e-3 if eps <= 0.2 else 5e-4,
            "schedule": "piecewise",
            "epochs": lambda eps: 50 if eps <= 0.2 else 100,
            "batch_size": 100,
            "clean_epochs": lambda eps: 3.0 if eps <= 0.2 else 10.0,
            "eps_warmup_epochs": lambda eps: 18.0 if eps <= 0.2 else 50.0,
            "train_eps": _mnist_ibp_train_eps,
        },
        "Gowal et al. 2018 and Zhang et al. 2020 (CROWN-IBP's config/mnist_dm-large_0.2.json and _0.4.json) "
        "on Wong & Kolter's small network: Adam 1e-3 (5e-4 above ε = 0.2) ÷10 at half and at three quarters, "
        "batch 100, clean epochs then a linear ε ramp (3 then 18 epochs of 50; 10 then 50 of 100 above "
        "ε = 0.2), bounds trained at ε = 0.2 for a test ε up to 0.2 and 0.4 above, κ from 1 to 0.5 "
        "(crown-ibp: β from 1 to 0); their large network takes 200 epochs on a GPU",
        ran="ibp and crown-ibp at ε = 0.1 and 0.3",
    ),
    Recipe(
        "cifar10-wong",
        "cifar10",
        frozenset({NATURAL, SINGLE_STEP}),
        {
            "model": "preact_resnet18",
            "optimizer": "sgd",
            "lr": 0.2,
            "schedule": "triangle",
            "epochs": 15,
            "batch_size": 128,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "augment": "crop-flip",
        },
        "Wong, Rice & Kolter 2020 (CIFAR10/train_fgsm.py): PreActResNet-18, SGD momentum 0.9, weight "
        "decay 5e-4, cyclic lr 0 → 0.2 → 0 peaking half-way, 15 epochs, batch 128, α = 1.25ε (10/255), "
        "the random start clipped to the image (their code); gradreg uses the same",
    ),
    Recipe(
        "cifar10-nfgsm",
        "cifar10",
        frozenset({"nfgsm"}),
        {
            "model": "preact_resnet18",
            "optimizer": "sgd",
            "lr": 0.2,
            "schedule": "triangle",
            "epochs": 30,
            "batch_size": 128,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "augment": "crop-flip",
        },
        "de Jorge et al. 2022 (N-FGSM train.py): PreActResNet-18, SGD, cyclic lr peak 0.2 half-way, "
        "30 epochs, noise k = 2 clipped to the image, α = ε",
    ),
    Recipe(
        "cifar10-gradalign",
        "cifar10",
        frozenset({"gradalign"}),
        {
            "model": "preact_resnet18",
            "optimizer": "sgd",
            "lr": 0.3,
            "schedule": "onecycle",
            "epochs": 30,
            "batch_size": 128,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "grad_align_lambda": _cifar_grad_align_lambda,
            "augment": "crop-flip",
        },
        "Andriushchenko & Flammarion 2020 (sh/exps_diff_eps_cifar10.sh): PreActResNet-18, SGD, cyclic lr "
        "peak 0.3 at 2/5, 30 epochs, FGSM from x, λ = 0.02·10^(ε·255/8)",
    ),
    Recipe(
        "cifar10-rice",
        "cifar10",
        frozenset({MULTI_STEP}),
        {
            "model": "preact_resnet18",
            "optimizer": "sgd",
            "lr": 0.1,
            "schedule": "piecewise",
            "epochs": 200,
            "batch_size": 128,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "steps": 10,
            "alpha": lambda eps: eps / 4,
            "augment": "crop-flip",
        },
        "Rice, Wong & Kolter 2020: PreActResNet-18, PGD-10 with α = 2/255 at ε = 8/255, SGD 0.1 ÷10 at "
        "epochs 100 and 150 of 200; keep the best checkpoint (advlab's best.safetensors)",
    ),
    Recipe(
        "cifar10-cohen",
        "cifar10",
        frozenset({"gaussian"}),
        {
            "model": "preact_resnet18",
            "optimizer": "sgd",
            "lr": 0.1,
            "schedule": "piecewise",
            "epochs": 90,
            "batch_size": 256,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "augment": "crop-flip",
        },
        "Cohen, Rosenfeld & Kolter 2019 (code/train.py): SGD 0.1 with momentum, weight decay 1e-4, 90 epochs "
        "of batch 256, crops and flips; PreActResNet-18 for their ResNet-110, and advlab's ÷10 at half and "
        "three quarters for their ÷10 every 30 epochs",
    ),
    Recipe(
        "cifar10-ibp",
        "cifar10",
        frozenset({CERTIFIED}),
        {
            "model": "ibp_large",
            "optimizer": "adam",
            "lr": 5e-4,
            "schedule": "piecewise",
            "epochs": 200,
            "batch_size": 256,
            "clean_epochs": 20.0,
            "eps_warmup_epochs": 100.0,
            "augment": "crop-flip",
            "train_eps": lambda eps: min(1.0, 1.1 * eps),
        },
        "Gowal et al. 2018 and Zhang et al. 2020 (CROWN-IBP's config/cifar_dm-large_8_255.json, 3,200 epochs "
        "of batch 512, scaled to 200 of batch 256): their large network (ibp_large) with normalized inputs, "
        "Adam 5e-4 ÷10 at half and three quarters (theirs: at 81% and 95%), a tenth of training clean, ε "
        "ramped linearly over half of it (theirs: smoothly), bounds trained at 1.1 ε, crops and flips; for a "
        "GPU",
    ),
)


def find_recipe(dataset: str, method: str, family: str = "", base: Mapping[str, Any] | None = None) -> Recipe:
    """The first recipe of ``dataset`` (canonical name) that names ``method`` or its ``family``
    (:attr:`advlab.train.methods.Method.family`): the method's own first; for a
    pair none names, advlab's base recipe with ``base``, the settings the method cannot work without
    (:attr:`advlab.train.methods.Method.base_settings`)."""
    for key in (method, family):  # a recipe for the method itself first, then its family's
        for recipe in RECIPES:
            if recipe.dataset == dataset and key in recipe.methods:
                return recipe
    return Recipe(
        "base",
        dataset,
        frozenset({method}),
        dict(base or {}),
        "advlab's Fashion-MNIST defaults and the method's own (no recipe for this data set and method)",
    )


# What of each recipe has been run to the end on advlab's machines, by recipe name (each recipe's ``ran``).
RAN: dict[str, str] = {recipe.name: recipe.ran for recipe in RECIPES if recipe.ran}


def recipe_table() -> str:
    """The recipes as text, for ``--help`` and ``--list-recipes``, each with what of it has been run."""
    lines = []
    for recipe in RECIPES:
        lines.append(f"{recipe.name}: {recipe.dataset}, methods {', '.join(sorted(recipe.methods))}")
        lines.append(f"    {recipe.source}")
        ran = RAN.get(recipe.name)
        lines.append(f"    run here: {ran}" if ran else "    not run on advlab's machines (no CIFAR-10 copy, no GPU)")
    return "\n".join(lines)


__all__ = ["BASE", "RAN", "RECIPES", "RECIPE_KEYS", "Recipe", "find_recipe", "recipe_table"]
