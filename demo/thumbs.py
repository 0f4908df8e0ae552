"""Images the app makes (result thumbnails, heatmaps), cached and content-addressed in a private temp folder.

Results are served as small thumbnails (at most :data:`THUMB_HEIGHT` pixels high, JPEG), so
a page or a ``gradio_client`` fetches a few kilobytes per result instead of the original
file. Each picture is made once per (source file, size, mtime, frame) and written atomically
under a name derived from its bytes, so identical pictures share one file and a reader never
sees a half-written one. The folder is removed when the process ends (normal exit; the
demo's command line turns SIGTERM into a normal exit).
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, ImageOps

from upperson.io import atomic_path

THUMB_HEIGHT = 160
MATCH = (46, 160, 67)  # frame of a result of the query's identity
MISMATCH = (200, 50, 50)


class ImageFiles:
    """A private folder of generated images, content-addressed; thread-safe."""

    def __init__(self, prefix: str = "upperson-demo-") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self._lock = threading.Lock()
        self._made: dict[str, str] = {}  # source key -> file
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        atexit.register(self.cleanup)

    def cleanup(self) -> None:
        """Stop warming, then remove the folder (idempotent)."""
        self._closed.set()
        for t in self._threads:
            t.join(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _write(self, data: bytes, suffix: str) -> str:
        if self._closed.is_set():
            raise RuntimeError("the app's image folder is closed")
        path = self.dir / (hashlib.sha256(data).hexdigest()[:32] + suffix)
        if not path.exists():
            with atomic_path(path) as tmp:
                Path(tmp).write_bytes(data)
        return str(path)

    def save(self, image: Image.Image, key: str, fmt: str = "PNG") -> str:
        """``image`` written once for ``key`` (a description of what it shows); its file path."""
        with self._lock:
            hit = self._made.get(key)
        if hit is not None and Path(hit).exists():
            return hit
        buf = io.BytesIO()
        if fmt.upper() == "JPEG":
            image.convert("RGB").save(buf, format="JPEG", quality=85, subsampling=0, optimize=True)
            suffix = ".jpg"
        else:
            image.save(buf, format="PNG", optimize=True)
            suffix = ".png"
        path = self._write(buf.getvalue(), suffix)
        with self._lock:
            self._made[key] = path
        return path

    def thumbnail(self, src: Path, relevant: Optional[bool] = None, height: int = THUMB_HEIGHT) -> str:
        """A small JPEG of ``src`` (never upscaled), with a green (relevant) or red frame when known.

        The unframed thumbnail is made first (the costly part: decoding the original) and the
        framed ones from it, so :meth:`warm` makes every later request cheap.
        """
        stat = src.stat()
        key = f"thumb:{src}:{stat.st_mtime_ns}:{stat.st_size}:{relevant}:{height}"
        with self._lock:
            hit = self._made.get(key)
        if hit is not None and Path(hit).exists():
            return hit
        if relevant is None:
            with Image.open(src) as im:
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
        cannot be read is skipped. Returns the (daemon) thread.
        """
        def run() -> None:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
            except (AttributeError, OSError):
                pass
            for p in list(paths):
                if self._closed.is_set():
                    return
                try:
                    self.thumbnail(Path(p), None, height)
                except Exception:  # unreadable now: made (or reported) on demand
                    continue

        thread = threading.Thread(target=run, name="thumbnails", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread
