"""Atomic file writes: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, Path]

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# how writers that are not OSError (safetensors' SafetensorError) spell a full disk
_DISK_FULL_TEXTS = ("no space left on device", "os error 28", "storagefull", "disk quota exceeded")


class DiskFullError(RuntimeError):
    """A write failed because the disk (or the quota) is full; the message names the folder and the space needed."""


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed over ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file ordinary permissions
    try:
        yield tmp_path
        _fsync_file(tmp_path)  # the bytes are on disk before the name points at them
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: PathLike) -> None:
    """Finish a :func:`replace_dir` cut short: between its two renames ``final.old`` becomes ``final``
    again; after them, the leftover ``final.old`` is removed. A half-written ``final.tmp`` goes too."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.is_dir():
        old.rename(final)
        fsync_dir(final.parent)
    elif final.is_dir() and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(final.with_name(final.name + ".tmp"), ignore_errors=True)


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
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an ``OSError``, or a writer's own error type) says the disk or quota is full."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    text = str(exc).lower()
    return any(t in text for t in _DISK_FULL_TEXTS)


def free_bytes(folder: PathLike) -> int:
    """Free bytes for an unprivileged writer on the file system of ``folder`` (or the nearest existing folder above)."""
    return shutil.disk_usage(nearest_existing(folder)).free


def remove_temporaries(folder: PathLike) -> list[Path]:
    """Remove every ``*.tmp`` file or folder under ``folder`` (what an interrupted atomic write left); returns them."""
    removed = []
    for p in sorted(Path(folder).rglob("*.tmp"), key=lambda q: len(q.parts)):
        if not os.path.lexists(p):
            continue  # inside a .tmp folder removed before
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@contextmanager
def disk_full_reported(folder: PathLike, needed: int, what: str, after: str) -> Iterator[None]:
    """Turn a full disk inside the block into one :class:`DiskFullError` naming ``folder``, the space
    ``needed`` (bytes) and the space free; the temporary files under ``folder`` are removed first.
    ``after`` says what is kept and how to continue."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        remove_temporaries(folder)
        raise DiskFullError(
            f"no space left on the device of {folder} while writing {what}: it needs about {_mb(needed)} free, "
            f"{_mb(free_bytes(folder))} are free; free some space (or choose another --output), then {after}"
        ) from exc
