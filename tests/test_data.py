"""advlab.data: finding, parsing, validating, splitting, batching and downloading data sets.

Everything but the Fashion-MNIST test runs on small files written here; downloads go to a local
HTTP server, never the internet.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from advlab.data import (
    DATASETS,
    FileSpec,
    cache_dir,
    download_dataset,
    formats,
    get_info,
    list_datasets,
    load_dataset,
    locate_dataset,
    val_split_indices,
)
from advlab.errors import AdvlabError

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the user's cache, $ADVLAB_DATA or mirror, or another test's parsed files."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("ADVLAB_DATA", raising=False)
    monkeypatch.delenv("ADVLAB_MIRROR", raising=False)
    formats._parse_split.cache_clear()


# ------------------------------------------------------------------------------------ file makers


def idx_bytes(array: np.ndarray) -> bytes:
    return (
        bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    )


def coded_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random images whose first pixel is the example's index, so a batch tells which examples it holds."""
    images = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    images.reshape(n, -1)[:, 0] = np.arange(n)
    return images


def make_idx(folder: Path, n_train: int = 20, n_test: int = 8, *, gz: bool = True, seed: int = 0) -> dict:
    """Write the four MNIST-style idx files into ``folder``; return the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_FILES[0]: coded_images(n_train, (28, 28), seed),
        IDX_FILES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        IDX_FILES[2]: coded_images(n_test, (28, 28), seed + 1),
        IDX_FILES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        raw = idx_bytes(array)
        (folder / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


def _py2_str(text: bytes) -> bytes:
    return b"U" + bytes([len(text)]) + text  # SHORT_BINSTRING: what Python 2 wrote for str


def _py2_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def py2_pickle(batch: dict) -> bytes:
    """Pickle opcodes as Python 2's cPickle wrote the real CIFAR batches (protocol 2, str keys, numpy 1.x
    array names): today's pickle cannot produce them, and they are what the loader must read."""
    out = [b"\x80\x02}("]
    for key, value in batch.items():
        out.append(_py2_str(key))
        if isinstance(value, np.ndarray):  # 2-D uint8 only
            out += [
                b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n",
                _py2_int(0),
                b"\x85",
                _py2_str(b"b"),
                b"\x87R(",
                _py2_int(1),
                _py2_int(value.shape[0]),
                _py2_int(value.shape[1]),
                b"\x86cnumpy\ndtype\n",
                _py2_str(b"u1"),
                _py2_int(0),
                _py2_int(1),
                b"\x87R(",
                _py2_int(3),
                _py2_str(b"|"),
                b"NNN",
                _py2_int(-1),
                _py2_int(-1),
                _py2_int(0),
                b"tb\x89",
                b"T",
                struct.pack("<I", value.nbytes),
                value.tobytes(),
                b"tb",
            ]
        elif isinstance(value, list):
            out.append(b"](" + b"".join(_py2_int(v) for v in value) + b"e")
        else:
            out.append(_py2_str(value))
    return b"".join(out) + b"u."


