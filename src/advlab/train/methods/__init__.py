"""Training methods, registered by name (see :mod:`advlab.train.methods.base`)."""

from advlab.train.methods import adversarial, certified, natural  # noqa: F401  (each registers its methods)
from advlab.train.methods.adversarial import (
    MART,
    NFGSM,
    TRADES,
    FastFGSM,
    FreeAT,
    GradAlign,
    PGDTraining,
    gradient_alignment,
)
from advlab.train.methods.base import (
    FAMILIES,
    METHODS,
    BatchOutput,
    Method,
    Setting,
    Step,
    declared_settings,
    method_help,
    register_method,
)
from advlab.train.methods.certified import CrownIBPTraining, IntervalBoundTraining
from advlab.train.methods.natural import GaussianNoiseTraining, GradientRegularization, Standard

__all__ = [
    "FAMILIES",
    "METHODS",
    "MART",
    "NFGSM",
    "TRADES",
    "BatchOutput",
    "CrownIBPTraining",
    "FastFGSM",
    "FreeAT",
    "GaussianNoiseTraining",
    "GradAlign",
    "GradientRegularization",
    "IntervalBoundTraining",
    "Method",
    "PGDTraining",
    "Setting",
    "Standard",
    "Step",
    "declared_settings",
    "gradient_alignment",
    "method_help",
    "register_method",
]
