"""Images the app makes (result thumbnails, heatmaps), cached and content-addressed in a private temp folder.

Results are served as small thumbnails (at most :data:`THUMB_HEIGHT` pixels high, JPEG), so
a page or a ``gradio_client`` fetches a few kilobytes per result instead of the original
file. Each picture is made once per (source file, size, mtime, frame) and written atomically
under a name derived from its bytes, so identical pictures share one file and a reader never
sees a half-written one. The folder is removed when the process ends (normal exit; the
demo's command line turns SIGTERM into a normal exit).

**What may be served.** Every file written here is recorded; :meth:`ImageFiles.may_serve` is
the app's allow-list (a path that resolves, now, to a file this object wrote). A source image
is read only through :func:`open_inside`: it must resolve inside :attr:`ImageFiles.source_roots`
before and after it is opened, so a symlink swapped into a gallery after indexing is refused
(:class:`OutsideRoots`), never thumbnailed. A failed write (a full disk) is a :class:`WriteError`
naming the folder; the temporary file is removed.

**Size.** A long-running demo makes a new picture for every (query, image) explanation, so the
folder keeps at most ``max_bytes`` (default :data:`MAX_BYTES`, 512 MiB) of pictures: past it the
least recently used are removed and forgotten (no longer servable; made again when asked for).
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import stat
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO, Iterable, Optional, Sequence, Union

from PIL import Image, ImageOps

from upperson.io import atomic_path

THUMB_HEIGHT = 160
MATCH = (46, 160, 67)  # frame of a result of the query's identity
MISMATCH = (200, 50, 50)
PLACEHOLDER = (200, 200, 200)  # the picture of a result that cannot be shown
MAX_BYTES = 512 * 2**20  # the folder's default size budget

PathLike = Union[str, Path]


class OutsideRoots(PermissionError):
    """A file that resolves outside the folders the app may read to show it."""


class WriteError(OSError):
    """The app's image folder cannot be written (a full disk, a removed folder); the message says which."""


def real(path: PathLike) -> Path:
    """``path`` absolute, with every symlink followed (``os.path.realpath``; never raises for a loop)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def within(path: Path, roots: Iterable[Path]) -> bool:
    """Whether the resolved ``path`` is one of ``roots`` (resolved already) or lies below one."""
    return any(path == r or r in path.parents for r in roots)


def _opened_path(fd: int) -> Optional[Path]:
    """The path the kernel opened for ``fd`` (Linux ``/proc``); None where that is not available."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def open_inside(path: PathLike, roots: Sequence[PathLike]) -> BinaryIO:
    """``path`` opened for reading if it is a regular file that resolves inside ``roots``; else OutsideRoots.

    Checked before the open and again on the opened file (its ``/proc`` path, or its inode
    against the checked path's), so a symlink swapped in between is caught, not followed.
    """
    allowed = [real(r) for r in roots]
    target = real(path)
    refused = OutsideRoots(f"{path}: resolves outside the allowed folders ({', '.join(map(str, allowed))}); "
                           "not read")
    if not within(target, allowed):
        raise refused
    fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        opened = _opened_path(fd)
        if opened is None:
            now = os.stat(target, follow_symlinks=False)
            same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
        else:
            same = within(opened, allowed)
        if not same:
            raise refused
        if not stat.S_ISREG(st.st_mode):
            raise OutsideRoots(f"{path}: not a regular file; not read")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _intact(path: str) -> bool:
    """Whether a file made before is still there as a regular file (not removed, not swapped for a link)."""
    return os.path.isfile(path) and not os.path.islink(path)


def _write_file(path: Path, data: bytes) -> None:
    """``data`` into the (temporary) file ``path``; the one place the app's pictures reach the disk."""
    path.write_bytes(data)


