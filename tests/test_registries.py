"""A new training method, defense or certifier is one registration: the command line's choices and help and
the configs find it, as docs/architecture.md shows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advlab.certify import CERTIFIERS, Option, register_certifier, verified_flags
from advlab.cli import main
from advlab.defenses import DEFENSES, Preprocessing, parse_defense, register_defense
from advlab.errors import AdvlabError
from advlab.train import TrainConfig
from advlab.train.config import load_config
from advlab.train.methods import METHODS, BatchOutput, Method, Setting, declared_settings, register_method


@pytest.fixture
def toy_method():
    @register_method
    class Noisy(Method):
        """Cross-entropy on x plus uniform noise."""

        name, family, summary = "toy-noisy", "natural", "cross-entropy on noisy toy images"
        adversarial = False
        settings = (
            Setting("toy_noise", float, 0.1, "a tenth of the pixel range", "the toy noise's amplitude", low=0.0),
        )

        def loss(self, model, x, y, *, eps, alpha, generator):
            logits = model((x + self.config.option("toy_noise") * torch.rand_like(x)).clamp(0, 1))
            return BatchOutput(F.cross_entropy(logits, y), logits, None)

    yield Noisy
    del METHODS["toy-noisy"]


@pytest.fixture
def toy_defense():
    @register_defense
    class Clip(Preprocessing):
        name, summary = "toy-clip", "pixels clipped to [low, 1 - low]"

        def __init__(self, low: float = 0.1) -> None:
            super().__init__()
            self.low = float(low)

        def transform(self, x):
            return x.clamp(self.low, 1 - self.low)

        def parameters_dict(self):
            return {"low": self.low}

    yield Clip
    del DEFENSES["toy-clip"]


@pytest.fixture
def toy_certifier():
    eps = Option("eps", float, None, "the L∞ budget, e.g. 0.1 or 8/255", low=0.0, high=1.0, required=True)

    def flags(model, data, eps, device=None):
        return verified_flags(model, data, eps, device=device)

    @register_certifier(
        "toy-interval",
        summary="a toy IBP certifier",
        options=(eps,),
        flags=flags,
        describe=lambda r: f"toy verified {r['verified_accuracy']:.3f}",
    )
    def interval(model, x, y, *, options, classes, batch_size, seed, device, progress, record):
        found = flags(model, (x, y), options["eps"], device=device)
        return {"images": len(y), "eps": options["eps"], "verified_accuracy": float(found.float().mean())}

    yield interval
    del CERTIFIERS["toy-interval"]


def _help(capsys, *argv) -> str:
    """The command's --help without whitespace (argparse wraps it anywhere, hyphens included)."""
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return "".join(capsys.readouterr().out.split())


def _flat(text: str) -> str:
    return "".join(text.split())


def test_a_registered_method_is_in_the_help_and_the_configs(toy_method, capsys, tmp_path):
    text = _help(capsys, "train")
    assert _flat("toy-noisy (cross-entropy on noisy toy images)") in text and "--toy-noise" in text
    assert _flat("the toy noise's amplitude") in text
    config = TrainConfig(method="toy-noisy", toy_noise=0.2)
    assert config.option("toy_noise") == 0.2 and config.to_dict()["toy_noise"] == 0.2
    assert TrainConfig.from_dict(config.to_dict()) == config
    (tmp_path / "toy.toml").write_text('[train]\nmethod = "toy-noisy"\ntoy_noise = 0.3\n')
    assert load_config(tmp_path / "toy.toml").option("toy_noise") == 0.3
    assert config.recipe == "fashion-mnist"  # its family's recipe
    with pytest.raises(AdvlabError, match="toy_noise"):
        TrainConfig(method="toy-noisy", toy_noise=-1.0)
    assert "toy_noise" in declared_settings()


def test_a_registered_method_trains_from_the_command_line(toy_method, tmp_path):
    assert (
        main(
            [
                "train",
                "--method",
                "toy-noisy",
                "--toy-noise",
                "0.05",
                "--train-size",
                "200",
                "--epochs",
                "1",
                "--val-size",
                "100",
                "--check-examples",
                "50",
                "--quiet",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    assert load_config(tmp_path / "run").option("toy_noise") == 0.05


def test_a_registered_defense_is_in_the_help_and_the_configs(toy_defense, capsys):
    from advlab.study import StudyConfig

    assert _flat("toy-clip:low=0.1 (pixels clipped to [low, 1 - low])") in _help(capsys, "evaluate")
    defense = parse_defense("toy-clip:low=0.2")
    assert defense.low == 0.2 and defense(torch.zeros(1, 1, 2, 2)).min() == pytest.approx(0.2)
    study = StudyConfig.from_dict(
        {"defenses": ["toy-clip:low=0.2"], "models": {"standard": {}, "pgd": {"method": "pgd"}}}
    )
    assert study.defenses == ("toy-clip:low=0.2",)


def test_a_registered_certifier_is_in_the_help_and_the_configs(toy_certifier, capsys, trained_checkpoint, tmp_path):
    from advlab.study import StudyConfig

    assert _flat("toy-interval (a toy IBP certifier)") in _help(capsys, "certify")
    assert (
        main(
            [
                "certify",
                str(trained_checkpoint),
                "--method",
                "toy-interval",
                "--eps",
                "0.01",
                "--images",
                "40",
                "--quiet",
            ]
        )
        == 0
    )
    assert "toy verified" in capsys.readouterr().out
    study = StudyConfig.from_dict({"verifier": "toy-interval", "models": {"standard": {}, "pgd": {"method": "pgd"}}})
    assert study.verifier == "toy-interval"
    with pytest.raises(AdvlabError, match="certifies no L∞ example"):
        StudyConfig.from_dict({"verifier": "smoothing", "models": {"standard": {}, "pgd": {"method": "pgd"}}})
