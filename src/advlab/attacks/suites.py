"""Attack suites: named lists of attacks run as a chain, each only on what the earlier ones left robust.

A suite is what a user runs to get one trustworthy number (``advlab evaluate RUN --suite standard``): the
per-example worst case over diverse attacks, as AutoAttack (Croce & Hein 2020, arXiv:2003.01690) does.
In a chain each attack runs only on the images every earlier attack left robust, so the later, dearer
attacks cost little, and each attack's figure is cumulative (the robust accuracy after it and all earlier
ones). Python::

    from advlab.attacks.suites import suite_attacks
    attacks = suite_attacks("standard", norm="linf", classes=10)
    result = evaluate(model, data, attacks=attacks, eps=[0.1], chain=True)

=============  =================================================================================================
suite          attacks
=============  =================================================================================================
``standard``   APGD-CE (100 iterations), APGD-T (9 targets × 100), FAB-T (9 targets × 100), Square (5,000
               queries): AutoAttack's standard version, attack for attack (Croce & Hein 2020)
``lean``       the same without FAB-T, whose share of the images it alone breaks is the smallest (Croce & Hein
               2020, Table 2 of the appendix): cheaper, and no longer like for like with AutoAttack
``quick``      APGD-CE (50 iterations), APGD-T (the 3 most likely targets × 50 iterations): cheaper, for an ε grid
``rand``       APGD-CE and APGD-DLR (100 iterations), each step's gradient averaged over 20 passes: EOT
               (Athalye et al. 2018), AutoAttack's version for randomized models (``randomized`` flag)
=============  =================================================================================================

On fewer classes than an attack needs the suite runs the fallback its registry entry names: APGD-T (4 classes)
becomes APGD-DLR on 3 and is dropped on 2 (APGD-CE remains); FAB-T needs only 2 (its one target is then the
other class). The model flags say so (``few-classes``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from advlab.attacks.registry import AttackSpec, parse_attack
from advlab.errors import AdvlabError


@dataclass(frozen=True)
class Suite:
    name: str
    attacks: tuple[str, ...]  # attack names as parse_attack reads them, in the order they run
    summary: str


SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite) -> Suite:
    """Make ``suite`` available by its name (``--suite NAME``, the study's ``suite`` setting); a new suite
    is one call, beside the attacks it names."""
    if suite.name in SUITES:
        raise ValueError(f"suite {suite.name!r} is registered twice")
    for attack in suite.attacks:
        parse_attack(attack)  # a misspelt attack fails when the suite is registered, not when it runs
    SUITES[suite.name] = suite
    return suite


def suite_help() -> str:
    """Each registered suite and what it runs, for --help."""
    return "; ".join(f"{name} ({suite.summary})" for name, suite in SUITES.items())


register_suite(
    Suite(
        "standard",
        ("apgd-ce100", "apgd-t100", "fab-t100", "square5000"),
        "AutoAttack's standard version: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5,000 queries)",
    )
)
register_suite(
    Suite(
        "lean",
        ("apgd-ce100", "apgd-t100", "square5000"),
        "the standard suite without FAB-T: APGD-CE, APGD-T (9 targets), Square (5,000 queries)",
    )
)
register_suite(
    Suite(
        "quick",
        ("apgd-ce50", "apgd-t50-top3"),
        "a cheaper APGD-CE (50 iterations) and APGD-T (3 targets × 50 iterations), for an ε grid",
    )
)
register_suite(
    Suite(
        "rand",
        ("apgd-ce100-eot20", "apgd-dlr100-eot20"),
        "AutoAttack's version for randomized models: APGD-CE and APGD-DLR, each gradient averaged over 20 passes (EOT)",
    )
)


def suite_attacks(name: str, *, norm: str = "linf", classes: int | None = None) -> list[AttackSpec]:
    """The attacks of suite ``name`` in ``norm``, in the order they run; with ``classes`` (the model's
    number of classes) an attack the classes do not allow is replaced: APGD-T by APGD-DLR on 3 classes,
    and both by nothing on 2 (APGD-CE remains)."""
    try:
        suite = SUITES[name]
    except KeyError:
        raise AdvlabError(f"unknown suite {name!r}; choose one of: {', '.join(SUITES)}") from None
    attacks = []
    for spec in (parse_attack(attack, norm=norm) for attack in suite.attacks):
        while spec is not None and classes is not None and classes < spec.kind.min_classes:
            fallback = spec.kind.fallback  # e.g. APGD-T → APGD-DLR on 3 classes; nothing on 2
            spec = None if fallback is None else replace(spec, name=fallback, targets=None)
        if spec is not None:
            attacks.append(spec)
    return attacks


__all__ = ["SUITES", "Suite", "register_suite", "suite_attacks", "suite_help"]
