"""Your own model and your own images (issue 17): the README's example runs as written, the numbers are the
model's on those images, and every bad model, weights file or image set is refused with one line."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from advlab.cli import main
from advlab.data.user import load_user_data

ROOT = Path(__file__).resolve().parents[1]
ADVLAB = Path(sys.executable).parent / "advlab"

NETS = """
import torch
from torch import nn


def build(width=4):
    return nn.Sequential(nn.Conv2d(3, width, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))


def flat(size=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 3))


def probabilities(width=4):
    return nn.Sequential(build(width), nn.Softmax(dim=1))


def broken(width=4):
    raise ValueError("width must be even")


def not_a_model():
    return 42


class Noisy(nn.Sequential):
    def forward(self, x):
        return super().forward(x) + 0.5 * torch.randn(x.shape[0], 3)


def noisy(width=4):  # build's layers and keys, and a random forward pass
    return Noisy(nn.Conv2d(3, width, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))


def pretrained(width=4):  # a factory that brings its own weights, as torchvision's and timm's do
    model = build(width)
    with torch.no_grad():  # channel c lights up feature c: class c is the brightest channel
        model[0].weight.copy_(torch.eye(width, 3)[:, :, None, None] * 4)
        model[0].bias.zero_()
        model[4].weight.copy_(torch.eye(3, width) * 10)
        model[4].bias.zero_()
    return model
"""


def _readme_blocks() -> tuple[str, str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = {}
    for kind in ("python", "shell", "python-api"):
        match = re.search(rf"<!-- own-model-example: {kind} -->\s*```\w+\n(.*?)```", text, re.S)
        assert match, f"README.md lost its own-model example ({kind})"
        blocks[kind] = match.group(1)
    return blocks["python"], blocks["shell"], blocks["python-api"]


def test_the_readme_example_runs_and_measures_the_model_on_those_images(tmp_path):
    python, shell, api = _readme_blocks()
    (tmp_path / "make.py").write_text(python, encoding="utf-8")
    subprocess.run([sys.executable, "make.py"], cwd=tmp_path, check=True, capture_output=True, timeout=300)
    command = shell.replace("\\\n", " ").strip()
    assert command.startswith("advlab evaluate ")
    done = subprocess.run(
        f"{ADVLAB}{command[len('advlab') :]}", shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "eval.json").read_text())
    source = saved["model_source"]
    weights = tmp_path / "my_models" / "weights.safetensors"
    assert source["factory"] == "my_models.nets:build" and source["model_args"] == {"width": 8}
    assert source["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert source["module_file"].endswith("my_models/nets.py")
    # The clean accuracy is that model's on those images, computed here independently.
    sys.path.insert(0, str(tmp_path))
    try:
        from my_models.nets import build
    finally:
        sys.path.remove(str(tmp_path))
    model = build(width=8)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(weights))
    data = load_user_data(f"folder:{tmp_path / 'photos'}")
    x, y = data.tensors()
    with torch.no_grad():
        expected = float((model(x).argmax(1) == y).float().mean())
    assert saved["clean_accuracy"] == pytest.approx(expected) and expected > 0.9
    assert data.info.classes == ("blue", "green", "red") and len(y) == 60
    robust = saved["robust_accuracy"]["PGD-20 L∞"]
    assert robust[1] < robust[0] <= expected  # the attack ran, and ε = 0.2 breaks more than 0.05
    # The README's Python version of the same evaluation prints the same numbers.
    (tmp_path / "api.py").write_text(api, encoding="utf-8")
    done = subprocess.run([sys.executable, "api.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{100 * expected:.2f}%" in done.stdout and f"{100 * robust[1]:.2f}%" in done.stdout, done.stdout


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A package `usernets_<n>` in tmp_path (the cwd), weights for build(width=4), and coloured images."""
    monkeypatch.chdir(tmp_path)
    package = f"usernets_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "nets.py").write_text(NETS)
    (tmp_path / "nets.py").write_text(NETS)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():  # channel c lights up feature c: class c is the brightest channel
        model[0].weight.copy_(torch.eye(4, 3)[:, :, None, None] * 4)
        model[0].bias.zero_()
        model[4].weight.copy_(torch.eye(3, 4) * 10)
        model[4].bias.zero_()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    torch.manual_seed(1)  # weights for the factories that must be refused for what they do, not for their keys
    save_file(nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 3)).state_dict(), tmp_path / "flat6.safetensors")
    save_file(nn.Sequential(model, nn.Softmax(dim=1)).state_dict(), tmp_path / "prob.safetensors")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["a_red", "b_green", "c_blue"]):
        (tmp_path / "img" / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 60, (8, 8, 3)).astype(np.uint8)
            pixels[..., c] = 200
            Image.fromarray(pixels).save(tmp_path / "img" / name / f"{i}.png")
    return tmp_path, package, model


