"""Files written all or nothing, and JSON read with a one-line error: what every other module saves through.

Every write goes to a temporary file in the same folder and is moved into place with ``os.replace``, so an
interrupted write never leaves a half-written file under the final name::

    from advlab.files import read_json, write_json
    write_json("runs/x/summary.json", {"accuracy": 0.9})
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from advlab.errors import AdvlabError


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace`` (all or nothing)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise AdvlabError(f"cannot write to {path.parent}: {err.strerror}; choose a writable folder") from None
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a quota, a vanished folder: name the file, leave nothing behind
        Path(tmp).unlink(missing_ok=True)
        raise AdvlabError(
            f"cannot write {path}: {err.strerror or err}; free some space or choose another folder"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


LOCK_NAME = ".advlab.lock"  # in a run folder; an output file's lock is FILE.lock beside it


def lock_path(target: str | Path) -> Path:
    target = Path(target)
    return target / LOCK_NAME if target.is_dir() else target.with_name(target.name + ".lock")


@contextlib.contextmanager
def run_lock(target: str | Path) -> Iterator[None]:
    """Hold the one-writer lock of a run folder (or an output file) for the duration of the block; refuse
    with a one-line error, naming the holder's process id, while another process holds it.

    The OS's advisory lock (``flock``) is released when its holder exits, however it exits, so the lock file
    a killed process leaves behind is stale and simply taken over. Without ``fcntl`` (Windows) nothing is
    locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        yield
        return
    target = Path(target)
    path = lock_path(target)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise AdvlabError(
                f"another advlab process{who} is writing to {target}; wait for it to finish or choose another --out"
            ) from None
        try:  # the previous holder may have removed the file between our open and our lock: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def check_writable(path: str | Path, what: str = "--out") -> Path:
    """Refuse, before any work, a ``path`` that could not be written: its nearest existing ancestor must be a
    writable folder. Creates nothing (a failed command leaves no new folder behind)."""
    path = Path(path)
    ancestor = path.parent if not path.exists() else path
    while not ancestor.exists():
        ancestor = ancestor.parent
    target = path if path.exists() else ancestor
    if (
        not ancestor.is_dir()
        or not os.access(ancestor, os.W_OK | os.X_OK)
        or (path.exists() and not os.access(target, os.W_OK))
    ):
        raise AdvlabError(f"cannot write {path}: {ancestor} is not a writable folder; choose another {what}")
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdvlabError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdvlabError(f"{path} is not a readable JSON file ({err}); recreate it or point to another run") from None
    except RecursionError:  # a record nested thousands of levels deep: made to hurt, never written by advlab
        raise AdvlabError(f"{path} is nested too deeply to be a record advlab wrote; recreate it") from None


NAME_LIMIT = 100  # characters: a name that becomes a file or folder name


def safe_name(name: Any, what: str) -> str:
    """``name`` if it can be one file or folder name and nothing else: 1 to :data:`NAME_LIMIT` characters,
    no path separator, not ``.`` or ``..``, no control character. Anything else is refused with one line
    (a name from a shared config must never write outside the output folder)."""
    text = str(name)
    problem = (
        "is empty"
        if not text.strip()
        else f"is {len(text)} characters long (at most {NAME_LIMIT})"
        if len(text) > NAME_LIMIT
        else "holds a path separator"
        if "/" in text or "\\" in text or (os.altsep and os.altsep in text)
        else "is a relative path"
        if text.strip() in (".", "..")
        else "holds a control character"
        if any(ord(c) < 32 or ord(c) == 127 for c in text)
        else None
    )
    if problem:
        raise AdvlabError(
            f"{what} {text[:40]!r}{'...' if len(text) > 40 else ''} {problem}: a name becomes a folder "
            "name, so use letters, digits, '-', '_' or '.'"
        )
    return text


def inside(folder: str | Path, path: str | Path) -> Path:
    """``path`` if it lies inside ``folder`` once resolved (links followed), else a one-line refusal."""
    root, target = Path(folder).resolve(), Path(path).resolve()
    if target != root and root not in target.parents:
        raise AdvlabError(f"{path} would be written outside {folder}; refused")
    return Path(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1:  # a one-element tensor
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
