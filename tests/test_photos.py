"""A pretrained model and single photos: a factory without --weights, image: data without a label, class
names from a file, a target by name and ImageNet's preprocessing, at 224×224×3 with 1,000 classes (a local
ResNet-style factory with random weights: nothing is downloaded)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advlab.cli import main
from advlab.tensor_files import load_tensors

NETS = (Path(__file__).resolve().parents[1] / "docs" / "figures" / "resnetish.py").read_text()  # the README's
NAMES = [f"class {i}" for i in range(1000)]
NAMES[368] = "gibbon"
NAMES[388] = "giant panda"


@pytest.fixture
def photos(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(NETS)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(tmp_path / "square.jpg", quality=95)
    (tmp_path / "imagenet.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    return tmp_path


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _refused(args, capsys, needle):
    code, _, err = _run(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("advlab: error:"), err
    assert needle in lines[0], lines[0]


MODEL = ["--model-from", "nets.py:resnetish", "--normalize", "imagenet"]


def test_a_photo_attacked_towards_a_named_class(photos, capsys):
    args = [
        "attack", *MODEL, "--data", "image:wide.png,square.jpg", "--preprocess", "imagenet",
        "--classes", "imagenet.txt", "--attack", "pgd10", "--eps", "16/255", "--target", "gibbon", "--out", "out",
    ]  # fmt: skip
    code, out, err = _run(args, capsys)
    assert code == 0, err
    record = json.loads((photos / "out" / "attack.json").read_text())
    assert record["target"] == 368 and len(record["classes"]) == 1000 and record["classes"][388] == "giant panda"
    assert "labels: the model's clean predictions" in record["dataset"]
    assert record["model_source"]["weights"] is None and len(record["model_source"]["state_dict_sha256"]) == 64
    tensors, _ = load_tensors(photos / "out" / "adversarial.safetensors")
    assert tensors["x"].shape == (2, 3, 224, 224)  # the shorter side to 256, then the central 224 crop
    assert (tensors["x_adv"] - tensors["x"]).abs().max() <= 16 / 255 + 1e-6
    assert (tensors["labels"] == tensors["prediction_clean"]).all()  # no --label: the model's own guess
    assert (tensors["targets"] == 368).all()
    assert (photos / "out" / "gallery.png").is_file()
    # The picture: clean and adversarial with their top-5 class names, the perturbation between; PNG and SVG.
    svg = (photos / "out" / "figure.svg").read_text()
    assert (photos / "out" / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from advlab.report.photo import top_classes

    for row in range(2):
        for logits in (tensors["logits_clean"][row], tensors["logits_adv"][row]):
            for name, p in top_classes(logits, record["classes"]):
                assert f"{name}: {100 * p:.1f}%" in svg  # every top-5 line, as text in the SVG
    assert "PGD-10 L∞ targeted, ε = 16/255 (pixel units, aimed at gibbon)" in svg


def test_evaluate_photos_without_a_label_says_so(photos, capsys):
    base = ["evaluate", *MODEL, "--data", "image:*.png", "--preprocess", "imagenet", "--attack", "fgsm"]
    with pytest.warns(UserWarning, match="each photo's label is the model's own clean prediction"):
        code, _, err = _run([*base, "--eps", "1/255", "--out", "e.json"], capsys)
    assert code == 0, err
    result = json.loads((photos / "e.json").read_text())
    assert result["n"] == 1 and result["clean_accuracy"] == 1.0  # by construction, and said so
    # With --label, that class for every photo, by name (class names from the file) or by index.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*clean prediction")
        code, _, err = _run([*base, "--eps", "1/255", "--classes", "imagenet.txt", "--label", "gibbon"], capsys)
    assert code == 0, err
    from advlab.data.photos import load_photos

    x = load_photos("image:wide.png", preprocessing="imagenet").tensors()[0]
    with torch.no_grad():
        import importlib.util

        spec = importlib.util.spec_from_file_location("nets_here", photos / "nets.py")
        nets = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(nets)
        from advlab.models import Normalize

        model = torch.nn.Sequential(Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), nets.resnetish()).eval()
        guess = int(model(x).argmax(1))
    code, out, err = _run([*base, "--eps", "1/255", "--label", str(guess), "--out", "l.json"], capsys)
    assert code == 0 and json.loads((photos / "l.json").read_text())["clean_accuracy"] == 1.0, err
    code, out, err = _run([*base, "--eps", "1/255", "--label", str((guess + 1) % 1000), "--out", "m.json"], capsys)
    assert code == 0 and json.loads((photos / "m.json").read_text())["clean_accuracy"] == 0.0, err


def test_certify_a_photo_by_randomized_smoothing(photos, capsys):
    """`advlab certify` takes photos too: its label is the model's clean prediction, and its count is the photos'."""
    args = ["certify", *MODEL, "--data", "image:square.jpg", "--preprocess", "imagenet", "--method", "smoothing"]
    with pytest.warns(UserWarning) as notes:
        code, _, err = _run([*args, "--sigma", "0.25", "--n", "20", "--n0", "5", "--out", "c.json"], capsys)
    assert code == 0, err
    said = [str(note.message) for note in notes]
    assert any("each photo's label is the model's own clean prediction" in line for line in said), said
    assert any("but image:square.jpg has 1: using all 1" in line for line in said), said
    result = json.loads((photos / "c.json").read_text())
    assert result["images"] == 1 and result["method"] == "smoothing" and result["n"] == 20
    assert "labels: the model's clean predictions" in result["dataset"]
    assert set(result["certified_accuracy"]) >= {"0", "0.25"}


def test_bad_photos_and_names_exit_2_with_one_line(photos, capsys):
    (photos / "notes.png").write_text("not an image")
    (photos / "few.txt").write_text("a\nb\nc\n")
    attack = ["attack", *MODEL, "--eps", "1/255", "--out", "x"]
    _refused([*attack, "--data", "image:notes.png"], capsys, "cannot read image")
    _refused([*attack, "--data", "image:missing.png"], capsys, "does not exist")
    _refused([*attack, "--data", "image:wide.png", "--preprocess", "cifar"], capsys, "unknown --preprocess")
    _refused([*attack, "--data", "image:wide.png", "--preprocess", "imagenet", "--classes", "few.txt"], capsys, "3")
    target = [*attack, "--data", "image:wide.png", "--preprocess", "imagenet", "--classes", "imagenet.txt"]
    _refused([*target, "--target", "gibon"], capsys, "not a class name")
    _refused([*target, "--target", "1000"], capsys, "from 0 to 999")
    _refused([*attack, "--data", "image:wide.png,square.jpg"], capsys, "different sizes")
    odd = ["attack", "--model-from", "nets.py:resnetish", "--normalize", "ultra", "--data", "image:wide.png"]
    _refused([*odd, "--eps", "1/255", "--out", "x"], capsys, "imagenet")
    assert not (photos / "x").exists()


def test_the_batch_fits_the_free_memory(monkeypatch):
    """Unset, --batch-size is what fits half the free memory: 256 for a small network, few at 224×224."""
    import advlab.memory as memory
    from advlab.evaluate import DEFAULT_BATCH

    small = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    x_small = torch.rand(1, 1, 28, 28)
    assert memory.fitting_batch(small, x_small, "cpu", ceiling=DEFAULT_BATCH) == DEFAULT_BATCH
    big = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1)
    )
    x_big = torch.rand(1, 3, 224, 224)
    per_image = memory.activation_bytes(big, x_big)
    assert per_image == 3 * 64 * 224 * 224 * 4  # three outputs of 64 × 224 × 224 floats
    monkeypatch.setattr(memory, "free_bytes", lambda device: 2 << 30)  # 2 GiB free
    assert memory.fitting_batch(big, x_big, "cpu", ceiling=DEFAULT_BATCH) == int(0.5 * (2 << 30) // (3 * per_image))
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1 << 20)  # almost nothing: still one image
    assert memory.fitting_batch(big, x_big, "cpu", ceiling=DEFAULT_BATCH) == 1


def test_a_cpu_batch_stays_under_its_activation_budget_where_a_gpu_batch_does_not(monkeypatch):
    """With memory to spare, a CPU batch holds at most CPU_BATCH_BYTES of activations (larger ones ran slower:
    ResNet-50, 1.35 s an image in batches of 32 against 0.98 in 16); a GPU's batch is limited by memory alone."""
    import advlab.memory as memory

    big = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU())
    x_big = torch.rand(1, 3, 224, 224)
    per_image = memory.activation_bytes(big, x_big)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1 << 40)  # 1 TiB free
    assert memory.fitting_batch(big, x_big, "cpu", ceiling=256) == memory.CPU_BATCH_BYTES // per_image == 83
    assert memory.fitting_batch(big, x_big, "cuda", ceiling=256) == 256
