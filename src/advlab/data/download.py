"""Verified downloads: each file streamed to a temporary name, checked against its pinned SHA-256, then
moved into place, so a failed download never leaves a file that looks complete.

Command line: ``advlab data download NAME`` (into the cache, or ``--data-dir DIR``); ``$ADVLAB_MIRROR``
replaces the download base URL.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from advlab.data.catalogue import CIFAR_ARCHIVE, CIFAR_DIR, DatasetInfo, FileSpec, cache_dir, get_info
from advlab.data.formats import read_archive
from advlab.errors import AdvlabError
from advlab.files import atomic_write_bytes, file_sha256

_TIMEOUT_S = 30  # per socket operation: long enough for a slow mirror, short enough not to hang a run


class _ChecksumMismatch(Exception):
    pass


def download_dataset(
    name: str, dest: str | Path | None = None, *, mirror: str | None = None, progress: bool = True
) -> Path:
    """Download a data set into ``dest/<name>`` (default: the cache) and return that folder.

    Each file is streamed to a temporary name, checked against its pinned SHA-256 and only then renamed,
    so a failed download never leaves a file that looks complete. ``mirror`` (or ``$ADVLAB_MIRROR``)
    replaces the official base URLs. Files already present with the right hash are kept.
    """
    info = get_info(name)
    folder = (Path(dest).expanduser() if dest is not None else cache_dir()) / info.name
    if info.kind == "cifar" and all((folder / CIFAR_DIR / f).is_file() for f in info.train_files + info.test_files):
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AdvlabError(f"cannot create {folder} for the download: {err}") from None
    override = mirror or os.environ.get("ADVLAB_MIRROR")
    bases = (override,) if override else info.mirrors
    for spec in info.downloads:
        target = folder / spec.name
        if not (target.is_file() and file_sha256(target) == spec.sha256):
            _fetch(spec, target, bases, info, progress)
    if info.kind == "cifar":
        # Extract once so later runs read small pickles instead of gunzipping 170 MB each time.
        archive = folder / CIFAR_ARCHIVE
        for member, raw in read_archive(archive, info.train_files + info.test_files, info).items():
            atomic_write_bytes(folder / CIFAR_DIR / member, raw)
        archive.unlink()
    return folder


def _fetch(spec: FileSpec, target: Path, bases: Sequence[str], info: DatasetInfo, progress: bool) -> None:
    failures = []
    for base in bases:
        url = f"{base.rstrip('/')}/{spec.name}"
        try:
            _download(url, target, spec, progress)
            return
        # URLError, HTTPError and timeouts are OSErrors; a connection cut mid-body is an HTTPException.
        except (OSError, http.client.HTTPException, _ChecksumMismatch) as err:
            failures.append(f"{url} ({err})")
    raise AdvlabError(
        f"could not download {info.name}: {'; '.join(failures)}. Fetch {spec.name} by hand into {target.parent}, "
        f"or put the files in a folder and pass --data-dir DIR or set $ADVLAB_DATA"
    )


def _download(url: str, target: Path, spec: FileSpec, progress: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{spec.name}.", suffix=".part")
    try:
        digest, size = hashlib.sha256(), 0
        request = urllib.request.Request(url, headers={"User-Agent": "advlab"})  # some hosts refuse urllib's
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response,
            tqdm(total=spec.size, unit="B", unit_scale=True, desc=spec.name, disable=not progress) as bar,
        ):
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != spec.sha256:
            raise _ChecksumMismatch(
                f"got {size} bytes with SHA-256 {digest.hexdigest()}, expected {spec.size} bytes with {spec.sha256}"
            )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