def cifar_batch(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A CIFAR batch in the original format, with its images (N, 3, 32, 32) and labels."""
    images = coded_images(n, (3, 32, 32), seed)
    labels = np.random.default_rng(seed).integers(0, 10, n)
    batch = {b"batch_label": b"testing batch", b"labels": labels.tolist(), b"data": images.reshape(n, -1)}
    return py2_pickle(batch), images, labels


def cifar_members(n: int = 3) -> dict[str, tuple[bytes, np.ndarray, np.ndarray]]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {name: cifar_batch(n, seed) for seed, name in enumerate(names)}


def make_cifar_dir(folder: Path, n: int = 3) -> dict:
    (folder / "cifar-10-batches-py").mkdir(parents=True)
    members = cifar_members(n)
    for name, (raw, _, _) in members.items():
        (folder / "cifar-10-batches-py" / name).write_bytes(raw)
    return members


def make_cifar_tar(path: Path, members: dict, extra: dict[str, bytes] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = {f"cifar-10-batches-py/{name}": raw for name, (raw, _, _) in members.items()} | (extra or {})
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def first_pixel_index(x: torch.Tensor) -> torch.Tensor:
    return (x.flatten(1)[:, 0] * 255).round().long()


# ---------------------------------------------------------------------------------- real data set


@pytest.mark.skipif(
    not (SYSTEM_FASHION / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_system_location():
    assert locate_dataset("fashion-mnist") == (SYSTEM_FASHION, "system")
    train = load_dataset("fashion-mnist", "train", download=False, progress=False)
    test = load_dataset("fashion-mnist", "test", download=False, progress=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64 and train.images.is_contiguous()
    assert train.labels.bincount().tolist() == [6000] * 10 and len(train.info.classes) == 10
    x, y = next(test.batches(256))
    assert x.dtype == torch.float32 and x.shape == (256, 1, 28, 28) and 0 <= x.min() < x.max() <= 1
    # Pinned mean/std match the data (training set, to 3 decimals).
    pixels = train.images.float() / 255
    assert pixels.mean().item() == pytest.approx(train.info.mean[0], abs=1e-3)
    assert pixels.std().item() == pytest.approx(train.info.std[0], abs=1e-3)

    torch.manual_seed(123)  # the split must not depend on the global RNG
    val = load_dataset("fashion-mnist", "val", val_size=5000, download=False)
    torch.manual_seed(456)
    rest = load_dataset("fashion-mnist", "train", val_size=5000, download=False)
    assert len(val) == 5000 and len(rest) == 55000
    train_index, val_index = val_split_indices(60000, 5000)
    assert torch.equal(val.images, train.images[val_index]) and torch.equal(rest.labels, train.labels[train_index])
    assert not set(train_index.tolist()) & set(val_index.tolist())
    assert torch.equal(load_dataset("fashion-mnist", "val", val_size=5000, download=False).images, val.images)


# ----------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("fashion_mnist", "fashion-mnist"),
        ("FashionMNIST", "fashion-mnist"),
        ("Fashion-MNIST", "fashion-mnist"),
        ("MNIST", "mnist"),
        ("cifar-10", "cifar10"),
        ("CIFAR10", "cifar10"),
    ],
)
def test_get_info_accepts_aliases(alias, name):
    assert get_info(alias).name == name


def test_unknown_name_lists_known_ones():
    with pytest.raises(AdvlabError, match="imagenet") as err:
        get_info("imagenet")
    assert all(name in str(err.value) for name in DATASETS)
    with pytest.raises(AdvlabError, match="known"):
        load_dataset("svhn")


def test_dataset_info_is_consistent():
    for info in DATASETS.values():
        assert len(info.classes) == 10 and len(info.mean) == len(info.std) == info.channels
        assert all(len(spec.sha256) == 64 and spec.size > 0 for spec in info.downloads)
    assert (
        get_info("fashion-mnist").classes[0] == "T-shirt/top" and get_info("fashion-mnist").classes[-1] == "Ankle boot"
    )


def test_cache_dir_follows_xdg(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "xdg-cache" / "advlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "advlab"


# --------------------------------------------------------------------------- synthetic idx and CIFAR


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["", "mnist", "MNIST/raw"])
def test_idx_files_load_from_data_dir(tmp_path, gz, layout):
    arrays = make_idx(tmp_path / "d" / layout, gz=gz)
    assert locate_dataset("mnist", tmp_path / "d") == (tmp_path / "d" / layout, "--data-dir")
    train = load_dataset("mnist", "train", data_dir=tmp_path / "d", download=False)
    test = load_dataset("mnist", data_dir=str(tmp_path / "d"), split="test")
    assert train.images.shape == (20, 1, 28, 28) and len(test) == 8
    assert np.array_equal(train.images[:, 0].numpy(), arrays[IDX_FILES[0]])
    assert np.array_equal(test.labels.numpy(), arrays[IDX_FILES[3]])


def test_subset_batches_and_tensors(tmp_path):
    make_idx(tmp_path, n_train=23)
    train = load_dataset("mnist", data_dir=tmp_path)
    assert torch.equal(train.subset(5).images, train.images[:5])
    assert len(train.subset(np.int64(5))) == 5  # a count, not the index 5
    picked = train.subset([7, 2])
    assert torch.equal(picked.labels, train.labels[[7, 2]]) and picked.images.is_contiguous()
    assert len(train.subset(torch.tensor([], dtype=torch.long))) == 0
    for bad in (24, -1, [23]):
        with pytest.raises(AdvlabError):
            train.subset(bad)

    batches = list(train.batches(5, device="cpu"))
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and 0 <= x.min() and x.max() <= 1
    assert first_pixel_index(torch.cat([x for x, _ in batches])).tolist() == list(range(23))
    assert [len(y) for _, y in train.batches(5, drop_last=True)] == [5] * 4

    def order(seed):
        batches = train.batches(4, shuffle=True, generator=torch.Generator().manual_seed(seed))
        return torch.cat([first_pixel_index(x) for x, _ in batches]).tolist()

    assert order(0) == order(0) != order(1)
    assert sorted(order(0)) == list(range(23)) and order(0) != list(range(23))
    x_all, y_all = train.tensors()
    assert x_all.shape == (23, 1, 28, 28) and torch.equal(y_all, train.labels)
    with pytest.raises(AdvlabError):
        next(train.batches(0))


def test_loaded_data_does_not_alias_the_cache(tmp_path):
    make_idx(tmp_path)
    first = load_dataset("mnist", data_dir=tmp_path)
    first.images.zero_()
    assert load_dataset("mnist", data_dir=tmp_path).images.any()


def test_val_split(tmp_path):
    make_idx(tmp_path, n_train=20)
    full = load_dataset("mnist", data_dir=tmp_path)
    val = load_dataset("mnist", "val", data_dir=tmp_path, val_size=6)
    train = load_dataset("mnist", "train", data_dir=tmp_path, val_size=6)
    assert len(val) == 6 and len(train) == 14
    val_ids, train_ids = first_pixel_index(val.tensors()[0]), first_pixel_index(train.tensors()[0])
    assert sorted(val_ids.tolist() + train_ids.tolist()) == list(range(20))
    assert torch.equal(val.labels, full.labels[val_ids])
    assert torch.equal(load_dataset("mnist", "val", data_dir=tmp_path, val_size=6).images, val.images)
    with pytest.raises(AdvlabError, match="val_size"):
        load_dataset("mnist", "val", data_dir=tmp_path)
    with pytest.raises(AdvlabError, match="val_size"):
        load_dataset("mnist", "train", data_dir=tmp_path, val_size=20)
    with pytest.raises(AdvlabError, match="split"):
        load_dataset("mnist", "validation", data_dir=tmp_path)


def test_cifar_folder_and_archive(tmp_path):
    members = make_cifar_dir(tmp_path / "folder")
    make_cifar_tar(tmp_path / "archive" / "cifar-10-python.tar.gz", members)
    for root, where in (
        (tmp_path / "folder", tmp_path / "folder" / "cifar-10-batches-py"),
        (tmp_path / "archive", tmp_path / "archive"),
    ):
        assert locate_dataset("cifar10", root) == (where, "--data-dir")
        train = load_dataset("cifar10", "train", data_dir=root)
        test = load_dataset("cifar10", "test", data_dir=root)
        assert train.images.shape == (15, 3, 32, 32) and len(test) == 3
        expected = np.concatenate([members[f"data_batch_{i}"][1] for i in range(1, 6)])
        assert np.array_equal(train.images.numpy(), expected)  # red plane, green, blue: NCHW
        assert test.labels.tolist() == members["test_batch"][2].tolist()


def test_cifar_batch_pickled_by_python3_numpy(tmp_path):
    members = make_cifar_dir(tmp_path)
    _, images, labels = members["test_batch"]
    batch = {b"labels": labels.tolist(), b"data": images.reshape(len(images), -1)}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=3))
    assert np.array_equal(load_dataset("cifar10", "test", data_dir=tmp_path).images.numpy(), images)


# ------------------------------------------------------------------------------------- corruption


def _expect_corrupt(root: Path, name: str, filename: str, *, split: str = "train") -> str:
    with pytest.raises(AdvlabError) as err:
        load_dataset(name, split, data_dir=root)
    message = str(err.value)
    assert filename in message and "advlab data download" in message and "\n" not in message
    return message


def test_bad_magic_number(tmp_path):
    make_idx(tmp_path, gz=False)
    raw = bytearray((tmp_path / IDX_FILES[0]).read_bytes())
    raw[2] = 0x0D  # float32 instead of uint8
    (tmp_path / IDX_FILES[0]).write_bytes(raw)
    assert "magic" in _expect_corrupt(tmp_path, "mnist", IDX_FILES[0])


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file(tmp_path, gz):
    make_idx(tmp_path, gz=gz)
    path = tmp_path / (IDX_FILES[2] + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[:-100])
    _expect_corrupt(tmp_path, "mnist", path.name, split="test")


def test_image_label_count_mismatch(tmp_path):
    make_idx(tmp_path, n_train=20)
    (tmp_path / f"{IDX_FILES[1]}.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(19, np.uint8))))
    assert "19 labels" in _expect_corrupt(tmp_path, "mnist", IDX_FILES[1])


def test_labels_out_of_range(tmp_path):
    make_idx(tmp_path, n_train=20)
    (tmp_path / f"{IDX_FILES[1]}.gz").write_bytes(gzip.compress(idx_bytes(np.full(20, 10, np.uint8))))
    _expect_corrupt(tmp_path, "mnist", IDX_FILES[0])


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_forbidden_global_is_refused(tmp_path):
    make_cifar_dir(tmp_path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Exploit(marker), b"labels": []}, protocol=3)
    assert b"posix\nsystem" in payload
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(payload)
    message = _expect_corrupt(tmp_path, "cifar10", "data_batch_3")
    assert "refused" in message and "system" in message and not marker.exists()


@pytest.mark.parametrize(
    "content",
    [
        b"not a pickle at all",
        pickle.dumps([1, 2, 3], protocol=2),
        pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}),
    ],
)
def test_corrupt_cifar_batch(tmp_path, content):
    make_cifar_dir(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    _expect_corrupt(tmp_path, "cifar10", "test_batch", split="test")


def test_corrupt_cifar_archive(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(gzip.compress(b"garbage")[:-4])
    _expect_corrupt(tmp_path, "cifar10", "cifar-10-python.tar.gz")


# ------------------------------------------------------------------------------------ search order


def test_search_order(tmp_path, monkeypatch):
    info = dataclasses.replace(DATASETS["mnist"], system_dir=str(tmp_path / "system"))
    monkeypatch.setitem(DATASETS, "mnist", info)
    places = {
        "system": tmp_path / "system",
        "cache": cache_dir() / "mnist",
        "$ADVLAB_DATA": tmp_path / "env",
        "--data-dir": tmp_path / "explicit",
    }
    for n, (source, folder) in enumerate(places.items(), start=10):
        make_idx(folder, n_train=n)
    monkeypatch.setenv("ADVLAB_DATA", str(places["$ADVLAB_DATA"]))
    assert locate_dataset("mnist", places["--data-dir"]) == (places["--data-dir"], "--data-dir")
    assert len(load_dataset("mnist", data_dir=places["--data-dir"])) == 13
    for source, n in (("$ADVLAB_DATA", 12), ("cache", 11), ("system", 10)):
        assert locate_dataset("mnist") == (places[source], source)
        assert len(load_dataset("mnist", download=False)) == n
        for path in places[source].iterdir():
            path.unlink()
    assert locate_dataset("mnist") == (None, "missing")
    with pytest.raises(AdvlabError, match="advlab data download mnist"):
        load_dataset("mnist", download=False)


def test_explicit_data_dir_without_files_does_not_fall_through(tmp_path, monkeypatch):
    make_idx(tmp_path / "env")
    monkeypatch.setenv("ADVLAB_DATA", str(tmp_path / "env"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert locate_dataset("mnist", empty) == (None, "missing")
    with pytest.raises(AdvlabError) as err:
        load_dataset("mnist", data_dir=empty)
    assert str(empty) in str(err.value) and f"advlab data download mnist --data-dir {empty}" in str(err.value)


def test_list_datasets(tmp_path):
    make_idx(tmp_path / "mnist")
    rows = {row["name"]: row for row in list_datasets(tmp_path)}
    assert set(rows) == set(DATASETS)
    assert rows["mnist"] == {
        "name": "mnist",
        "classes": 10,
        "shape": (1, 28, 28),
        "location": str(tmp_path / "mnist"),
        "source": "--data-dir",
    }
    assert rows["cifar10"]["location"] is None and rows["cifar10"]["source"] == "missing"


# --------------------------------------------------------------------------------------- downloads


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """(folder, base URL) of an HTTP server on 127.0.0.1 serving ``folder``."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=folder))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/files"
    httpd.shutdown()
    httpd.server_close()


def pin(monkeypatch, name: str, folder: Path, **changes) -> None:
    """Make DATASETS[name] expect the files in ``folder`` (sizes and hashes of those small files)."""
    info = DATASETS[name]
    specs = tuple(
        FileSpec(s.name, (folder / s.name).stat().st_size, hashlib.sha256((folder / s.name).read_bytes()).hexdigest())
        for s in info.downloads
    )
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(info, downloads=specs, **changes))


