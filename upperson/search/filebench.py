"""The bad-input case "a gallery with 100,000 files, some unreadable", as a measurement.

:func:`benchmark_index_files` writes a synthetic gallery (small real PNGs of a few distinct
contents, every ``bad_every``-th file not an image, one dangling link) into a temporary folder,
indexes it with the real decoder and model, and reports the times and what the build said: one
warning naming the skipped files, a complete index holding exactly the readable ones, and
nothing else in the folder. It then times an update with nothing changed (stat only) and one
with one new file (its appended entry table's bytes). Times are wall-clock and this process's CPU
seconds (all threads), the latter the one to compare on a loaded machine. ``python -m upperson benchmark
--index-files N`` runs it; the test suite runs it at a few hundred files.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from upperson.search.build import build_index
from upperson.search.entries import ENTRIES_DIR
from upperson.search.store import MANIFEST, IndexStore

log = logging.getLogger(__name__)

FOLDERS = 20  # the gallery's sub-folders


class _Warnings(logging.Handler):
    """Collects the WARNING records of ``upperson.search`` while a build runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def write_gallery(folder: Path, n: int, *, bad_every: int = 100, distinct: int = 100, seed: int = 0) -> int:
    """``n`` files under ``folder`` (in FOLDERS sub-folders); returns how many are unreadable."""
    rng = np.random.default_rng(seed)
    contents = []
    for _ in range(distinct):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 16, 3), dtype=np.uint8), "RGB").save(buf, format="PNG")
        contents.append(buf.getvalue())
    for d in range(FOLDERS):
        (folder / f"{d:02d}").mkdir(parents=True, exist_ok=True)
    bad = 0
    for i in range(n):
        path = f"{folder}/{i % FOLDERS:02d}/{i:07d}.png"  # plain os calls: pathlib triples the time
        if i == min(77, n - 1):
            os.symlink(folder.parent / "gone.png", path)  # a dangling link: cannot be read
            bad += 1
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if i % bad_every == 0:
            os.write(fd, b"not an image %d" % i)
            bad += 1
        else:
            os.write(fd, contents[i % distinct])
        os.close(fd)
    return bad


def benchmark_index_files(model: torch.nn.Module, n: int, *, bad_every: int = 100, distinct: int = 100,
                          workdir: Optional[Path] = None, batch_size: int = 64) -> dict[str, Any]:
    """Index a synthetic gallery of ``n`` files, some unreadable; times and what the build reported."""
    if n < 2 or bad_every < 2 or distinct < 1:
        raise ValueError(f"need n >= 2 files ({n}), bad_every >= 2 ({bad_every}), distinct >= 1 ({distinct})")
    root = Path(tempfile.mkdtemp(prefix="upperson-index-files-", dir=workdir))
    gallery, out = root / "gallery", root / "index"
    handler = _Warnings()
    logger = logging.getLogger("upperson.search")
    try:
        t = time.perf_counter()
        unreadable = write_gallery(gallery, n, bad_every=bad_every, distinct=distinct)
        created = time.perf_counter() - t
        logger.addHandler(handler)
        t, cpu = time.perf_counter(), time.process_time()
        report = build_index(model, gallery, out, source="benchmark", progress=False, batch_size=batch_size)
        built, built_cpu = time.perf_counter() - t, time.process_time() - cpu
        warnings = list(handler.messages)
        store = IndexStore.open(out)
        folder_files = sorted(p.name for p in out.iterdir())
        ok = (store.manifest.complete and len(store) == n - unreadable and len(report.skipped) == unreadable
              and len(warnings) == 1 and folder_files == [".lock", ENTRIES_DIR, MANIFEST, "segments"])
        t, cpu = time.perf_counter(), time.process_time()
        unchanged = build_index(model, gallery, out, source="benchmark", progress=False, batch_size=batch_size)
        update, update_cpu = time.perf_counter() - t, time.process_time() - cpu
        tables = {p.name for p in (out / ENTRIES_DIR).iterdir()}
        extra = gallery / "00" / "9999999.png"
        Image.new("RGB", (16, 48), (1, 2, 3)).save(extra)
        t, cpu = time.perf_counter(), time.process_time()
        one = build_index(model, gallery, out, source="benchmark", progress=False, batch_size=batch_size)
        append, append_cpu = time.perf_counter() - t, time.process_time() - cpu
        appended = sum(p.stat().st_size for p in (out / ENTRIES_DIR).iterdir() if p.name not in tables)
        ok = ok and unchanged.encoded == 0 and one.encoded == 1 and len(IndexStore.open(out)) == n - unreadable + 1
        return {"files": n, "unreadable": unreadable, "distinct_contents": distinct, "ok": ok,
                "create_s": round(created, 2), "build_s": round(built, 2), "build_cpu_s": round(built_cpu, 2),
                "files_per_s": round(n / built),
                "encoded": report.encoded, "indexed": report.indexed, "skipped": len(report.skipped),
                "warnings": len(warnings), "warning": warnings[0][:160] if warnings else "",
                "unchanged_update_s": round(update, 2), "unchanged_update_cpu_s": round(update_cpu, 2),
                "one_new_file_s": round(append, 2), "one_new_file_cpu_s": round(append_cpu, 2),
                "appended_entry_bytes": appended,
                "entry_bytes": sum(p.stat().st_size for p in (out / ENTRIES_DIR).iterdir())}
    finally:
        logger.removeHandler(handler)
        shutil.rmtree(root, ignore_errors=True)
