"""Attacks on image classifiers, by concern:

- :mod:`~advlab.attacks.threat`: norms, projection, random starts, the ε-ball check (``verify_adversarial``);
- :mod:`~advlab.attacks.loop`: the one gradient loop (``perturb``) and what every gradient attack shares: the
  losses, the gradient at a point (``objective_and_gradient``: EOT, precision, the fp16 scale), the strongest
  result per example (``Strongest``), the targets (``likely_wrong_classes``), early exit's batch shapes
  (``bucket_size``, ``pad_to_bucket``), eval mode;
- :mod:`~advlab.attacks.gradient`: FGSM, PGD and the random-noise baseline;
- :mod:`~advlab.attacks.apgd`: APGD-CE, APGD-DLR and APGD-T (Croce & Hein 2020), AutoAttack's white-box part;
  its step rule and one run in :mod:`~advlab.attacks.apgd_steps`;
- :mod:`~advlab.attacks.square`: the Square Attack (Andriushchenko et al. 2020), gradient-free;
- :mod:`~advlab.attacks.suites`: named lists of attacks run in a chain (``--suite standard``: AutoAttack's);
- :mod:`~advlab.attacks.registry`: attack names for the CLI and configs (``parse_attack``, ``AttackSpec``).

Python::

    from advlab.attacks import fgsm, pgd, parse_attack
    x_adv = pgd(model, x, y, eps=0.1, steps=50, restarts=5)
    spec = parse_attack("pgd50x10-l2")
    x_adv = spec(model, x, y, eps=1.5)

Command line: ``advlab attack RUN_DIR --attack pgd20 --eps 0.1 --out OUT``.
"""

from advlab.attacks.apgd import apgd_ce, apgd_dlr, apgd_t, count_passes
from advlab.attacks.gradient import fgsm, madry_alpha, pgd, random_noise
from advlab.attacks.loop import (
    LOSSES,
    ObjectiveGradient,
    Strongest,
    bucket_size,
    eval_mode,
    likely_wrong_classes,
    margin_loss,
    objective_and_gradient,
    pad_to_bucket,
    perturb,
)
from advlab.attacks.registry import ATTACKS, AttackKind, AttackSpec, parse_attack, register_attack
from advlab.attacks.square import square
from advlab.attacks.threat import NORMS, IntegrityError, project, verify_adversarial

__all__ = [
    "apgd_ce",
    "apgd_dlr",
    "apgd_t",
    "count_passes",
    "ATTACKS",
    "AttackKind",
    "AttackSpec",
    "IntegrityError",
    "LOSSES",
    "NORMS",
    "ObjectiveGradient",
    "Strongest",
    "bucket_size",
    "eval_mode",
    "fgsm",
    "likely_wrong_classes",
    "madry_alpha",
    "margin_loss",
    "objective_and_gradient",
    "pad_to_bucket",
    "parse_attack",
    "perturb",
    "pgd",
    "project",
    "random_noise",
    "register_attack",
    "square",
    "verify_adversarial",
]
