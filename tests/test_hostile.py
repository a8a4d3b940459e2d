"""Files made to hurt: a shared config, an image folder or a checkpoint from a stranger. Every case ends with
exit status 2 and one line, before any work: nothing is written outside --out, no existing file changes."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from advlab.cli import main

STUDY = """
[study]
eps_grid = [0.0, 0.1, 0.5]
attacks = ["fgsm", "pgd5"]
n_eval = 20

[train]
epochs = 1
train_size = 200

[models.standard]
method = "standard"

[models.{name}]
method = "fgsm"
eps = 0.1
"""


def _listing(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a digest of its bytes: what must not change."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _refused_cleanly(args, capsys, root: Path, *needles) -> str:
    """Exit status 2, one line, and the whole folder ``root`` (the parent of every --out) unchanged."""
    before = _listing(root)
    code = main([str(a) for a in args])
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("advlab: error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert _listing(root) == before  # nothing written, nothing changed, --out not created
    return lines[0]


@pytest.mark.parametrize(
    "name, problem",
    [
        ('"../../escaped"', "path separator"),
        ('"a/b"', "path separator"),
        ('"a\\\\b"', "path separator"),
        ('".."', "relative path"),
        ('"tab\\there"', "control character"),
        ('"' + "x" * 300 + '"', "300 characters long"),
    ],
)
def test_a_model_name_never_leaves_the_output_folder(tmp_path, capsys, monkeypatch, name, problem):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    (work / "study.toml").write_text(STUDY.format(name=name), encoding="utf-8")
    _refused_cleanly(["study", "study.toml", "--out", "out"], capsys, tmp_path, "model name", problem)


def test_safe_names_and_writes_inside_the_folder(tmp_path):
    from advlab.errors import AdvlabError
    from advlab.files import inside, safe_name

    assert safe_name("fgsm-eps0.1_b6", "name") == "fgsm-eps0.1_b6"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)  # a link inside that points out
    assert inside(tmp_path / "out", tmp_path / "out" / "models" / "a") == tmp_path / "out" / "models" / "a"
    for path in (tmp_path / "out" / ".." / "x", tmp_path / "out" / "link" / "x"):
        with pytest.raises(AdvlabError, match="outside"):
            inside(tmp_path / "out", path)


def _png_bomb(path: Path, side: int = 20_000) -> None:
    """A valid greyscale PNG of side × side zero pixels, a few hundred kB on disk (400 MB decoded)."""
    squeeze = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte, then the row
    data = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    _png_bomb(path)
    assert path.stat().st_size < 1_000_000
    return path


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, capsys, bomb, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "imgs" / label / "ok.png")
    (tmp_path / "imgs" / "b" / "bomb.png").write_bytes(bomb.read_bytes())
    model = ["--model-from", "nets.py:build"]
    (tmp_path / "nets.py").write_text("from torch import nn\n\ndef build():\n    return nn.Flatten()\n")
    for data in ("folder:imgs", "image:imgs/b/bomb.png"):
        args = ["attack", *model, "--data", data, "--eps", "0.1", "--out", "out"]
        _refused_cleanly(args, capsys, tmp_path, "bomb.png", "refused before decoding")
    # Under Pillow's own limit but over advlab's (64 million pixels): refused by its declared size.
    _png_bomb(tmp_path / "big.png", side=9_000)
    args = ["attack", *model, "--data", "image:big.png", "--eps", "0.1", "--out", "out"]
    _refused_cleanly(args, capsys, tmp_path, "big.png", "9000x9000", "refused before decoding")


def test_a_truncated_image_is_refused_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    (tmp_path / "nets.py").write_text("from torch import nn\n\ndef build():\n    return nn.Flatten()\n")
    args = ["attack", "--model-from", "nets.py:build", "--data", "image:cut.png", "--eps", "0.1", "--out", "out"]
    _refused_cleanly(args, capsys, tmp_path, "cut.png")


def _safetensors(path: Path, header: dict | bytes, body: bytes = b"", length: int | None = None) -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + body)


@pytest.mark.parametrize(
    "case",
    ["huge shape", "overlapping offsets", "header of several GB", "offsets past the end"],
)
def test_a_hostile_safetensors_file_is_refused(tmp_path, capsys, case):
    path = tmp_path / "run" / "model.safetensors"
    path.parent.mkdir()
    if case == "huge shape":
        _safetensors(path, {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 16]}}, b"\0" * 16)
    elif case == "overlapping offsets":
        header = {
            "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
        }
        _safetensors(path, header, b"\0" * 24)
    elif case == "header of several GB":
        _safetensors(path, b'{"w": ', length=5 * 10**9)
    else:
        _safetensors(path, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    args = ["evaluate", path, "--eps", "0.1", "--dataset", "fashion-mnist", "--out", tmp_path / "out.json"]
    _refused_cleanly(args, capsys, tmp_path, "model.safetensors")


def test_records_nested_ten_thousand_levels_deep_are_refused(tmp_path, capsys, trained_checkpoint):
    run = tmp_path / "run"
    run.mkdir()
    for file in Path(trained_checkpoint).iterdir():
        if file.is_file():
            (run / file.name).write_bytes(file.read_bytes())
    deep = "[" * 10_000 + "]" * 10_000
    (run / "model.json").write_text(deep)
    args = ["evaluate", run, "--eps", "0.1", "--n", "5", "--out", tmp_path / "out.json"]
    _refused_cleanly(args, capsys, tmp_path, "model.json")
