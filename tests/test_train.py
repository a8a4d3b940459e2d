"""Training: every method learns, AT beats standard, the guards act, resume is bit-identical, bad input fails early."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import have_fashion_mnist

from advlab.errors import AdvlabError
from advlab.evaluate import clean_accuracy
from advlab.files import read_json
from advlab.runs import load_checkpoint
from advlab.tensor_files import load_tensors
from advlab.train import METHODS, TrainConfig, load_config, train
from advlab.train.state import scores_better

pytestmark = pytest.mark.skipif(
    not have_fashion_mnist(), reason="Fashion-MNIST not found ($ADVLAB_DATA, cache, or Debian's dataset-fashion-mnist)"
)

# Tiny but real: 1,200 Fashion-MNIST images, 2 passes, short attacks. Seconds per method on 2 cores.
TINY = dict(
    train_size=1200,
    val_size=200,
    check_examples=100,
    check_steps=5,
    batch_size=50,
    epochs=2,
    steps=2,
    schedule="constant",
    lr=3e-3,
    eps=0.15,
)


def tiny(method: str = "standard", **changes) -> TrainConfig:
    values = {**TINY, "method": method, **changes}
    if method == "free":  # free runs ⌈epochs / replays⌉ passes: keep two passes of two replays
        values.setdefault("replays", 2)
        values["epochs"] = values["epochs"] * values["replays"]
    return TrainConfig(**values)


def rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def tensors(path) -> dict[str, torch.Tensor]:
    return load_tensors(path)[0]


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, tuple]:
    """Each method trained once on the tiny setup: {method: (folder, summary)}."""
    results = {}
    for method in METHODS:
        folder = tmp_path_factory.mktemp(method) / "run"
        results[method] = folder, train(tiny(method), folder, progress=False)
    return results


# ----------------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_learns(trained, method):
    folder, summary = trained[method]
    history = rows(folder)
    assert [r["epoch"] for r in history] == [1, 2] and summary["epochs_completed"] == 2 and summary["finished"]
    certified = METHODS[method].bounds is not None
    if not certified:  # ibp's second epoch ramps ε up from its clean first one: a harder loss, not a worse model
        assert history[1]["train_loss"] < history[0]["train_loss"]
    else:
        assert history[0]["eps"] == 0 < history[1]["eps"]
        assert all(0 <= r["val_verified_acc"] <= r["val_clean_acc"] for r in history)  # tests/test_certify.py: it rises
    assert summary["val_clean_accuracy"] > 0.5  # chance is 0.1
    for r in history:
        assert 0 <= r["val_robust_acc"] <= r["val_clean_acc"] + 0.05  # robust ≤ clean, up to sampling
        no_bound = certified and r["eps"] == 0  # ibp's clean warm-up has no bounds to be verified by
        assert (r["train_adv_acc"] is None) == (method in ("standard", "gradreg", "gaussian") or no_bound)
        assert (r["train_clean_acc"] is None) == (
            method in ("fgsm", "nfgsm", "gradalign", "pgd", "free")
        )  # no extra forward pass


def test_adversarial_training_beats_standard(trained):
    standard = trained["standard"][1]["val_robust_accuracy"]
    for method in ("fgsm", "pgd", "trades"):
        assert trained[method][1]["val_robust_accuracy"] > standard + 0.1, (method, standard)


def test_gradient_regularization_flattens_the_input_gradient(trained):
    """gradreg's whole point (Ross & Doshi-Velez 2018): a smaller ‖∇ₓ CE‖ than standard training's."""
    from advlab.data import load_dataset
    from advlab.runs import load_checkpoint

    x, y = load_dataset("fashion-mnist", "test", download=False, progress=False).subset(200).tensors()
    norms = {}
    for method in ("standard", "gradreg"):
        model, _ = load_checkpoint(trained[method][0] / "model.safetensors")
        x_in = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x_in), y, reduction="sum"), x_in)
        norms[method] = grad.flatten(1).norm(dim=1).mean().item()
    assert norms["gradreg"] < 0.7 * norms["standard"], norms


def test_free_perturbation_stays_in_the_ball(trained):
    state = tensors(trained["free"][0] / "state.safetensors")
    delta = state["method.delta"]
    assert delta.shape == (TINY["batch_size"], 1, 28, 28)
    assert 0 < delta.abs().max() <= TINY["eps"] + 1e-7


# ------------------------------------------------------------------------------------------- files


def test_run_folder_and_checkpoints(trained):
    folder, summary = trained["pgd"]
    for name in (
        "config.json",
        "model.safetensors",
        "model.json",
        "best.safetensors",
        "best.json",
        "metrics.jsonl",
        "metrics.csv",
        "state.safetensors",
        "summary.json",
    ):
        assert (folder / name).is_file(), name
    with open(folder / "metrics.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 2 and table[1]["epoch"] == "2" and table[0]["train_clean_acc"] == ""
    assert float(table[1]["val_robust_acc"]) == pytest.approx(rows(folder)[1]["val_robust_acc"])
    saved = read_json(folder / "config.json")
    assert saved["config"] == tiny("pgd").resolved().to_dict() and saved["versions"]["torch"] == torch.__version__
    assert saved["config"]["alpha"] == pytest.approx(2.5 * TINY["eps"] / 2)
    assert read_json(folder / "summary.json") == summary

    model, record = load_checkpoint(folder / "model.safetensors")
    assert record["epoch"] == 2 and record["config"]["method"] == "pgd" and record["dataset"] == "fashion-mnist"
    assert record["model_args"]["in_channels"] == 1 and record["normalization"]["mean"] == [0.286]
    # The checkpoint predicts exactly as the trained weights did: same validation accuracy as recorded ...
    from advlab.data import load_dataset

    val = load_dataset("fashion-mnist", "val", val_size=TINY["val_size"], progress=False)
    assert clean_accuracy(model, val) == record["metrics"]["val_clean_acc"]
    # ... and the same logits as the weights in the resume state.
    state = tensors(folder / "state.safetensors")
    twin, _ = load_checkpoint(folder / "model.safetensors")
    twin.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))
    _, best_record = load_checkpoint(folder)  # a run folder means best.safetensors
    assert best_record["epoch"] == summary["best_epoch"]
    assert best_record["metrics"]["val_robust_acc"] == max(r["val_robust_acc"] for r in rows(folder))
    # The most robust epoch, a tie going to the higher clean accuracy (the first of exact equals).
    assert summary["best_epoch"] == max(rows(folder), key=lambda r: (r["val_robust_acc"], r["val_clean_acc"]))["epoch"]


def test_a_tie_on_the_best_score_goes_to_the_cleaner_epoch():
    assert scores_better((0.5, 0.9), None)  # the first epoch
    assert scores_better((0.6, 0.8), (0.5, 0.9))  # more robust, whatever its clean accuracy
    assert not scores_better((0.5, 0.99), (0.6, 0.8))
    assert scores_better((0.861, 0.986), (0.861, 0.982))  # MNIST seed 1: epoch 10 over epoch 7
    assert not scores_better((0.861, 0.982), (0.861, 0.982))  # exact equals: the earlier epoch stays
    assert not scores_better((0.861, 0.990), (0.861, None))  # a held epoch with no clean reading stays


# ------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("method, optimizer", [("fgsm", "adam"), ("free", "sgd"), ("trades", "sgd")])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, method, optimizer):
    config = tiny(
        method,
        optimizer=optimizer,
        lr=0.02 if optimizer == "sgd" else 3e-3,
        train_size=200,
        epochs=3,
        schedule="onecycle",
        eps_warmup_epochs=1.5 if method != "free" else 3.0,
    )
    whole = train(config, tmp_path / "whole", progress=False)
    part = train(config, tmp_path / "part", progress=False, stop_after_epochs=1)
    assert part["epochs_completed"] == 1 and not part["finished"]
    resumed = train(config, tmp_path / "part", progress=False, resume=True)
    assert resumed["epochs_completed"] == whole["epochs_completed"] == config.passes
    for name in ("model.safetensors", "best.safetensors", "state.safetensors"):
        assert same_tensors(tensors(tmp_path / "whole" / name), tensors(tmp_path / "part" / name)), name
    timeless = lambda history: [{k: v for k, v in r.items() if "seconds" not in k} for r in history]  # noqa: E731
    assert timeless(rows(tmp_path / "whole")) == timeless(rows(tmp_path / "part"))
    # A finished run resumes to nothing: same summary, no file touched.
    stamp = (tmp_path / "part" / "model.safetensors").stat().st_mtime_ns
    again = train(config, tmp_path / "part", progress=False, resume=True)
    assert again["epochs_completed"] == config.passes
    assert (tmp_path / "part" / "model.safetensors").stat().st_mtime_ns == stamp


# -------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(eps=-0.1), "eps"),
        (dict(eps=1.5), "eps"),
        (dict(alpha=-0.01), "alpha"),
        (dict(steps=0), "steps"),
        (dict(beta=-1.0), "beta"),
        (dict(method="nope"), "unknown method"),
        (dict(optimizer="lbfgs"), "optimizer"),
        (dict(schedule="cosine"), "schedule"),
        (dict(model="vgg"), "unknown model"),
        (dict(epochs=0), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=0.0), "lr"),
        (dict(steps=2.5), "steps"),
        (dict(eps="0.1"), "eps"),
        (dict(replays=0), "replays"),
        (dict(dataset="imagenet"), "data set"),
        (dict(eps_warmup_epochs=20.0), "eps_warmup_epochs"),
        (dict(random_start=1), "random_start"),
    ],
)
def test_bad_options_fail_with_one_line(change, words):
    with pytest.raises(AdvlabError, match=words) as info:
        TrainConfig(**change)
    assert "\n" not in str(info.value)


def test_from_dict_and_toml(tmp_path):
    with pytest.raises(AdvlabError, match="bogus"):
        TrainConfig.from_dict({"method": "pgd", "bogus": 1})
    config = TrainConfig.from_dict({"method": "TRADES", "eps": 0, "data_dir": None})
    assert config.method == "trades" and isinstance(config.eps, float)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig(method="pgd", steps=10).step_size == pytest.approx(0.025)
    assert TrainConfig(method="fgsm").step_size == pytest.approx(0.125)
    assert TrainConfig(method="free").step_size == pytest.approx(0.1)
    assert TrainConfig(method="free", epochs=10, replays=4).passes == 3
    (tmp_path / "a.toml").write_text('[train]\nmethod = "fgsm"\neps = 0.2\n')
    (tmp_path / "b.toml").write_text('method = "pgd"\nsteps = 3\n')
    (tmp_path / "bad.toml").write_text('method = "pgd"\nstpes = 3\n')
    (tmp_path / "broken.toml").write_text("method = \n")
    assert load_config(tmp_path / "a.toml") == TrainConfig(method="fgsm", eps=0.2)
    assert load_config(tmp_path / "b.toml") == TrainConfig(method="pgd", steps=3)
    for name, words in (("bad.toml", "stpes"), ("broken.toml", "TOML"), ("missing.toml", "does not exist")):
        with pytest.raises(AdvlabError, match=words):
            load_config(tmp_path / name)


def test_shipped_recipes_load():
    from advlab.presets import preset_names

    assert {"quick", "full"} <= set(preset_names("train"))  # found inside the package, not in a checkout
    quick, full = load_config(preset="quick"), load_config(preset="full")
    assert (quick.method, full.method, full.steps) == ("fgsm", "pgd", 10)
    madry, mnist_quick = load_config(preset="madry-mnist"), load_config(preset="mnist-quick")
    assert (madry.model, madry.steps, madry.alpha, madry.eps, madry.batch_size) == ("madry_cnn", 40, 0.01, 0.3, 50)
    assert (mnist_quick.method, mnist_quick.model, mnist_quick.dataset) == ("fgsm", "wong_mnist", "mnist")
    assert mnist_quick.clip_start is False and mnist_quick.epochs == 10  # Wong et al.'s recipe as their code has it
    with pytest.raises(
        AdvlabError,
        match="unknown train preset 'huge'; choose one of: cifar10-fast, cifar10-pgd, full, madry-mnist, mnist-quick, "
        "quick",
    ):
        load_config(preset="huge")


def test_run_folder_refusals_come_before_training(tmp_path):
    config = tiny("standard", train_size=100, epochs=1)
    first = train(config, tmp_path / "run", progress=False)
    assert load_config(tmp_path / "run") == config.resolved()  # a run folder gives back its config
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(AdvlabError, match="not empty"):
        train(config, tmp_path / "run", progress=False)
    with pytest.raises(AdvlabError, match=r"cannot resume .*\(.*eps: .*, method: "):
        train(tiny("pgd", eps=0.2, train_size=100, epochs=1), tmp_path / "run", progress=False, resume=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before  # nothing was touched
    # --overwrite starts afresh; the same seed gives the same weights.
    again = train(config, tmp_path / "run", progress=False, overwrite=True)
    assert again["val_clean_accuracy"] == first["val_clean_accuracy"]
    assert same_tensors(
        tensors(tmp_path / "run" / "model.safetensors"),
        {k: v for k, v in load_tensors_from(before["model.safetensors"]).items()},
    )
    # A folder with nothing in it resumes by starting afresh.
    assert train(config, tmp_path / "empty", progress=False, resume=True)["epochs_completed"] == 1


def load_tensors_from(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)


def test_standard_training_keeps_the_cleanest_epoch_as_best(trained):
    folder, summary = trained["standard"]
    history = rows(folder)
    assert summary["best_epoch"] == max(history, key=lambda r: r["val_clean_acc"])["epoch"]


def test_cli_resume_continues_with_the_runs_own_settings(tmp_path, capsys):
    """`advlab train --resume --out RUN` needs no other flag: the run folder knows its settings."""
    from advlab.cli import main

    config = tiny("fgsm", train_size=200, epochs=2)
    train(config, tmp_path / "run", progress=False, stop_after_epochs=1)
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert read_json(tmp_path / "run" / "summary.json")["epochs_completed"] == 2
    assert main(["train", "--resume", "--eps", "0.3", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "cannot resume" in capsys.readouterr().err
