"""An evaluation's tally: its per-example verdicts, batch by batch, and the result they add up to.

:func:`advlab.evaluate.evaluate` adds each batch's verdicts (:meth:`Tally.add`): correct clean, robust under
each (attack, ε) (cumulative in a chain), robust under all of them at each ε (the worst case), and per ε the
counts behind the black-box-beats-white-box warning. A verdict is a count of correct passes per example (0
or 1; 0 to :data:`DRAWS` for a randomized model), so the result gives a randomized model's expected
accuracy over draws (its headline: what the deployed random model scores on average) beside the majority
vote (what a smoothed version of it would score; a model wrong on a random 30% of its passes keeps about
95% of its accuracy by the majority of 20, 70% expected); the model warnings and the passes per verdict are
decided on the first batch (:meth:`Tally.first_batch`). A resumable evaluation saves and restores it
(:meth:`Tally.state`, :meth:`Tally.restore`: the layout :class:`advlab.eval_state.EvalState` stores); under
torchrun the ranks' tallies are merged in batch order (:meth:`Tally.gathered`), so the numbers are one
process's. :meth:`Tally.result` is the :class:`EvalResult`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from advlab.attacks import AttackSpec
from advlab.errors import AdvlabError
from advlab.model_warnings import black_box_warning, is_randomized, model_warnings

# A randomized model (two passes differ) is judged on this many passes, clean and attacked alike: enough
# that the expected accuracy's sampling error per example is small against its range (a standard deviation
# of at most 0.11 per example, far less over hundreds), few enough to cost 20 forward passes per verdict.
DRAWS = 20
Key = tuple[str, int]  # (attack label, index of ε)


def majority(counts: torch.Tensor, draws: int) -> torch.Tensor:
    """Per example: correct in more than half of ``draws`` passes (the majority vote; for one pass, correct)."""
    return counts.to(torch.int32) * 2 > draws


@dataclass
class EvalResult:
    """Accuracies of one model: ``robust[label][i]`` is the accuracy under that attack at ``eps[i]``."""

    n: int
    clean_accuracy: float
    eps: list[float]
    attacks: dict[str, dict]  # label -> attack hyperparameters (AttackSpec.to_dict())
    robust: dict[str, list[float]]
    worst_case: list[float]
    seconds: float
    per_example: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # "clean", label@eps -> bool
    # advlab.model_warnings: what may make these numbers overstate (saved as "model_flags")
    model_warnings: list[dict] = field(default_factory=list)
    draws: int = 1  # passes per verdict: DRAWS for a randomized model, else 1
    # A randomized model's majority vote (clean_accuracy, robust_accuracy, worst_case_accuracy), beside the
    # expected accuracy over draws that the fields above hold (the headline); None for a deterministic model.
    majority: dict[str, Any] | None = None
    attack_seconds: dict[str, float] = field(default_factory=dict)  # each attack's time (its share of seconds)
    # A minimum-norm attack's smallest adversarial per example (0: wrong already, inf: none found), by label:
    # its robust accuracy at any ε (minimal_curve), from the one run.
    minimal_norms: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def minimal_curve(self, label: str, eps: Sequence[float]) -> list[float]:
        """The robust accuracy at each ε of ``eps`` under the minimum-norm attack ``label``, from its one run."""
        from advlab.attacks.minimum_norm import curve

        return curve(self.minimal_norms[label], eps).tolist()

    @property
    def headline(self) -> str:
        """What the accuracies above are: the plain accuracy, or a randomized model's expected accuracy."""
        return "accuracy" if self.draws == 1 else f"expected accuracy over {self.draws} draws"

    def to_dict(self) -> dict:
        """JSON-ready summary (the per-example verdicts left out)."""
        return {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "eps": self.eps,
            "attacks": self.attacks,
            "robust_accuracy": self.robust,
            "worst_case_accuracy": self.worst_case,
            "seconds": self.seconds,
            "attack_seconds": self.attack_seconds,
            "model_flags": self.model_warnings,
            "verdict_draws": self.draws,
            "headline": self.headline,
            **({"majority_vote": self.majority} if self.majority is not None else {}),
        }

    def table(self) -> str:
        """A plain-text table: one row per ε, one column per attack, then the worst case."""
        labels = list(self.robust)
        header = ["eps", "clean"] + labels + (["worst case"] if len(labels) > 1 else [])
        rows = []
        for i, eps in enumerate(self.eps):
            row = [f"{eps:.4g}", f"{100 * self.clean_accuracy:.2f}%"]
            row += [f"{100 * self.robust[label][i]:.2f}%" for label in labels]
            if len(labels) > 1:
                row.append(f"{100 * self.worst_case[i]:.2f}%")
            rows.append(row)
        widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
        lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in [header] + rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        note = f"\n({self.n} examples, {self.seconds:.1f} s)"
        if self.majority is not None:
            worst = self.majority["worst_case_accuracy"]
            note += (
                f"\nA randomized model: each figure is its {self.headline}, the accuracy it scores on "
                f"average; by the majority of the draws it would score {100 * self.majority['clean_accuracy']:.2f}% "
                f"clean and {', '.join(f'{100 * w:.2f}%' for w in worst)} in the worst case."
            )
        return "\n".join(lines) + note


