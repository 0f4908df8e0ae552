"""Atomic file writes: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, Path]


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed over ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
    try:
        yield tmp_path
        _fsync_file(tmp_path)  # the bytes are on disk before the name points at them
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: PathLike) -> None:
    """Make a rename or a new file in folder ``path`` durable (a no-op where folders cannot be synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def replace_dir(tmp: PathLike, final: PathLike) -> None:
    """Swap a fully written folder ``tmp`` in at ``final`` (the old one is removed after)."""
    import shutil

    tmp, final = Path(tmp), Path(final)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: PathLike) -> None:
    """Undo a :func:`replace_dir` cut short between its two renames: ``final.old`` becomes ``final`` again."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.is_dir():
        old.rename(final)
        fsync_dir(final.parent)


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def nearest_existing(path: PathLike) -> Path:
    """``path`` itself, or the nearest folder above it that exists."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def probe_write(folder: PathLike) -> None:
    """Create a file in ``folder`` and remove it at once; raises ``OSError`` when that fails
    (trying it, because ``os.access`` says yes to root on a read-only mount)."""
    with tempfile.TemporaryFile(dir=folder, prefix=".upperson-probe-"):
        pass


def check_writable_file(path: PathLike, what: str = "output file") -> None:
    """Raise ``PermissionError``/``ValueError`` now, before any work, when ``path`` could not be written.

    The nearest existing folder above ``path`` must be a writable folder, and ``path`` itself
    must not be a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name")
    parent = nearest_existing(path.parent)
    if not parent.is_dir():
        raise ValueError(f"{what} {path}: {parent} is not a folder")
    try:
        probe_write(parent)
    except OSError as exc:
        raise PermissionError(exc.errno or 13, exc.strerror or "Permission denied", str(path)) from None


def atomic_copy(src: PathLike, dst: PathLike) -> None:
    """Copy file ``src`` to ``dst`` atomically (a temporary copy beside ``dst``, synced, then renamed)."""
    import shutil

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
