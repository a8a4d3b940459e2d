"""Checksummed checkpoints and `advlab verify`: a flipped bit, bad weights or a bad record are refused with
one line naming the file; an unfinished run is said so (issue 14)."""

from __future__ import annotations

import json
import random
import struct
import warnings

import pytest
import torch
from safetensors.torch import save_file

from advlab.cli import main
from advlab.errors import AdvlabError
from advlab.files import write_json
from advlab.models import create_model
from advlab.runs import load_checkpoint, save_checkpoint
from advlab.tensor_files import UncheckedFileWarning

ARGS = {"in_channels": 1, "num_classes": 3, "height": 4, "width": 4}


def _saved(tmp_path, **record):
    torch.manual_seed(0)
    model = create_model("linear", **ARGS)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, {"model": "linear", "model_args": ARGS, **record})
    return path, model


def _data_region(path) -> tuple[int, int]:
    """Where a safetensors file keeps its tensors' bytes: after the 8-byte header length and the header."""
    raw = path.read_bytes()
    (header,) = struct.unpack("<Q", raw[:8])
    return 8 + header, len(raw)


def test_every_single_bit_flip_in_the_weights_is_detected(tmp_path):
    path, _ = _saved(tmp_path)
    pristine = path.read_bytes()
    start, end = _data_region(path)
    rng = random.Random(0)
    detected = 0
    for _ in range(20):
        position, bit = rng.randrange(start, end), rng.randrange(8)
        damaged = bytearray(pristine)
        damaged[position] ^= 1 << bit
        path.write_bytes(bytes(damaged))
        with pytest.raises(AdvlabError, match=r"model\.safetensors is damaged") as err:
            load_checkpoint(path)
        detected += 1
        assert "\n" not in str(err.value)
    assert detected == 20
    path.write_bytes(pristine)
    load_checkpoint(path)  # the intact file still loads


def test_damage_is_named_before_the_nan_it_causes(tmp_path):
    # The checksums are computed beside the model's rebuilding: a flipped exponent bit that turns a weight
    # into infinity must still be reported as damage to the file, and no model is returned.
    path, _ = _saved(tmp_path)
    start, _ = _data_region(path)
    raw = bytearray(path.read_bytes())
    raw[start + 3] |= 0x7F  # the first float32 weight's sign-exponent byte: exponent all ones, inf or NaN
    raw[start + 2] |= 0x80
    path.write_bytes(bytes(raw))
    with pytest.raises(AdvlabError, match=r"model\.safetensors is damaged: the bytes of "):
        load_checkpoint(path)


def test_a_changed_record_is_detected(tmp_path):
    path, _ = _saved(tmp_path)
    raw = path.read_bytes()
    assert raw.count(b'"num_classes\\": 3') == 1
    path.write_bytes(raw.replace(b'"num_classes\\": 3', b'"num_classes\\": 4'))  # same length, valid JSON
    with pytest.raises(AdvlabError, match="metadata"):
        load_checkpoint(path)


def _legacy(tmp_path, tensors, model_args=ARGS):
    """A checkpoint as advlab wrote it before checksums (or as another program might)."""
    path = tmp_path / "legacy.safetensors"
    save_file(tensors, str(path), metadata={"advlab": json.dumps({"model": "linear", "model_args": model_args})})
    return path


def test_a_file_without_checksums_loads_with_a_note(tmp_path):
    model = create_model("linear", **ARGS)
    path = _legacy(tmp_path, {k: v.contiguous() for k, v in model.state_dict().items()})
    with pytest.warns(UncheckedFileWarning, match="no checksums"):
        loaded, _ = load_checkpoint(path)
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: {**t, "1.linear.weight": torch.full_like(t["1.linear.weight"], float("nan"))}, "NaN or infinite"),
        (
            lambda t: {**t, "1.linear.bias": t["1.linear.bias"].to(torch.int32)},
            "stored as int32 but the model declares float32",
        ),
        (lambda t: {**t, "1.linear.bias": torch.zeros(5)}, "shape"),
    ],
)
def test_weights_the_model_does_not_declare_are_refused(tmp_path, change, message):
    model = create_model("linear", **ARGS)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert "1.linear.weight" in tensors and "1.linear.bias" in tensors
    path = _legacy(tmp_path, change(tensors))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncheckedFileWarning)
        with pytest.raises(AdvlabError, match=message):
            load_checkpoint(path)


