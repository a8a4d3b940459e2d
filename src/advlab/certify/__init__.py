"""Certified robustness: bounds that prove no perturbation in the ball changes a prediction.

* :mod:`advlab.certify.ibp`: interval bound propagation (and CROWN-IBP's tighter last pass) over an L∞ ball:
  ``verified`` per example, ``worst_case_logits`` for certified training (``--method ibp``).
* :mod:`advlab.certify.smoothing`: randomized smoothing (Cohen et al. 2019): ``predict`` with abstention and
  ``certify``, an L2 radius per example that holds with probability 1 − α.

Certifiers return bounds or radii, never adversarial examples; a verified accuracy is a lower bound on the
robust accuracy any attack can measure (the study checks it is never above the empirical one).
"""

from advlab.certify import smoothing  # noqa: F401  (registers the smoothing certifier)
from advlab.certify.ibp import (
    UnsupportedLayer,
    input_box,
    interval_bounds,
    margin_bounds,
    mixed_margin_bounds,
    sequence,
    verified,
    verified_accuracy,
    verified_flags,
    worst_case_logits,
)
from advlab.certify.registry import CERTIFIERS, Certifier, Option, get_certifier, register_certifier

__all__ = [
    "CERTIFIERS",
    "Certifier",
    "Option",
    "UnsupportedLayer",
    "get_certifier",
    "register_certifier",
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
