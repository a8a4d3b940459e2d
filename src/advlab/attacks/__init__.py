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
- :mod:`~advlab.attacks.minimum_norm`: what the minimum-norm attacks share: their result
  (``MinimalPerturbation``: each example's smallest adversarial and its norm), the robust-accuracy curve it
  gives at every ε (``curve``, ``robust_at``), their use at one ε (``within_eps``), their parameters;
- :mod:`~advlab.attacks.fab`: FAB and FAB-T (Croce & Hein 2020), AutoAttack's minimum-norm attack;
- :mod:`~advlab.attacks.fmn`: the Fast Minimum-Norm attack (Pintor et al. 2021) and FMN-T, its targeted runs;
- :mod:`~advlab.attacks.cw`: the Carlini–Wagner L2 attack (Carlini & Wagner 2017);
- :mod:`~advlab.attacks.deepfool`: DeepFool (Moosavi-Dezfooli et al. 2016);
- :mod:`~advlab.attacks.suites`: named lists of attacks run in a chain (``--suite standard``: AutoAttack's);
- :mod:`~advlab.attacks.registry`: attack names for the CLI and configs (``parse_attack``, ``AttackSpec``).

Python::

    from advlab.attacks import curve, fgsm, pgd, parse_attack
    x_adv = pgd(model, x, y, eps=0.1, steps=50, restarts=5)
    spec = parse_attack("pgd50x10-l2")
    x_adv = spec(model, x, y, eps=1.5)
    result = parse_attack("fab-t").minimal(model, x, y)    # each example's smallest adversarial (L∞)
    curve(result.norms, [0.05, 0.1, 0.2])                   # robust accuracy at each ε

Command line: ``advlab attack RUN_DIR --attack pgd20 --eps 0.1 --out OUT``.
"""

from advlab.attacks.apgd import apgd_ce, apgd_dlr, apgd_t, count_passes
from advlab.attacks.cw import cw, cw_minimal
from advlab.attacks.deepfool import deepfool, deepfool_minimal
from advlab.attacks.fab import fab, fab_minimal, fab_t
from advlab.attacks.fmn import fmn, fmn_minimal, fmn_t
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
from advlab.attacks.minimum_norm import AttackParameter, MinimalPerturbation, curve, robust_at, within_eps
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
    "AttackParameter",
    "AttackSpec",
    "IntegrityError",
    "LOSSES",
    "MinimalPerturbation",
    "NORMS",
    "ObjectiveGradient",
    "Strongest",
    "bucket_size",
    "curve",
    "cw",
    "cw_minimal",
    "deepfool",
    "deepfool_minimal",
    "eval_mode",
    "fab",
    "fab_minimal",
    "fab_t",
    "fgsm",
    "fmn",
    "fmn_minimal",
    "fmn_t",
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
    "robust_at",
    "square",
    "verify_adversarial",
    "within_eps",
]
