"""The study's sanity-check stage: the extra measurements behind the gradient-masking checks of one model
at the training ε (:mod:`advlab.masking`), beside the study's own figures for it."""

from __future__ import annotations

from pathlib import Path

import torch

from advlab.attacks import AttackSpec, parse_attack
from advlab.attacks.suites import suite_attacks
from advlab.masking_attacks import is_single_step, measure_masking_checks, strongest_pgd
from advlab.runtime import Runtime
from advlab.schema import Evaluation, read_checked
from advlab.study.config import StudyConfig


def surrogate_of(config: StudyConfig, name: str) -> str:
    """The transfer attack's source for ``name``: the standard model, or for that one the first robust one."""
    return "standard" if name != "standard" else next(n for n in config.models if n != "standard")


def check_numbers(
    config: StudyConfig,
    name: str,
    models: dict,
    test,
    *,
    attacks: list[AttackSpec],
    out: Path,
    runtime: Runtime,
    progress: bool,
) -> dict:
    """The extra measurements behind the gradient-masking checks at the training ε, beside the study's own
    figures for that model (``models/NAME/eval.json``, the ones the report shows).

    Each extra attack also counts towards the model's worst case there (``worst_case_all``, the headline):
    the gradient attacks of the study's suite (``standard``: APGD-CE and APGD-T) attack, chained, the
    examples the study's own attacks left robust; doubled PGD, and APGD-DLR beside APGD-CE of its budget,
    attack every example (each check compares like with like); Square attacks what every gradient attack
    left; uniform noise and the transfer attack attack every example; and an example is robust only if it
    survives them all.
    """
    eps, base = config.train_eps, strongest_pgd(attacks)
    saved = read_checked(out / "models" / name / "eval.json", Evaluation)
    i = saved["eps"].index(eps)
    survivors = torch.tensor(saved["train_eps_survivors"], dtype=torch.long)
    surrogate = surrogate_of(config, name)
    # The gradient-free attack is the check's own (check_square).
    suite = [
        a for a in suite_attacks(config.suite, norm=base.norm, classes=len(test.info.classes)) if not a.kind.black_box
    ]
    numbers = measure_masking_checks(
        models[name],
        models[surrogate],
        test,
        base=base,
        eps=eps,
        survivors=survivors,
        suite=suite,
        dlr=parse_attack(config.check_dlr, norm=base.norm),
        square=parse_attack(config.check_square, norm=base.norm),
        seed=config.seed,
        runtime=runtime,
        progress=progress,
    )
    robust = numbers.pop("robust_after_all")
    numbers["transfer"]["surrogate"] = surrogate
    labels = [a.label for a in attacks] + [a.label for a in suite]
    return {
        **numbers,
        "pgd": {"label": base.label, "accuracy": saved["robust_accuracy"][base.label][i]},
        "single_step": next(a.label for a in attacks if is_single_step(a)),  # what PGD must beat
        "robust_images": robust.nonzero().squeeze(1).tolist(),  # for the per-example cross-check
        # The checks' baseline: the study's attacks, then the suite's on what they left.
        "worst_case": {
            "accuracy": numbers["suite"]["accuracy"] if suite else saved["worst_case_accuracy"][i],
            "attacks": labels,
            "study_attacks_only": saved["worst_case_accuracy"][i],
        },
        "worst_case_all": {
            "accuracy": robust.float().mean().item(),
            "attacks": labels
            + [numbers[k]["label"] for k in ("pgd_doubled", "dlr", "square", "noise")]
            + [f"transfer {base.label} from {surrogate}"],
        },
    }


__all__ = ["check_numbers", "surrogate_of"]