def serve_mnist(server_folder: Path) -> dict:
    return make_idx(server_folder / "files", gz=True, seed=7)


def test_download_and_load(server, monkeypatch):
    folder, url = server
    arrays = serve_mnist(folder)
    pin(monkeypatch, "mnist", folder / "files")
    target = download_dataset("mnist", mirror=url, progress=False)
    assert target == cache_dir() / "mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n in IDX_FILES)
    assert locate_dataset("mnist") == (target, "cache")
    assert np.array_equal(load_dataset("mnist").labels.numpy(), arrays[IDX_FILES[1]])


def test_load_downloads_when_missing_via_env_mirror(server, monkeypatch, tmp_path):
    folder, url = server
    serve_mnist(folder)
    pin(monkeypatch, "mnist", folder / "files")
    monkeypatch.setenv("ADVLAB_MIRROR", url)
    assert len(load_dataset("mnist", "test", progress=False)) == 8
    dest = download_dataset("mnist", tmp_path / "mine", progress=False)  # also into an explicit folder
    assert dest == tmp_path / "mine" / "mnist" and locate_dataset("mnist", tmp_path / "mine")[0] == dest


def test_mirrors_are_tried_in_order(server, monkeypatch):
    folder, url = server
    serve_mnist(folder)
    pin(monkeypatch, "mnist", folder / "files", mirrors=(url.replace("/files", "/nowhere"), url))
    assert len(load_dataset("mnist", progress=False)) == 20


