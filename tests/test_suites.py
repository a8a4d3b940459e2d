"""Attack suites: what each one runs, in which order, what it falls back to on few classes, what the
registry records of each attack, and `--suite` from the command line."""

from __future__ import annotations

import json

import pytest

from advlab.attacks import parse_attack
from advlab.attacks.suites import SUITES, suite_attacks
from advlab.cli import main
from advlab.errors import AdvlabError

COMPOSITION = {
    # (suite, classes): the labels it runs, in order
    ("standard", 10): ["APGD-CE-100 L∞", "APGD-T-100 L∞", "FAB-T-100 L∞", "Square-5000 L∞"],
    ("standard", 3): ["APGD-CE-100 L∞", "APGD-DLR-100 L∞", "FAB-T-100 L∞", "Square-5000 L∞"],
    ("standard", 2): ["APGD-CE-100 L∞", "FAB-T-100 L∞", "Square-5000 L∞"],
    ("lean", 10): ["APGD-CE-100 L∞", "APGD-T-100 L∞", "Square-5000 L∞"],
    ("lean", 3): ["APGD-CE-100 L∞", "APGD-DLR-100 L∞", "Square-5000 L∞"],
    ("lean", 2): ["APGD-CE-100 L∞", "Square-5000 L∞"],
    ("quick", 10): ["APGD-CE-50 L∞", "APGD-T-50 L∞ top-3"],
    ("quick", 3): ["APGD-CE-50 L∞", "APGD-DLR-50 L∞"],
    ("quick", 2): ["APGD-CE-50 L∞"],
    ("rand", 10): ["APGD-CE-100 L∞ EOT-20", "APGD-DLR-100 L∞ EOT-20"],
    ("rand", 3): ["APGD-CE-100 L∞ EOT-20", "APGD-DLR-100 L∞ EOT-20"],
    ("rand", 2): ["APGD-CE-100 L∞ EOT-20"],
}


@pytest.mark.parametrize("suite, classes", sorted(COMPOSITION))
def test_each_suite_runs_what_it_says_and_falls_back_on_few_classes(suite, classes):
    assert [a.label for a in suite_attacks(suite, classes=classes)] == COMPOSITION[(suite, classes)]


def test_every_suite_is_covered_and_the_l2_suites_are_l2():
    assert {suite for suite, _ in COMPOSITION} == set(SUITES)
    for suite in SUITES:
        assert all(a.norm == "l2" for a in suite_attacks(suite, norm="l2", classes=10))
    with pytest.raises(AdvlabError, match="unknown suite 'autoattack'"):
        suite_attacks("autoattack")


def test_the_standard_suite_is_autoattacks_standard_version():
    """Croce & Hein 2020: APGD-CE, APGD-T and FAB-T against 9 targets each, 100 iterations, Square 5,000."""
    apgd_ce, apgd_t, fab_t, square = suite_attacks("standard", classes=10)
    assert (apgd_ce.name, apgd_ce.steps, apgd_ce.restarts) == ("apgd-ce", 100, 1)
    for attack in (apgd_t, fab_t):
        hyper = attack.hyperparameters(0.1)
        assert (hyper["steps"], hyper["restarts"], hyper["targets"], hyper["targeted"]) == (100, 1, 9, True)
    assert (square.name, square.steps, square.kind.black_box) == ("square", 5000, True)


@pytest.mark.parametrize(
    "name, loss, targeted, targets",
    [
        ("apgd-ce", "ce", False, None),
        ("apgd-dlr", "dlr", False, None),  # once recorded as "ce"
        ("apgd-t", "dlr-targeted", True, 9),  # once recorded as untargeted
        ("apgd-t-top3", "dlr-targeted", True, 3),
        ("square", "margin", False, None),
        ("pgd20-targeted3", "ce", True, 3),
    ],
)
def test_the_recorded_hyperparameters_say_what_the_attack_runs(name, loss, targeted, targets):
    hyper = parse_attack(name).hyperparameters(0.1)
    assert (hyper["loss"], hyper["targeted"], hyper.get("targets")) == (loss, targeted, targets)


def test_suite_standard_from_the_command_line(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "aa.json"
    argv = ["evaluate", str(trained_checkpoint), "--suite", "standard", "--eps", "0.1", "--n", "16", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    labels = COMPOSITION[("standard", 10)]
    assert result["suite"] == "standard" and list(result["robust_accuracy"]) == labels and result["chain"]
    curve = [result["robust_accuracy"][label][0] for label in labels]
    assert curve == sorted(curve, reverse=True) and result["worst_case_accuracy"][0] == curve[-1]  # a chain
    assert set(result["attack_seconds"]) == set(labels) and all(s >= 0 for s in result["attack_seconds"].values())
    assert result["hyperparameters"]["FAB-T-100 L∞"][0]["targets"] == 9
    assert "FAB-T-100 L∞" in capsys.readouterr().out