def test_a_record_that_cannot_build_the_model_is_one_line(tmp_path):
    model = create_model("linear", **ARGS)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = _legacy(tmp_path, tensors, model_args={**ARGS, "num_classes": -3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncheckedFileWarning)
        with pytest.raises(AdvlabError, match="model_args num_classes must be at least 1, got -3") as err:
            load_checkpoint(path)
    assert "\n" not in str(err.value)
    path = _legacy(tmp_path, tensors, model_args={**ARGS, "num_classes": "three"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncheckedFileWarning)
        with pytest.raises(AdvlabError, match="model_args num_classes must be an integer or none, got 'three'"):
            load_checkpoint(path)
    path = _legacy(tmp_path, tensors, model_args={**ARGS, "colour": True})  # the constructor refuses it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncheckedFileWarning)
        with pytest.raises(AdvlabError, match="bad arguments for model 'linear'"):
            load_checkpoint(path)


def test_verify_a_run_folder(tmp_path, capsys):
    path, _ = _saved(tmp_path, epoch=2, config={"epochs": 2})
    assert main(["verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "checksums match" in out and "training finished (2 of 2 epochs)" in out
    start, _ = _data_region(path)
    raw = bytearray(path.read_bytes())
    raw[start] ^= 0x10
    path.write_bytes(bytes(raw))
    assert main(["verify", str(tmp_path)]) == 1
    assert "damaged" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "nothing-here")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_verify_finds_a_record_beside_the_file_that_disagrees(tmp_path, capsys):
    path, _ = _saved(tmp_path, epoch=2, config={"epochs": 2})
    record = json.loads(path.with_suffix(".json").read_text())
    write_json(path.with_suffix(".json"), {**record, "epoch": 7})
    assert main(["verify", str(path)]) == 1
    assert "differs from the record inside the file" in capsys.readouterr().out


def test_an_unfinished_run_is_said_and_can_be_refused(tmp_path, capsys):
    _saved(tmp_path, epoch=1, config={"epochs": 10})
    assert main(["verify", str(tmp_path)]) == 0
    assert "did not finish (epoch 1 of 10)" in capsys.readouterr().out
    # Evaluate refuses before any work with --require-finished (the linear model fits no real data set:
    # the refusal must come first).
    code = main(["evaluate", str(tmp_path), "--eps", "0.1", "--n", "4", "--quiet", "--require-finished"])
    assert code == 2
    err = capsys.readouterr().err
    assert "did not finish (epoch 1 of 10)" in err and err.count("\n") == 1


def _hold_lock(target):
    """Another process holding the run lock of ``target`` until killed."""
    import subprocess
    import sys

    code = (
        "import sys, time\nfrom advlab.files import run_lock\nwith run_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n    time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    from conftest import have_fashion_mnist

    from advlab.files import lock_path, run_lock

    run = tmp_path / "run"
    run.mkdir()
    holder = _hold_lock(run)
    try:
        with pytest.raises(AdvlabError, match=rf"another advlab process \(pid {holder.pid}\) is writing to"):
            with run_lock(run):
                pass
        if have_fashion_mnist():  # the real command, refused after its checks and before any training
            code = main(
                ["train", "--out", str(run), "--epochs", "1", "--train-size", "64", "--val-size", "32", "--quiet"]
            )
            err = capsys.readouterr().err
            assert code == 2 and "is writing to" in err and err.count("\n") == 1
            assert [p.name for p in run.iterdir()] == [".advlab.lock"]  # nothing of the refused run written
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(run).exists()  # left behind by the killed process: stale, and taken over
    with run_lock(run):
        assert lock_path(run).read_text().strip() == str(__import__("os").getpid())
    assert not lock_path(run).exists()


def _fashion_linear(tmp_path, **args):
    from conftest import have_fashion_mnist

    if not have_fashion_mnist():
        pytest.skip("needs Fashion-MNIST (Debian's dataset-fashion-mnist)")
    args = {"in_channels": 1, "num_classes": 10, "height": 28, "width": 28, **args}
    model = create_model("linear", **args)
    save_checkpoint(
        tmp_path / "model.safetensors",
        model,
        {"model": "linear", "model_args": args, "dataset": "fashion-mnist", "epoch": 1, "config": {"epochs": 1}},
    )
    return tmp_path


def test_a_refused_command_leaves_no_new_folder(tmp_path, capsys):
    run = _fashion_linear(tmp_path)
    out = tmp_path / "new" / "attack"
    # ε beyond the pixel range is refused before any work, and --out is not created
    assert main(["attack", str(run), "--eps", "7", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--eps for PGD-20 L∞ must be between 0 and 1, got 7.0" in err and err.count("\n") == 1
    assert not (tmp_path / "new").exists()
    assert main(["evaluate", str(run), "--eps", "0.1,7", "--out", str(out / "eval.json"), "--quiet"]) == 2
    assert "must be between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        ({"in_channels": 3, "height": 32, "width": 32}, "takes 3-channel images but fashion-mnist has 1×28×28"),
        ({"height": 32, "width": 32}, "cannot take fashion-mnist's 1×28×28 images"),
        ({"num_classes": 4}, "gives (4,) outputs per image but fashion-mnist has 10 classes"),
    ],
)
def test_a_model_built_for_other_images_is_refused_before_work(tmp_path, capsys, args, message):
    run = _fashion_linear(tmp_path, **args)
    assert main(["evaluate", str(run), "--eps", "0.1", "--n", "8", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_model_made_for_32x32_colour_images_does_not_train_on_28x28_grey_ones():
    with pytest.raises(AdvlabError, match="built for 32×32 images but fashion-mnist has 28×28"):
        create_model("preact_resnet18", dataset="fashion-mnist")


def test_seeds_beyond_the_generator_are_one_line(tmp_path, capsys):
    run = _fashion_linear(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(run), "--eps", "0.1", "--seed", str(2**64)])
    assert exit_.value.code == 2 and "a seed must be from 0 to 2^63 - 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "[study]\ntrain_eps = 0.1\n[models.standard]\nmethod = 'standard'\n[models]\npgd = 5\n",
            "study setting models must be a table",
        ),
        (
            "[study]\neps_grid = [0.0, 'a lot']\n",
            "study setting eps_grid must be a list of numbers, got [0.0, 'a lot']",
        ),
        ("[study]\nn_eval = '500'\n", "study setting n_eval must be an integer, got '500'"),
    ],
)
def test_study_config_errors_name_the_setting(tmp_path, text, message):
    from advlab.study import load_study_config

    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(AdvlabError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_study_config(path)


def test_training_config_errors_name_the_setting():
    from advlab.train import TrainConfig

    with pytest.raises(AdvlabError, match="training setting epochs must be an integer or none, got 'ten'"):
        TrainConfig.from_dict({"epochs": "ten"})
    with pytest.raises(AdvlabError, match="unknown training settings: epoch; known:"):
        TrainConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize(
    "cls, values, message",
    [
        (
            "Evaluation",
            {
                "n": 10,
                "clean_accuracy": 0.9,
                "eps": [0.1],
                "robust_accuracy": {"PGD-20": "high"},
                "worst_case_accuracy": [0.5],
            },
            r"robust_accuracy must be a table",
        ),
        (
            "Evaluation",
            {"n": "10", "clean_accuracy": 0.9, "eps": [0.1], "robust_accuracy": {}, "worst_case_accuracy": [0.5]},
            r"field n must be an integer, got '10'",
        ),
        ("AttackOutput", {"classes": "cat,dog"}, r"field classes must be a list of strings"),
        ("RunSummary", {"epochs_completed": 1.5}, r"field epochs_completed must be an integer"),
        ("CheckMeasurements", {"eps": 0.1, "n": 10}, r"field worst_case_all is missing"),
    ],
)
def test_files_read_back_are_checked_against_their_declaration(tmp_path, cls, values, message):
    from advlab import schema

    path = tmp_path / "file.json"
    write_json(path, values)
    with pytest.raises(AdvlabError, match=message) as err:
        schema.read_checked(path, getattr(schema, cls))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_nested_declarations_name_the_dotted_path():
    from advlab.schema import check_metrics

    metrics = {
        "eps_grid": [0.0, 0.1],
        "models": {"pgd": {"clean_accuracy": 0.8, "robust_accuracy": {"PGD": [0.8, 0.6]}}},
        "sanity_checks": [{"check": "falls with ε", "status": "pass"}, {"check": "x", "passed": "yes"}],
    }
    with pytest.raises(AdvlabError, match=r"sanity_checks\[1\]\.passed must be true or false"):
        check_metrics(metrics, "metrics.json")
    metrics["sanity_checks"][1] = {"check": "x", "status": "maybe"}
    with pytest.raises(AdvlabError, match="status must be pass, fail or not applicable"):
        check_metrics(metrics, "metrics.json")
    metrics["sanity_checks"].pop()
    assert check_metrics(metrics, "metrics.json") is metrics
    metrics["models"]["pgd"]["clean_accuracy"] = "0.8"
    with pytest.raises(AdvlabError, match=r"models\.pgd\.clean_accuracy must be a number"):
        check_metrics(metrics, "metrics.json")