def test_checksum_mismatch_leaves_no_file(server, monkeypatch):
    folder, url = server
    serve_mnist(folder)
    pin(monkeypatch, "mnist", folder / "files")
    info = DATASETS["mnist"]
    bad = (dataclasses.replace(info.downloads[0], sha256="0" * 64),) + info.downloads[1:]
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(info, downloads=bad))
    with pytest.raises(AdvlabError, match="SHA-256") as err:
        download_dataset("mnist", mirror=url, progress=False)
    assert f"{url}/train-images-idx3-ubyte.gz" in str(err.value) and "--data-dir" in str(err.value)
    assert list((cache_dir() / "mnist").iterdir()) == []  # neither the file nor a temporary one


def test_http_404_is_a_clear_error(server, monkeypatch):
    folder, url = server
    serve_mnist(folder)
    pin(monkeypatch, "mnist", folder / "files")
    (folder / "files" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(AdvlabError, match="404") as err:
        download_dataset("mnist", mirror=url, progress=False)
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value)
    assert not (cache_dir() / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def test_connection_refused_is_a_clear_error():
    with socket.socket() as sock:  # a port that was just free: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(AdvlabError, match=f"127.0.0.1:{port}") as err:
        download_dataset("mnist", mirror=url, progress=False)
    assert "$ADVLAB_DATA" in str(err.value)


def test_cifar_download_is_extracted_safely(server, monkeypatch, tmp_path):
    folder, url = server
    members = cifar_members()
    make_cifar_tar(folder / "files" / "cifar-10-python.tar.gz", members, extra={"../../escaped": b"x"})
    pin(monkeypatch, "cifar10", folder / "files")
    target = download_dataset("cifar10", mirror=url, progress=False)
    assert sorted(p.name for p in (target / "cifar-10-batches-py").iterdir()) == sorted(members)
    assert not (target / "cifar-10-python.tar.gz").exists()
    assert not any(p.name == "escaped" for p in tmp_path.rglob("escaped"))
    assert locate_dataset("cifar10") == (target / "cifar-10-batches-py", "cache")
    assert load_dataset("cifar10", "test").labels.tolist() == members["test_batch"][2].tolist()
    assert download_dataset("cifar10", mirror=url + "/gone", progress=False) == target  # already there