class ImageFiles:
    """A private folder of generated images, content-addressed; thread-safe.

    ``source_roots``: the folders source images may resolve inside (None: any file, for use
    outside the app; the app always sets them, see :meth:`allow_sources`). ``max_bytes``: the
    folder's size budget (least recently used pictures removed past it; the newest always kept).
    """

    def __init__(self, prefix: str = "upperson-demo-", source_roots: Optional[Sequence[PathLike]] = None,
                 max_bytes: int = MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self._real_dir = real(self.dir)
        self._lock = threading.Lock()
        self._made: dict[str, str] = {}  # source key -> file
        self._served: set[str] = set()  # every file written (resolved): what may be served
        self._used: OrderedDict[str, int] = OrderedDict()  # served file -> bytes, least recently used first
        self.source_roots: Optional[list[Path]] = None if source_roots is None else []
        if source_roots is not None:
            self.allow_sources(source_roots)
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        atexit.register(self.cleanup)

    def allow_sources(self, roots: Iterable[PathLike]) -> None:
        """Let source images resolve inside ``roots`` too (from then on, only inside the folders allowed so far)."""
        with self._lock:
            known = list(self.source_roots or [])
            self.source_roots = known + [r for r in map(real, roots) if r not in known]

    def open_source(self, src: PathLike) -> BinaryIO:
        """``src`` opened for reading, if it resolves inside the source roots (:func:`open_inside`)."""
        roots = self.source_roots
        if roots is None:
            return open(src, "rb")
        return open_inside(src, roots)

    def check_source(self, src: PathLike) -> None:
        """OutsideRoots unless ``src`` resolves inside the source roots now."""
        self.open_source(src).close()

    def may_serve(self, path: PathLike) -> bool:
        """Whether ``path`` resolves, now, to a regular file this object wrote (the app's allow-list)."""
        p = real(path)
        with self._lock:
            listed = str(p) in self._served
        return listed and p.parent == self._real_dir and p.is_file()

    def cleanup(self) -> None:
        """Stop warming, then remove the folder (idempotent)."""
        self._closed.set()
        for t in self._threads:
            t.join(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def write(self, data: bytes, suffix: str) -> str:
        """``data`` as the file named by its hash (written once, atomically); its path, now servable."""
        if self._closed.is_set():
            raise RuntimeError("the app's image folder is closed")
        path = self.dir / (hashlib.sha256(data).hexdigest()[:32] + suffix)
        if not path.is_file() or path.is_symlink():
            try:
                with atomic_path(path) as tmp:
                    _write_file(Path(tmp), data)
            except OSError as exc:
                free = shutil.disk_usage(self.dir).free if self.dir.is_dir() else 0
                raise WriteError(exc.errno, f"cannot write the app's image folder {self.dir} "
                                 f"({exc.strerror or exc}; {free} bytes free, {len(data)} needed): free space "
                                 "there, or set TMPDIR to another disk") from exc
        with self._lock:
            name = str(real(path))
            self._served.add(name)
            self._used[name] = len(data)
            self._used.move_to_end(name)
            self._evict(keep=name)
        return str(path)

    def bytes_used(self) -> int:
        """The bytes of the pictures this object keeps now."""
        with self._lock:
            return sum(self._used.values())

    def _evict(self, keep: str) -> None:
        """Remove the least recently used files past :attr:`max_bytes` (never ``keep``); under the lock."""
        total = sum(self._used.values())
        while total > self.max_bytes and len(self._used) > 1:
            name, size = next(iter(self._used.items()))
            if name == keep:
                self._used.move_to_end(name)
                continue
            del self._used[name]
            total -= size
            self._served.discard(name)
            for key in [k for k, v in self._made.items() if str(real(v)) == name]:
                del self._made[key]
            try:
                os.unlink(name)
            except OSError:
                pass

    def _hit(self, key: str) -> Optional[str]:
        """The file made before for ``key`` if it is still there (and now the most recently used)."""
        with self._lock:
            hit = self._made.get(key)
            if hit is not None and _intact(hit):
                name = str(real(hit))
                if name in self._used:
                    self._used.move_to_end(name)
                return hit
        return None

    def placeholder(self, height: int = THUMB_HEIGHT) -> str:
        """A plain grey picture for a result that cannot be shown (the caption or status says why)."""
        return self.save(Image.new("RGB", (max(1, height // 3), height), PLACEHOLDER), f"placeholder:{height}",
                         fmt="JPEG")

    def save(self, image: Image.Image, key: str, fmt: str = "PNG") -> str:
        """``image`` written once for ``key`` (a description of what it shows); its file path."""
        hit = self._hit(key)
        if hit is not None:
            return hit
        buf = io.BytesIO()
        if fmt.upper() == "JPEG":
            image.convert("RGB").save(buf, format="JPEG", quality=85, subsampling=0, optimize=True)
            suffix = ".jpg"
        else:
            image.save(buf, format="PNG", optimize=True)
            suffix = ".png"
        path = self.write(buf.getvalue(), suffix)
        with self._lock:
            self._made[key] = path
        return path

    def thumbnail(self, src: Path, relevant: Optional[bool] = None, height: int = THUMB_HEIGHT) -> str:
        """A small JPEG of ``src`` (never upscaled), with a green (relevant) or red frame when known.

        The unframed thumbnail is made first (the costly part: decoding the original) and the
        framed ones from it, so :meth:`warm` makes every later request cheap.
        """
        st = src.stat()
        key = f"thumb:{src}:{st.st_mtime_ns}:{st.st_size}:{relevant}:{height}"
        hit = self._hit(key)
        if hit is not None:
            return hit
        if relevant is None:
            with self.open_source(src) as fh, Image.open(fh) as im:
                img = ImageOps.exif_transpose(im).convert("RGB")
            if img.height > height:
                img = img.resize((max(1, round(img.width * height / img.height)), height), Image.BILINEAR)
        else:
            with Image.open(self.thumbnail(src, None, height)) as im:
                img = im.convert("RGB")
            border = max(2, img.height // 40)
            img = ImageOps.expand(img, border=border, fill=MATCH if relevant else MISMATCH)
        return self.save(img, key, fmt="JPEG")

    def warm(self, paths: Sequence[Path], height: int = THUMB_HEIGHT) -> threading.Thread:
        """Make the unframed thumbnails of ``paths`` in a background thread at the lowest CPU priority.

        Requests never wait for it (a thumbnail not made yet is made on demand); a file that
        cannot be read is skipped. It stops once half the folder's budget is used (a gallery too
        big to warm whole would only push out what was shown). Returns the (daemon) thread.
        """
        def run() -> None:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
            except (AttributeError, OSError):
                pass
            for p in list(paths):
                if self._closed.is_set() or self.bytes_used() >= self.max_bytes // 2:
                    return
                try:
                    self.thumbnail(Path(p), None, height)
                except Exception:  # unreadable now: made (or reported) on demand
                    continue

        thread = threading.Thread(target=run, name="thumbnails", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread
