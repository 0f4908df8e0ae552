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
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Optional

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
        atexit.register(self.cleanup)

    def cleanup(self) -> None:
        """Remove the folder (idempotent)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def _write(self, data: bytes, suffix: str) -> str:
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
        """A small JPEG of ``src`` (never upscaled), with a green (relevant) or red frame when known."""
        stat = src.stat()
        key = f"thumb:{src}:{stat.st_mtime_ns}:{stat.st_size}:{relevant}:{height}"
        with self._lock:
            hit = self._made.get(key)
        if hit is not None and Path(hit).exists():
            return hit
        with Image.open(src) as im:
            img = ImageOps.exif_transpose(im).convert("RGB")
        if img.height > height:
            img = img.resize((max(1, round(img.width * height / img.height)), height), Image.BILINEAR)
        if relevant is not None:
            border = max(2, img.height // 40)
            img = ImageOps.expand(img, border=border, fill=MATCH if relevant else MISMATCH)
        return self.save(img, key, fmt="JPEG")
