"""The command line: happy paths, and bad input that must end in one line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from advlab.cli import build_parser, main, parse_number, parse_numbers


def _fails_cleanly(capsys, argv, *, match):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors exit directly
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert match.lower() in err.lower(), err
    return err


def test_cli_evaluation_batch_is_what_memory_fits_up_to_the_library_default(trained_checkpoint, tmp_path):
    """Unset, the batch is chosen from the free memory (a small network: the library's default) and recorded."""
    from advlab.evaluate import DEFAULT_BATCH

    assert build_parser().parse_args(["evaluate", "run", "--eps", "0.1"]).batch_size is None
    out = tmp_path / "e.json"
    assert main(["evaluate", str(trained_checkpoint), "--eps", "0.1", "--n", "5", "--out", str(out), "--quiet"]) == 0
    record = json.loads(out.read_text())
    assert record["batch_size"] == DEFAULT_BATCH and record["batch_size_from"] == "the free memory"
    given = tmp_path / "g.json"
    args = ["evaluate", str(trained_checkpoint), "--eps", "0.1", "--n", "5", "--batch-size", "3", "--out", str(given)]
    assert main([*args, "--quiet"]) == 0
    assert json.loads(given.read_text())["batch_size"] == 3 and "batch_size_from" not in json.loads(given.read_text())


def test_parse_numbers():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_numbers("0.1, 8/255,0") == pytest.approx([0.1, 8 / 255, 0.0])


def test_evaluate_writes_json_and_prints_table(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(
        [
            "evaluate",
            str(trained_checkpoint),
            "--attack",
            "fgsm",
            "--attack",
            "pgd5",
            "--eps",
            "0.05,0.1",
            "--n",
            "100",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["n"] == 100 and data["eps"] == [0.05, 0.1]
    assert f"{100 * data['clean_accuracy']:.2f}%" in printed
    assert data["hyperparameters"]["PGD-5 L∞"][1]["alpha"] == pytest.approx(2.5 * 0.1 / 5)
    assert (data["batch_size"], data["seed"], data["early_stop"], data["chain"]) == (256, 0, True, False)


def test_evaluate_runs_a_suite_as_a_chain(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "quick.json"
    assert (
        main(
            [
                "evaluate",
                str(trained_checkpoint),
                "--suite",
                "quick",
                "--eps",
                "0.05",
                "--n",
                "40",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    saved = json.loads(out.read_text())
    assert saved["suite"] == "quick" and saved["chain"] and saved["model_flags"] == []
    assert list(saved["robust_accuracy"]) == ["APGD-CE-50 L∞", "APGD-T-50 L∞ top-3"]
    ce, t = (saved["robust_accuracy"][k][0] for k in ("APGD-CE-50 L∞", "APGD-T-50 L∞ top-3"))
    assert t <= ce < saved["clean_accuracy"] and saved["worst_case_accuracy"][0] == t  # cumulative
    assert "APGD-T-50 L∞ top-3" in capsys.readouterr().out


def test_attack_writes_gallery_and_examples(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "attack"
    assert (
        main(
            [
                "attack",
                str(trained_checkpoint),
                "--attack",
                "pgd10",
                "--eps",
                "0.1",
                "--n",
                "16",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert (out / "gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "attack.json").read_text())
    assert summary["n"] == 16 and summary["steps"] == 10
    from advlab.tensor_files import load_tensors

    tensors, _ = load_tensors(out / "adversarial.safetensors")
    assert (tensors["x_adv"] - tensors["x"]).abs().max() <= 0.1 + 1e-6
    assert summary["success_rate"] > 0.5 and summary["clean_accuracy"] > 0.5  # the attack fooled the model
    assert (tensors["prediction_adv"] != tensors["labels"]).float().mean() == pytest.approx(summary["success_rate"])


def test_targeted_attack_reaches_its_target(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "targeted"
    assert (
        main(
            [
                "attack",
                str(trained_checkpoint),
                "--attack",
                "pgd50",
                "--eps",
                "0.2",
                "--n",
                "12",
                "--target",
                "8",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert "reached the target" in capsys.readouterr().out
    from advlab.tensor_files import load_tensors

    tensors, _ = load_tensors(out / "adversarial.safetensors")
    summary = json.loads((out / "attack.json").read_text())
    assert summary["targeted"] and summary["target"] == 8 and (tensors["labels"] != 8).all()
    reached = (tensors["prediction_adv"] == 8).float().mean().item()
    assert reached == pytest.approx(summary["success_rate"]) and reached >= 0.75  # an x-returning stub: 0
    assert (out / "gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["evaluate", "{ckpt}", "--eps", "-0.1", "--n", "5"], "eps"),
        (["evaluate", "{ckpt}", "--eps", "1.5", "--n", "5"], "eps"),
        (["evaluate", "{ckpt}", "--eps", "0.1", "--attack", "boundary-attack"], "unknown attack"),
        (["evaluate", "{ckpt}", "--eps", "0.1", "--dataset", "imagenet"], "unknown data set"),
        (["evaluate", "{tmp}/missing.safetensors", "--eps", "0.1"], "does not exist"),
        (["evaluate", "{tmp}/corrupt.safetensors", "--eps", "0.1"], "corrupt"),
        (["evaluate", "{ckpt}", "--eps", "abc"], "not a number"),
        (
            ["evaluate", "{ckpt}", "--eps", "0.1", "--n", "5", "--precision", "fp16", "--device", "cpu"],
            "needs a CUDA device",
        ),
        (["evaluate", "{ckpt}", "--eps", "0.1", "--device", "tpu"], "device"),
        (["evaluate", "{ckpt}", "--eps", "7", "--n", "5"], "eps"),
        (["evaluate", "{ckpt}", "--eps", "0.1", "--attack", "pgd-hinge"], "unknown attack option"),
        (["evaluate", "{ckpt}", "--eps", "0.1", "--suite", "strongest"], "unknown suite"),
        (["evaluate", "{ckpt}", "--eps", "0.1", "--attack", "square0"], "at least 1"),
        (["evaluate", "{ckpt}", "--eps", "0.1", "--attack", "square100-eot5"], "takes no EOT"),
        (["train", "--preset", "huge", "--out", "{tmp}/run"], "unknown train preset"),
        (["train", "--epochs", "1"], "--out is required"),
        (["train", "--preset", "quick", "--config", "{tmp}/a-file", "--out", "{tmp}/run"], "not both"),
        (["study", "--show-preset", "huge"], "unknown study preset"),
        (["attack", "{ckpt}", "--eps", "0.1", "--attack", "pgd-targeted", "--out", "{tmp}/t"], "--target CLASS"),
        (["evaluate", "{ckpt}", "--eps", "0.1", "--threads", "0"], "threads"),
        (["attack", "{ckpt}", "--eps", "0.1", "--out", "{tmp}/a-file/sub"], "cannot write"),
        (["attack", "{ckpt}", "--eps", "0.1", "--target", "12", "--out", "{tmp}/t"], "target"),
        (["train", "--model", "resnet9000", "--out", "{tmp}/run"], "unknown model"),
        (["train", "--dataset", "imagenet", "--out", "{tmp}/run"], "data set"),
        (["train", "--eps", "-1", "--out", "{tmp}/run"], "eps"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, match, trained_checkpoint, tmp_path, capsys):
    (tmp_path / "corrupt.safetensors").write_bytes(b"this is not a checkpoint")
    (tmp_path / "a-file").write_text("keep me")
    argv = [a.format(ckpt=trained_checkpoint, tmp=tmp_path) for a in argv]
    _fails_cleanly(capsys, argv, match=match)
    assert (tmp_path / "a-file").read_text() == "keep me"


def test_existing_outputs_are_never_overwritten(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval.json"
    out.write_text("precious")
    _fails_cleanly(
        capsys, ["evaluate", str(trained_checkpoint), "--eps", "0.1", "--out", str(out)], match="already exists"
    )
    assert out.read_text() == "precious"
    folder = tmp_path / "attack"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    err = _fails_cleanly(
        capsys, ["attack", str(trained_checkpoint), "--eps", "0.1", "--out", str(folder)], match="already exists"
    )
    assert "--resume" not in err  # the refusal names only options the command has
    err = _fails_cleanly(capsys, ["study", "--out", str(folder)], match="already exists")
    assert "--resume" not in err and "--overwrite" in err
    err = _fails_cleanly(capsys, ["train", "--out", str(folder)], match="already exists")
    assert "--resume" in err
    assert (folder / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_console_script_help_and_error_exit_codes():
    run = [sys.executable, "-m", "advlab.cli"]
    help_text = subprocess.run(run + ["evaluate", "--help"], capture_output=True, text=True, check=True).stdout
    assert "examples:" in help_text
    bad = subprocess.run(run + ["evaluate", "nowhere", "--eps", "0.1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal where there is no CUDA")
@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "{ckpt}", "--eps", "0.1"],
        ["attack", "{ckpt}", "--eps", "0.1", "--out", "{tmp}/attack"],
        ["train", "--out", "{tmp}/run"],
        ["study", "--out", "{tmp}/study"],
    ],
)
def test_device_cuda_without_cuda_exits_2_with_one_line(command, trained_checkpoint, tmp_path, capsys):
    argv = [a.format(ckpt=trained_checkpoint, tmp=tmp_path) for a in command] + ["--device", "cuda"]
    _fails_cleanly(capsys, argv, match="no CUDA device is available here")
    assert not any(tmp_path.iterdir())  # nothing was created


def test_help_names_every_registered_attack(capsys):
    """--help is static text (no torch import); it must still list every attack the registry knows."""
    from advlab.attacks import ATTACKS

    for command in ("evaluate", "attack"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(name in text for name in ATTACKS), (command, sorted(ATTACKS))


def test_show_preset_prints_the_shipped_toml(capsys):
    assert main(["train", "--show-preset", "full"]) == 0
    text = capsys.readouterr().out
    assert 'method = "pgd"' in text and "steps = 10" in text
    assert main(["study", "--show-preset", "quick"]) == 0
    assert "[models.standard]" in capsys.readouterr().out


def test_an_interrupted_evaluation_resumes_to_the_same_numbers(trained_checkpoint, tmp_path, capsys, monkeypatch):
    """Stopped in its second pool of batches, `advlab evaluate --out` leaves a state file; run again, it skips
    the first pool and ends with exactly the numbers of an uninterrupted run (random generator included)."""
    import advlab.verdicts

    def argv(eps: str, out: str) -> list[str]:
        return [
            "evaluate",
            str(trained_checkpoint),
            "--attack",
            "pgd5",
            "--eps",
            eps,
            "--n",
            "60",
            "--batch-size",
            "8",  # 60 images: pools of 4 × 8, so two pools
            "--quiet",
            "--out",
            str(tmp_path / out),
        ]

    assert main(argv("0.1", "whole.json")) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert not (tmp_path / "whole.json.state.safetensors").exists()  # removed once the result is written
    real, calls = advlab.verdicts.survivors, []

    def stop_in_second_pool(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(advlab.verdicts, "survivors", stop_in_second_pool)
    assert main(argv("0.1", "parts.json")) != 0  # interrupted
    state = tmp_path / "parts.json.state.safetensors"
    assert state.is_file() and not (tmp_path / "parts.json").exists()
    monkeypatch.setattr(advlab.verdicts, "survivors", real)
    pristine = state.read_bytes()
    damaged = bytearray(pristine)
    damaged[-1] ^= 0x01  # a bit of the last flag tensor
    state.write_bytes(bytes(damaged))
    capsys.readouterr()
    assert main(argv("0.1", "parts.json")) == 2
    assert "parts.json.state.safetensors is damaged" in capsys.readouterr().err
    state.write_bytes(pristine)
    assert main(argv("0.1", "parts.json")) == 0
    parts = json.loads((tmp_path / "parts.json").read_text())
    assert parts["robust_accuracy"] == whole["robust_accuracy"] and parts["n"] == whole["n"] == 60
    assert len(calls) == 2  # the resumed run did not redo the first pool through the stopping spy
    # A state left by another evaluation (here: another ε) is refused with one line, never mixed in.
    calls.clear()
    monkeypatch.setattr(advlab.verdicts, "survivors", stop_in_second_pool)
    assert main(argv("0.1", "other.json")) != 0
    monkeypatch.setattr(advlab.verdicts, "survivors", real)
    capsys.readouterr()  # the interruptions' messages
    _fails_cleanly(capsys, argv("0.05", "other.json"), match="holds the state of another evaluation")