def _run(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _refused(args, capsys, *needles) -> str:
    code, _, err = _run(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("advlab: error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _evaluate(*extra):
    return ["evaluate", "--attack", "pgd5", "--eps", "0.1", "--quiet", *extra]


def test_a_user_model_on_a_folder_and_on_the_same_images_as_npz(user, capsys):
    folder, package, model = user
    base = _evaluate(
        "--model-from", f"{package}.nets:build", "--weights", "w.safetensors", "--model-args", '{"width": 4}'
    )
    code, _, err = _run([*base, "--data", "folder:img", "--out", "a.json"], capsys)
    assert code == 0, err
    first = json.loads((folder / "a.json").read_text())
    assert first["clean_accuracy"] == 1.0 and first["dataset"].startswith("folder:")
    data = load_user_data("folder:img")
    x, y = data.tensors()
    np.savez(folder / "nhwc.npz", x=(x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8), y=y.numpy())
    np.savez(folder / "float.npz", x=x.numpy(), y=y.numpy(), classes=np.array(["r", "g", "b"]))
    for name in ("nhwc.npz", "float.npz"):
        code, _, err = _run([*base, "--data", f"npz:{name}", "--out", f"{name}.json"], capsys)
        assert code == 0, err
        again = json.loads((folder / f"{name}.json").read_text())
        assert again["clean_accuracy"] == first["clean_accuracy"]
        assert again["robust_accuracy"] == first["robust_accuracy"]  # the same pixels, the same seed: the same numbers
    # --classes as a text file, one name a line, the same as on the command line; a wrong count is one line.
    np.savez(folder / "plain.npz", x=x.numpy(), y=y.numpy())
    (folder / "names.txt").write_text("red\n\ngreen\nblue\n", encoding="utf-8")
    code, _, err = _run([*base, "--data", "npz:plain.npz", "--classes", "names.txt", "--out", "named.json"], capsys)
    assert code == 0, err
    assert json.loads((folder / "named.json").read_text())["robust_accuracy"] == first["robust_accuracy"]
    from advlab.cli.common import parse_classes

    assert parse_classes("names.txt") == ("red", "green", "blue") == parse_classes("red, green,blue")
    (folder / "two.txt").write_text("red\ngreen\n", encoding="utf-8")
    _refused([*base, "--data", "npz:plain.npz", "--classes", "two.txt"], capsys, "2")
    (folder / "empty.txt").write_text("\n", encoding="utf-8")
    _refused([*base, "--data", "npz:plain.npz", "--classes", "empty.txt"], capsys, "names no class")
    # A .py path works as well as a dotted module.
    code, _, err = _run(
        _evaluate("--model-from", "nets.py:build", "--weights", "w.safetensors", "--data", "folder:img"), capsys
    )
    assert code == 0, err
    # A 3-class model under the quick suite: APGD-T (4 classes) falls back to APGD-DLR, once refused outright.
    suite = ["evaluate", "--suite", "quick", "--eps", "0.1", *base[5:], "--data", "npz:float.npz", "--out", "q.json"]
    code, _, err = _run(suite, capsys)
    assert code == 0, err
    assert list(json.loads((folder / "q.json").read_text())["robust_accuracy"]) == ["APGD-CE-50 L∞", "APGD-DLR-50 L∞"]
    # More images asked for than there are: all of them, one line that says so, and the count used recorded.
    with pytest.warns(UserWarning) as notes:  # the CLI prints each as one line: "advlab: note: ..."
        code, _, err = _run([*base, "--data", "npz:float.npz", "--n", "5000", "--out", "many.json"], capsys)
    assert code == 0, err
    assert [str(n.message) for n in notes] == [
        f"5000 images to use (--n, --images or their default), but npz:float.npz has {len(y)}: using all {len(y)}"
    ]
    assert json.loads((folder / "many.json").read_text())["n"] == len(y)


def test_normalize_puts_the_users_normalization_in_front(user, capsys):
    folder, package, model = user
    # Weights for a model that expects (x - mean) / std per channel: the same function once normalized.
    mean, std = torch.tensor([0.2, 0.5, 0.8]), torch.tensor([0.25, 0.5, 0.25])
    weight = model[0].weight.detach()
    shifted = {k: v.clone() for k, v in model.state_dict().items()}
    shifted["0.weight"] = weight * std[None, :, None, None]
    shifted["0.bias"] = (weight[:, :, 0, 0] * mean).sum(dim=1)
    save_file(shifted, folder / "n.safetensors")
    base = _evaluate("--model-from", f"{package}.nets:build", "--data", "folder:img")
    code, _, _ = _run([*base, "--weights", "w.safetensors", "--out", "plain.json"], capsys)
    code2, _, err = _run(
        [*base, "--weights", "n.safetensors", "--normalize", "0.2,0.5,0.8,0.25,0.5,0.25", "--out", "norm.json"], capsys
    )
    assert code == code2 == 0, err
    plain, norm = (json.loads((folder / f).read_text()) for f in ("plain.json", "norm.json"))
    assert norm["clean_accuracy"] == plain["clean_accuracy"] == 1.0
    assert norm["robust_accuracy"]["PGD-5 L∞"] == pytest.approx(plain["robust_accuracy"]["PGD-5 L∞"])
    assert norm["model_source"]["normalize"] == {"mean": [0.2, 0.5, 0.8], "std": [0.25, 0.5, 0.25]}
    code, _, _ = _run([*base, "--weights", "n.safetensors", "--out", "wrong.json"], capsys)
    assert json.loads((folder / "wrong.json").read_text())["clean_accuracy"] < 1.0  # without it: another model
    _refused([*base, "--weights", "n.safetensors", "--normalize", "0.5,0.5,0.5,0.5"], capsys, "cannot take")


@pytest.mark.parametrize(
    "flags, needles",
    [
        (
            ["--model-from", "{pkg}.nets:probabilities", "--weights", "prob.safetensors"],
            ["returns probabilities", "drop the final softmax"],
        ),
        (
            ["--model-from", "{pkg}.nets:flat", "--model-args", '{{"size": 6}}', "--weights", "flat6.safetensors"],
            ["cannot take", "3×8×8 images", "--image-size"],
        ),
        (["--model-from", "{pkg}.nets:broken"], ["raised ValueError: width must be even"]),
        (["--model-from", "{pkg}.nets:missing"], ["has no 'missing'"]),
        (["--model-from", "{pkg}.nets:not_a_model"], ["returned int, not a torch.nn.Module"]),
        (["--model-from", "nowhere_at_all.nets:build"], ["cannot import nowhere_at_all.nets", "ModuleNotFoundError"]),
        (["--model-from", "{pkg}.nets:build", "--model-args", "{{width: 4}}"], ["--model-args must be a JSON object"]),
        (
            ["--model-from", "{pkg}.nets:build", "--model-args", '{{"width": 5}}'],
            ["0.bias has shape (4,) but the model declares (5,)", "--model-args"],
        ),
        (["--model-from", "{pkg}.nets:build", "--normalize", "0.5"], ["--normalize takes MEAN,STD"]),
        (["--model-from", "{pkg}.nets:build", "--normalize", "0.5,0"], ["every std must be above 0"]),
        (["--model-from", "{pkg}.nets"], ["--model-from must be MODULE:FACTORY"]),
    ],
)
def test_bad_user_models_are_refused_in_one_line(user, capsys, flags, needles):
    folder, package, _ = user
    flags = [f.format(pkg=package) for f in flags]
    weights = [] if "--weights" in flags else ["--weights", "w.safetensors"]
    _refused(_evaluate(*flags, *weights, "--data", "folder:img"), capsys, *needles)


def test_bad_weights_files_are_refused_in_one_line(user, capsys):
    folder, package, model = user
    base = _evaluate("--model-from", f"{package}.nets:build", "--data", "folder:img")
    torch.save(model.state_dict(), folder / "w.pt")
    _refused([*base, "--weights", "w.pt"], capsys, "only .safetensors")
    partial = {k: v for k, v in model.state_dict().items() if k != "4.bias"}
    save_file(partial, folder / "partial.safetensors")
    _refused([*base, "--weights", "partial.safetensors"], capsys, "lacks key 4.bias")
    save_file({**model.state_dict(), "extra": torch.zeros(2)}, folder / "extra.safetensors")
    _refused([*base, "--weights", "extra.safetensors"], capsys, "holds key extra")
    (folder / "junk.safetensors").write_bytes(b"not a safetensors file")
    _refused([*base, "--weights", "junk.safetensors"], capsys, "corrupt or not a safetensors file")
    _refused([*base, "--weights", "absent.safetensors"], capsys, "does not exist")
    _refused(_evaluate("--weights", "w.safetensors", "--data", "folder:img"), capsys, "name the model")


def test_a_factory_that_brings_its_own_weights_needs_no_weights_file(user, capsys):
    """Without --weights the factory's model is used as returned; the record names it by its state dict."""
    folder, package, model = user
    base = _evaluate("--model-from", f"{package}.nets:pretrained", "--data", "folder:img")
    code, _, err = _run([*base, "--out", "own.json", "--normalize", "imagenet"], capsys)
    assert code == 0, err
    record = json.loads((folder / "own.json").read_text())
    source = record["model_source"]
    assert source["weights"] is None and source["weights_sha256"] is None
    from advlab.user_model import state_dict_sha256

    assert source["state_dict_sha256"] == state_dict_sha256(model)  # the same numbers as the fixture's weights
    assert source["normalize"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    # Random weights from a plain factory differ call to call: no two digests alike, so nothing resumes wrongly.
    changed = {k: v.clone() for k, v in model.state_dict().items()}
    changed["4.bias"][0] += 1e-3
    other = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    other.load_state_dict(changed)
    assert state_dict_sha256(other) != state_dict_sha256(model)
    code, _, err = _run([*base, "--out", "plain.json"], capsys)
    assert code == 0 and json.loads((folder / "plain.json").read_text())["clean_accuracy"] == 1.0, err


def _image(path: Path, mode: str, size=(8, 8), colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = {"L": 120, "RGBA": (*colour, 100), "I;16": 300}.get(mode, colour)
    Image.new(mode, size, fill).save(path)


def test_image_folders_convert_or_refuse_as_documented(tmp_path, capsys):
    root = tmp_path / "mixed"
    _image(root / "a" / "0.png", "L")
    _image(root / "b" / "0.png", "RGB")
    data = load_user_data(f"folder:{root}")
    assert data.info.channels == 3  # grey and colour together: read as colour, the grey copied to 3 channels
    x, _ = data.tensors()
    assert torch.equal(x[0, 0], x[0, 1]) and abs(float(x[0, 0, 0, 0]) - 120 / 255) < 1e-6
    grey = tmp_path / "grey"
    _image(grey / "a" / "0.png", "L")
    _image(grey / "b" / "0.jpg", "L")
    assert load_user_data(f"folder:{grey}").info.channels == 1
    sizes = tmp_path / "sizes"
    _image(sizes / "a" / "0.png", "RGB", (8, 8))
    _image(sizes / "b" / "0.png", "RGB", (10, 6))
    from advlab.errors import AdvlabError

    with pytest.raises(AdvlabError, match="different sizes.*--image-size"):
        load_user_data(f"folder:{sizes}")
    resized = load_user_data(f"folder:{sizes}", image_size=(12, 12))
    assert resized.tensors()[0].shape == (2, 3, 12, 12)
    cases = {
        "empty class": (lambda r: (_image(r / "a" / "0.png", "RGB"), (r / "b").mkdir()), "has no images"),
        "corrupt": (
            lambda r: (r / "a").mkdir(parents=True) or (r / "a" / "0.png").write_bytes(b"\x89PNG broken"),
            "cannot read image",
        ),
        "stray file": (
            lambda r: (_image(r / "a" / "0.png", "RGB"), (r / "a" / "notes.txt").write_text("hi")),
            "not a PNG or JPEG",
        ),
        "transparent": (lambda r: _image(r / "a" / "0.png", "RGBA"), "transparent pixels"),
        "16-bit": (lambda r: _image(r / "a" / "0.png", "I;16"), "more than 8 bits"),
        "no classes": (lambda r: r.mkdir(), "no class subfolders"),
    }
    for name, (make, needle) in cases.items():
        root = tmp_path / name.replace(" ", "_")
        make(root)
        line = _refused(["evaluate", "runs/none", "--data", f"folder:{root}", "--eps", "0.1"], capsys, needle)
        assert "runs/none" not in line, name  # the images are checked before the model is even looked for


def test_npz_files_convert_or_refuse_as_documented(tmp_path, capsys):
    y = np.array([0, 1, 2, 1])
    good = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
    np.savez(tmp_path / "good.npz", x=good, y=y)
    data = load_user_data(f"npz:{tmp_path / 'good.npz'}")
    assert data.info.channels == 1 and data.images.dtype == torch.float32
    assert torch.equal(data.tensors()[0], torch.from_numpy(good.transpose(0, 3, 1, 2)))  # kept unrounded
    assert load_user_data(f"npz:{tmp_path / 'good.npz'}", classes=["x", "y", "z"]).info.classes == ("x", "y", "z")
    cases = {
        "nolabels": ({"x": good}, "no array 'y'"),
        "big": ({"x": good * 255, "y": y}, "float pixels must lie in [0, 1]"),
        "negative": ({"x": (good * 300).astype(np.int32), "y": y}, "integer pixels must lie in [0, 255]"),
        "labels": ({"x": good, "y": np.array([0, 1, 2, 7]), "classes": np.array(["a", "b", "c"])}, "labels must lie"),
        "shape": ({"x": np.zeros((4, 5, 8, 8), np.float32), "y": y}, "no axis of 1 or 3 channels"),
    }
    for name, (arrays, needle) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        _refused(["evaluate", "runs/none", "--data", f"npz:{tmp_path / name}.npz", "--eps", "0.1"], capsys, needle)
    (tmp_path / "text.npz").write_text("hello")
    _refused(["evaluate", "runs/none", "--data", f"npz:{tmp_path / 'text.npz'}", "--eps", "0.1"], capsys, "cannot read")
    bad_kind = ["evaluate", "runs/none", "--data", "csv:x", "--eps", "0.1"]
    _refused(bad_kind, capsys, "folder:PATH, npz:PATH or image:FILE")
    _refused(["evaluate", "runs/none", "--data", "folder:x", "--dataset", "mnist", "--eps", "0.1"], capsys, "not both")


def test_attack_and_certify_run_the_model_checks_on_a_user_model_first(user, capsys):
    import warnings

    from advlab.model_warnings import ModelWarning

    folder, package, _ = user
    base = ["--model-from", f"{package}.nets:noisy", "--weights", "w.safetensors", "--data", "folder:img", "--quiet"]
    with pytest.warns(ModelWarning, match="two forward passes of the same images differ") as seen:
        code, _, err = _run(["attack", *base, "--eps", "0.1", "--n", "4", "--out", "adv"], capsys)
    notes = [str(w.message) for w in seen if w.category is ModelWarning]
    assert code == 0 and len(notes) == 2 and any("3 classes" in n for n in notes), notes  # and few-classes
    saved = json.loads((folder / "adv" / "attack.json").read_text())
    assert saved["model_source"]["factory"] == f"{package}.nets:noisy" and saved["checkpoint"] is None
    with pytest.warns(ModelWarning, match="the model is random"):
        _run(["certify", *base, "--method", "ibp", "--eps", "0.05"], capsys)
    # The same model without the noise: no note that it is random.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = _run(
            ["attack", *base[:1], f"{package}.nets:build", *base[2:], "--eps", "0.1", "--n", "4", "--out", "adv2"],
            capsys,
        )
    notes = [str(w.message) for w in caught if w.category is ModelWarning]
    assert code == 0 and len(notes) == 1 and "differ" not in notes[0], notes