class BatchVerdicts:
    """What the attacks left of one batch: robust per (attack, ε), the worst case per ε, and the
    black-box-beats-white-box counts."""

    def __init__(self) -> None:
        self.robust: dict[Key, torch.Tensor] = {}
        self.worst: dict[int, torch.Tensor] = {}
        self.white_robust: dict[int, int] = {}
        self.black_broke: dict[Key, int] = {}
        self.seconds: dict[str, float] = {}  # per attack label: the time its runs took (verdicts included)
        self.norms: dict[str, torch.Tensor] = {}  # per minimum-norm attack: each example's smallest adversarial


class Tally:
    """The per-example verdicts of one evaluation of ``attacks`` at the budgets ``eps``, and what it needs to
    resume: the model warnings and passes per verdict decided on its first batch, the time it has taken."""

    def __init__(self, attacks: Sequence[AttackSpec], eps: Sequence[float]) -> None:
        self.attacks, self.eps = list(attacks), [float(e) for e in eps]
        labels, n = [a.label for a in attacks], len(eps)
        self.clean: list[torch.Tensor] = []
        self.robust: dict[Key, list[torch.Tensor]] = {(label, i): [] for label in labels for i in range(n)}
        self.worst: dict[int, list[torch.Tensor]] = {i: [] for i in range(n)}
        # Per ε: images every gradient attack ran on and left robust, and those a gradient-free attack then broke.
        self.white_robust: dict[int, int] = {i: 0 for i in range(n)}
        self.black_broke: dict[Key, int] = {(a.label, i): 0 for a in attacks if a.kind.black_box for i in range(n)}
        self.attack_seconds: dict[str, float] = {a.label: 0.0 for a in attacks}  # each attack's share of the time
        self.norms: dict[str, list[torch.Tensor]] = {}  # a minimum-norm attack's per-example norms, by label
        self.batches: list[int] = []  # the batches tallied, by index (under torchrun: this rank's)
        self.warnings: list[dict] = []  # advlab.model_warnings, from the first batch
        self.draws: int | None = None  # passes per verdict: DRAWS for a randomized model, else 1
        self.start = time.perf_counter()

    def first_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, training: bool, checks: bool) -> None:
        """On the evaluation's first batch (not again after a resume): the model warnings (``checks``;
        ``training``: the mode the model was handed over in), and whether verdicts take :data:`DRAWS` passes."""
        if self.draws is not None:
            return
        if checks:
            self.warnings = model_warnings(model, x, y, training=training)
        self.draws = DRAWS if is_randomized(model, x) else 1

    def add(self, index: int, clean: torch.Tensor, verdicts: BatchVerdicts) -> None:
        """One batch: its clean verdicts and what the attacks left (:class:`BatchVerdicts`)."""
        self.batches.append(index)
        self.clean.append(clean.cpu())
        for key, flags in verdicts.robust.items():
            self.robust[key].append(flags.cpu())
        for i, flags in verdicts.worst.items():
            self.worst[i].append(flags.cpu())
        for i, count in verdicts.white_robust.items():
            self.white_robust[i] += count
        for key, count in verdicts.black_broke.items():
            self.black_broke[key] += count
        for label, seconds in verdicts.seconds.items():
            self.attack_seconds[label] += seconds
        for label, norms in verdicts.norms.items():
            self.norms.setdefault(label, []).append(norms.cpu())

    def state(self, generator: torch.Generator) -> dict[str, Any]:
        """What a resumable evaluation saves after each batch, its random ``generator`` included."""
        return {
            "batches": len(self.clean),
            "clean": self.clean,
            "worst": self.worst,
            "robust": {f"{i}:{label}": flags for (label, i), flags in self.robust.items()},
            "white_robust": self.white_robust,
            "black_broke": {f"{i}:{label}": count for (label, i), count in self.black_broke.items()},
            "flags": self.warnings,
            "draws": self.draws,
            "attack_seconds": self.attack_seconds,
            "norms": self.norms,
            "generator": generator.get_state(),
            "seconds": time.perf_counter() - self.start,
        }

    def restore(self, saved: dict[str, Any] | None, generator: torch.Generator) -> int:
        """Back as :meth:`state` left it (read by :class:`advlab.eval_state.EvalState`), ``generator``
        included; the number of batches already done (0 with nothing ``saved``)."""
        if saved is None:
            return 0
        self.clean, self.worst = saved["clean"], saved["worst"]
        self.robust = {(label, i): saved["robust"][f"{i}:{label}"] for label, i in self.robust}
        self.white_robust = saved["white_robust"]
        self.black_broke = {key: saved["black_broke"][f"{key[1]}:{key[0]}"] for key in self.black_broke}
        self.batches = list(range(saved["batches"]))
        self.warnings, self.draws = saved["flags"], saved.get("draws")
        self.attack_seconds |= saved.get("attack_seconds") or {}
        self.norms = saved.get("norms") or {}
        generator.set_state(saved["generator"])
        self.start -= saved["seconds"]
        return saved["batches"]

    def gathered(self, world) -> Tally:
        """Every rank's tally, merged in batch order: the tally one process would have made."""
        parts = world.gather(
            {
                "batches": self.batches,
                "clean": self.clean,
                "robust": self.robust,
                "worst": self.worst,
                "white": self.white_robust,
                "black": self.black_broke,
                "warnings": self.warnings,
                "draws": self.draws,
                "seconds": self.attack_seconds,
                "norms": self.norms,
            }
        )
        order = sorted((b, r, k) for r, part in enumerate(parts) for k, b in enumerate(part["batches"]))
        merged = Tally(self.attacks, self.eps)
        merged.start, merged.batches = self.start, [b for b, _, _ in order]
        merged.warnings = parts[0]["warnings"]  # from batch 0, rank 0's
        merged.draws = next((part["draws"] for part in parts if part["draws"] is not None), None)
        merged.clean = [parts[r]["clean"][k] for _, r, k in order]
        merged.robust = {key: [parts[r]["robust"][key][k] for _, r, k in order] for key in self.robust}
        merged.worst = {i: [parts[r]["worst"][i][k] for _, r, k in order] for i in self.worst}
        merged.white_robust = {i: sum(part["white"][i] for part in parts) for i in self.white_robust}
        merged.black_broke = {key: sum(part["black"][key] for part in parts) for key in self.black_broke}
        merged.attack_seconds = {k: max(part["seconds"][k] for part in parts) for k in self.attack_seconds}
        merged.norms = {k: [parts[r]["norms"][k][j] for _, r, j in order] for k in parts[0]["norms"]}
        return merged

    def result(self, *, checks: bool, keep_per_example: bool) -> EvalResult:
        """What the verdicts add up to: the accuracies, the worst case, the model warnings (with ``checks``,
        the black-box-beats-white-box ones) and, with ``keep_per_example``, the per-example verdicts."""
        if not self.clean:
            raise AdvlabError("no examples to evaluate")
        eps, warnings = self.eps, list(self.warnings)
        if checks and any(not a.kind.black_box for a in self.attacks):
            warnings += [
                black_box_warning(broken, self.white_robust[i], eps[i], label)
                for (label, i), broken in self.black_broke.items()
                if broken
            ]
        draws = self.draws or 1

        def expected(counts: torch.Tensor) -> float:  # the share of correct passes: plain accuracy for one
            return counts.float().mean().item() / draws

        def by_majority(counts: torch.Tensor) -> float:
            return majority(counts, draws).float().mean().item()

        clean = torch.cat(self.clean)
        per_example = {"clean": majority(clean, draws)}
        robust: dict[str, list[float]] = {}
        voted: dict[str, list[float]] = {}
        for (label, i), flags in self.robust.items():
            counts = torch.cat(flags)
            robust.setdefault(label, []).append(expected(counts))
            voted.setdefault(label, []).append(by_majority(counts))
            per_example[f"{label}@{eps[i]:g}"] = majority(counts, draws)
            if draws > 1:
                per_example[f"{label}@{eps[i]:g} draws"] = counts
        worst = [torch.cat(self.worst[i]) for i in range(len(eps))]
        return EvalResult(
            n=int(clean.numel()),
            clean_accuracy=expected(clean),
            eps=eps,
            attacks={a.label: a.to_dict() for a in self.attacks},
            robust=robust,
            worst_case=[expected(w) for w in worst],
            seconds=time.perf_counter() - self.start,
            model_warnings=warnings,
            attack_seconds=dict(self.attack_seconds),
            minimal_norms={label: torch.cat(parts) for label, parts in self.norms.items()},
            draws=draws,
            majority=None
            if draws == 1
            else {
                "clean_accuracy": by_majority(clean),
                "robust_accuracy": voted,
                "worst_case_accuracy": [by_majority(w) for w in worst],
            },
            per_example=per_example if keep_per_example else {},
        )


__all__ = ["DRAWS", "BatchVerdicts", "EvalResult", "Tally", "majority"]
