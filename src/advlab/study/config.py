"""A study's settings: :class:`StudyConfig`, read from a TOML file or a shipped preset, every value checked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from advlab.attacks import AttackSpec, parse_attack
from advlab.attacks.suites import suite_attacks
from advlab.certify.smoothing import check_settings
from advlab.defenses import parse_defense
from advlab.errors import AdvlabError, check_range
from advlab.files import safe_name
from advlab.masking_attacks import is_pgd, is_single_step
from advlab.presets import preset_text
from advlab.schema import check_fields
from advlab.train import TrainConfig


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study does; saved, resolved, as ``config.json`` in the run folder."""

    preset: str = "custom"  # a name for the report's heading
    dataset: str = "fashion-mnist"  # the offline data set every machine here has
    seed: int = 0  # one seed for training and attacks: the same seed gives the same metrics on CPU
    train_eps: float = 0.1  # the usual L∞ budget for Fashion-MNIST (Croce et al. 2019)
    # Up to 3× the training ε: far enough that every model falls to chance (a sanity check needs it).
    eps_grid: tuple[float, ...] = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)
    attacks: tuple[str, ...] = ("fgsm", "pgd20")  # single-step against iterative, per model and ε
    # The sanity checks' other loss and gradient-free attack, on what the study's attacks left robust at the
    # training ε (AutoAttack's budgets: 100 iterations, 5,000 queries).
    check_dlr: str = "apgd-dlr100"
    check_square: str = "square5000"
    # The strong evaluation behind each model's headline at the training ε (advlab.attacks.suites): its
    # gradient attacks run on what the study's attacks left, before the checks (Square is check_square).
    suite: str = "standard"
    n_eval: int = 1000  # test images per evaluation: ±1.5 points of binomial noise at 1,000
    # The arms race (advlab.study.arms_race): the standard and the most robust model behind each
    # preprocessing defense, attacked obliviously, naively and adaptively at the training ε. Empty: skipped.
    defenses: tuple[str, ...] = (
        "jpeg:quality=75",
        "bits:bits=4",
        "bits:bits=1",
        "median:size=3",
        "resize-pad:min_scale=0.8",
    )
    # Naive as it is; adaptive with -bpda, or -eotK through a random defense. APGD-CE, not PGD: through the
    # random resize-and-pad, PGD-50 with EOT stayed points above the undefended model (BENCHMARKS.md, the arms race).
    arms_race_attack: str = "apgd-ce100"
    arms_race_eot: int = 20  # draws per EOT gradient (Athalye et al. 2018 use tens)
    arms_race_n: int = 1000  # test images (the first ones), at most n_eval
    # The certified stage (advlab.study.certified): every model's IBP-verified accuracy at the training ε on
    # the n_eval images, and for a model trained with --method gaussian randomized smoothing's CERTIFY.
    certify: bool = True
    # The certifier behind each model's verified accuracy (a registered one that verifies L∞ examples one by
    # one, advlab.certify.registry): IBP goes through every network with the supported layers.
    verifier: str = "ibp"
    smoothing_n: int = 10_000  # estimation samples per image (Cohen et al.: 100,000; 10,000 bounds p̲ ≤ 0.9993)
    smoothing_n0: int = 100  # selection samples per image (Cohen et al.'s n₀)
    smoothing_alpha: float = 0.001  # each certificate fails with probability at most α (Cohen et al.)
    smoothing_images: int = 500  # the first test images CERTIFY runs on (n forward passes each)
    gallery_size: int = 6  # rows in the gallery picture
    # The report's interactive explorer (advlab.study.explorer): this many test images covering the classes,
    # every model, every ε of the grid; 0: no explorer. 20 = two per class of a 10-class set.
    explorer_size: int = 20
    targeted_eps: float = 0.2  # targeted attacks need more room than untargeted ones on small images
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig settings shared by every model
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> TrainConfig overrides (+ label)
    data_dir: str | None = None  # where the data set lives, if not in the default places

    def __post_init__(self) -> None:
        check_range("train_eps", self.train_eps, 0.0, 1.0)
        check_range("targeted_eps", self.targeted_eps, 0.0, 1.0)
        for eps in self.eps_grid:
            check_range("eps_grid entry", eps, 0.0, 1.0)
        if list(self.eps_grid) != sorted(set(self.eps_grid)) or len(self.eps_grid) < 2:
            raise AdvlabError(f"eps_grid must hold at least two increasing values, got {list(self.eps_grid)}")
        if self.train_eps not in self.eps_grid:
            raise AdvlabError(f"eps_grid must contain train_eps = {self.train_eps}")
        if self.n_eval < 1 or self.gallery_size < 1:
            raise AdvlabError("n_eval and gallery_size must be at least 1")
        if not 0 <= self.explorer_size <= 100:
            raise AdvlabError(f"explorer_size must be from 0 (no explorer) to 100, got {self.explorer_size}")
        if self.eps_grid[-1] <= self.train_eps:
            raise AdvlabError(
                f"eps_grid must go beyond train_eps = {self.train_eps} (a sanity check needs accuracy "
                "to reach chance at large ε)"
            )
        specs = [parse_attack(a) for a in self.attacks]
        if not any(is_single_step(s) for s in specs) or not any(is_pgd(s) for s in specs):
            raise AdvlabError("a study's attacks must include fgsm and a pgd attack (its sanity checks compare them)")
        if any(s.targeted for s in specs):
            raise AdvlabError(
                "a study's attacks are untargeted (its checks and gallery use them on true labels); "
                "evaluate targeted attacks with `advlab evaluate --attack NAME-targeted`"
            )
        if len({s.norm for s in specs}) > 1:
            raise AdvlabError(
                "a study's attacks must share one norm (the worst case over attacks is per ε); got "
                + ", ".join(self.attacks)
            )
        dlr = parse_attack(self.check_dlr)
        if (dlr.kind.fixed_loss or dlr.loss) != "dlr" or (dlr.kind.fixed_loss and not dlr.kind.cross_entropy_twin):
            raise AdvlabError(
                f"check_dlr must be an attack on the DLR loss (apgd-dlr100, pgd50-dlr), got {self.check_dlr!r}"
            )
        if not parse_attack(self.check_square).kind.black_box:
            raise AdvlabError(f"check_square must be a gradient-free attack (square5000), got {self.check_square!r}")
        suite_attacks(self.suite)  # an unknown suite is a one-line error here
        for text in self.defenses:
            parse_defense(text)  # an unknown defense or parameter is a one-line error here
        arms = parse_attack(self.arms_race_attack)
        if arms.kind.black_box or arms.targeted or arms.bpda or arms.eot > 1:
            raise AdvlabError(
                f"arms_race_attack must be an untargeted gradient attack without -bpda or -eot (the "
                f"stage adds them), got {self.arms_race_attack!r}"
            )
        try:
            check_settings(1.0, self.smoothing_n, self.smoothing_n0, self.smoothing_alpha)  # σ: each model's own
        except AdvlabError as err:
            flags = {"--n0": "smoothing_n0", "--n": "smoothing_n", "--alpha": "smoothing_alpha"}
            message = str(err)
            for flag, setting in flags.items():
                message = message.replace(f"{flag} ", f"{setting} ")
            raise AdvlabError(f"study setting: {message}") from None
        from advlab.certify import get_certifier

        if get_certifier(self.verifier).flags is None:
            raise AdvlabError(
                f"verifier {self.verifier!r} certifies no L∞ example by example; choose one that does (ibp, crown-ibp)"
            )
        if self.smoothing_images < 1:
            raise AdvlabError(f"smoothing_images must be at least 1, got {self.smoothing_images}")
        if self.arms_race_eot < 1 or self.arms_race_n < 1:
            raise AdvlabError(
                f"arms_race_eot and arms_race_n must be at least 1, got {self.arms_race_eot} and {self.arms_race_n}"
            )
        if "standard" not in self.models or len(self.models) < 2:
            raise AdvlabError("a study needs a model named 'standard' and at least one adversarially trained model")
        for name in self.models:
            safe_name(name, "model name")  # it becomes models/NAME: never a path out of --out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StudyConfig:
        check_fields(values, cls, what="study setting")
        values = dict(values)
        for key in ("eps_grid", "attacks", "defenses"):
            if key in values:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except TypeError as err:
            raise AdvlabError(f"bad study settings: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def attack_specs(self) -> list[AttackSpec]:
        return [parse_attack(a) for a in self.attacks]

    def train_config(self, name: str) -> TrainConfig:
        """The resolved :class:`advlab.train.TrainConfig` of model ``name``."""
        overrides = {k: v for k, v in self.models[name].items() if k != "label"}
        values = {
            "dataset": self.dataset,
            "eps": self.train_eps,
            "seed": self.seed,
            "data_dir": self.data_dir,
            **self.train,
            **overrides,
        }
        return TrainConfig.from_dict(values)

    def label(self, name: str) -> str:
        return str(self.models[name].get("label", name))


def load_study_config(source: str | Path | None = None, *, preset: str | None = None) -> StudyConfig:
    """Read a study from a TOML file (``[study]``, ``[train]`` and ``[models.NAME]`` tables) or a shipped
    preset (``preset="quick"``, the default without a file)."""
    if source is not None and preset is not None:
        raise AdvlabError("give either a CONFIG.toml or --preset, not both")
    if source is None:
        preset = preset or "quick"
        text, where = preset_text("study", preset), f"preset {preset!r}"
    else:
        path = Path(source)
        try:
            text, where = path.read_text(encoding="utf-8"), str(path)
        except FileNotFoundError:
            raise AdvlabError(f"study config {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise AdvlabError(f"cannot read {path}: {err}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise AdvlabError(f"{where} is not a valid TOML file: {err}") from None
    unknown = sorted(set(raw) - {"study", "train", "models"})
    if unknown:
        raise AdvlabError(f"{where}: unknown tables {unknown}; use [study], [train] and [models.NAME]")
    values = dict(raw.get("study", {}))
    values.setdefault("preset", preset or Path(source).stem)
    return StudyConfig.from_dict({**values, "train": raw.get("train", {}), "models": raw.get("models", {})})


__all__ = ["StudyConfig", "load_study_config"]
