"""Every option of ``python -m analysis`` checked before any model, data or figure is made."""

from __future__ import annotations

import csv
import io
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Optional

from analysis.indices import parse_indices
from analysis.options import INDEX_OPTIONS, default_runs_dir, split_names
from upperson import stats

#: the largest input table read (an ablation.csv or a per-query file; 8,000 queries are about 1 MB)
MAX_INPUT_BYTES = 100 * 1024 * 1024
#: the largest --image read, in bytes and in pixels (PIL's own bomb limit only warns below 179 MP)
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000
#: a variant's name in a table: it names files (curves/<variant>.jsonl), so no path separator
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
#: numeric columns of an ablation table and their allowed range (a blank cell is allowed but in "variant", R1, mAP)
TABLE_RANGES = {
    **{c: (0.0, 100.0) for c in ("R1", "R5", "R10", "mAP", "mINP", "R1_std", "mAP_std", "R1_ci_low", "R1_ci_high",
                                 "mAP_ci_low", "mAP_ci_high", "trainable_percent")},
    **{c: (-100.0, 100.0) for c in ("R1_diff_vs_upperson", "R1_diff_ci_low", "R1_diff_ci_high")},
    **{c: (0.0, math.inf) for c in ("trainable_params", "total_params", "train_time_s", "epochs", "seeds",
                                    "ci_resamples", "ci_seed")},
}


def check_attention_ranges(args, model) -> None:
    """--layers/--heads inside ``model`` (image and text towers), before any attention is computed."""
    if not hasattr(args, "layers"):
        return
    image, text = model.blocks("image"), model.blocks("text")
    counts = {"layers": (len(image), "image layers"), "text_layers": (len(text), "text layers"),
              "heads": (image[0].attn.num_heads if args.text_heads is not None
                        else min(image[0].attn.num_heads, text[0].attn.num_heads), "heads"),
              "text_heads": (text[0].attn.num_heads, "text heads")}
    for attr, flag in INDEX_OPTIONS:
        spec = getattr(args, attr)
        if spec is not None:
            count, what = counts[attr]
            parse_indices(spec, count, f"{flag} ({what} of {model.config.name})")


def _writable(out: Path, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be written, before any work (and without creating it)."""
    probe = out.expanduser().absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {out}: {probe} is a file, not a folder; choose another output folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".write-test-", dir=probe)
    except OSError as exc:
        raise ValueError(f"{flag} {out}: cannot write in {probe} ({exc.strerror or exc}); "
                         "choose a writable output folder") from None
    os.close(fd)
    os.unlink(name)


def check_input_file(path: Path, what: str, limit: Optional[int] = None) -> None:
    """Refuse an input that is not a regular file (a FIFO would block, a device never end) or is
    larger than ``limit`` bytes (default :data:`MAX_INPUT_BYTES`), before it is opened for reading."""
    limit = MAX_INPUT_BYTES if limit is None else limit
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what} {path}: not a regular file; give a file")
    if info.st_size > limit:
        raise ValueError(f"{what} {path}: {info.st_size / 1e6:.1f} MB, larger than this input may be "
                         f"({limit} bytes, {limit / 1e6:.1f} MB)")


def check_image_file(path: Path, what: str = "--image") -> None:
    """A regular image file within :data:`MAX_IMAGE_BYTES` and :data:`MAX_IMAGE_PIXELS`; only
    its header is read (no pixel is decoded), so a decompression bomb is refused unopened."""
    from PIL import Image  # (a second's import: only when --image is given)

    check_input_file(path, what, MAX_IMAGE_BYTES)
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError...)
        raise ValueError(f"{what} {path}: unreadable image ({type(exc).__name__}: {exc})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{what} {path}: {width}x{height} = {width * height / 1e6:.1f} million pixels, more "
                         f"than an image may have ({MAX_IMAGE_PIXELS} pixels)")


def _text_of(path: Path):
    """A CSV input's text: a gzipped one (a shipped per-query file, ``.csv.gz``) inflated within
    ``upperson.stats.MAX_PER_QUERY_BYTES`` (a decompression bomb is refused), else the file."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == stats.GZIP_MAGIC
    if gzipped:
        return io.StringIO(stats.per_query_text(path).lstrip("\ufeff"), newline="")
    return open(path, newline="", encoding="utf-8-sig")


def read_csv_rows(path: Path, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line, cells)]) of a CSV input checked with :func:`check_input_file`; a row whose
    cell count differs from the header's, or a file that is not UTF-8 CSV, is an error naming both."""
    check_input_file(path, what)
    try:
        with _text_of(path) as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader if row]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{what} {path}: not a readable CSV file ({exc})") from None
    if not header:
        raise ValueError(f"{what} {path}: empty file; give a CSV table with a header")
    for line, row in rows:
        if len(row) != len(header):
            raise ValueError(f"{what} {path}: line {line} has {len(row)} cells, the header has {len(header)}; "
                             "quote a cell that holds a comma")
    return header, rows


def _table_value(path: Path, line: int, column: str, cell: str) -> None:
    if column == "variant":
        if not VARIANT_NAME.fullmatch(cell):
            raise ValueError(f"--csv {path}: line {line}: variant {cell!r} is not a plain name (letters, digits, "
                             "'_.+-'; it names the variant's files)")
        return
    low, high = TABLE_RANGES.get(column, (None, None))
    if low is None or (cell.strip() == "" and column not in ("R1", "mAP")):
        return
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"--csv {path}: line {line}: {column} {cell!r} is not a number from {low:g} to {high:g}")


def check_ablation_table(path: Path) -> None:
    """``--csv``: the table and the per-query files beside it, checked before any is parsed for
    the figures: regular files within the size limit, well-formed CSV, plain variant names, metrics
    in range; a per-query file must lie in the table's folder (a link out of it is refused)."""
    from analysis.ablation import PER_QUERY_DIR, per_query_in  # (imports pandas: only for --csv)

    path = Path(path)
    header, rows = read_csv_rows(path, "--csv")
    for line, row in rows:
        for column, cell in zip(header, row):
            _table_value(path, line, column, cell)
    study = path.parent.resolve()
    for files in per_query_in(path.parent / PER_QUERY_DIR).values():
        for file in files:
            if not Path(os.path.realpath(file)).is_relative_to(study):
                raise ValueError(f"per-query file {file}: a link to {os.path.realpath(file)}, outside the table's "
                                 f"folder {study}; copy the file in instead")
            read_csv_rows(file, "per-query file")


def validate_args(args) -> None:
    """Every option checked before any model, data or figure is made: counts, names, files."""
    if args.command != "ablation" or not args.list:
        _writable(Path(args.out))
    if getattr(args, "cache_dir", None):
        _writable(Path(args.cache_dir), "--cache-dir")
    for attr, flag in INDEX_OPTIONS:  # syntax and non-empty ranges; the model's size is checked later
        spec = getattr(args, attr, None)
        if spec is not None:
            parse_indices(spec, 1 << 30, flag)
    for attr, flag, low in (("index", "--index", 0), ("caption_index", "--caption-index", 0), ("ids", "--ids", 1),
                            ("seed", "--seed", 0), ("epochs", "--epochs", 0), ("resamples", "--resamples", 1),
                            ("ci_seed", "--ci-seed", 0)):
        value = getattr(args, attr, None)
        if value is not None and value < low:
            raise ValueError(f"{flag} must be at least {low}, got {value}")
    for attr, flag, kind in (("checkpoint", "--checkpoint", "dir"), ("run_dir", "--run", "dir"),
                             ("image", "--image", "file"), ("ablation_csv", "--csv", "file"),
                             ("data_root", "--data-root", "any")):
        value = getattr(args, attr, None)
        if not isinstance(value, str):
            continue
        path = Path(value).expanduser()
        ok = path.is_dir() if kind == "dir" else path.is_file() if kind == "file" else path.exists()
        if not ok:
            what = {"dir": "folder", "file": "file", "any": "path"}[kind]
            raise ValueError(f"{flag} {value}: no such {what}")
    if getattr(args, "ablation_csv", None):
        check_ablation_table(Path(args.ablation_csv).expanduser())
    if getattr(args, "image", None):
        check_image_file(Path(args.image).expanduser())
    dataset = getattr(args, "dataset", None)
    if dataset not in (None, "toypedes"):  # (the data package imports torch: only for another name)
        from upperson.data.readers import DATASETS

        if dataset.strip().lower().replace("_", "-") not in DATASETS:
            raise ValueError(f"--dataset {dataset!r}: unknown; known: {', '.join(DATASETS)}")
    if args.command == "curves":
        from analysis.curves import metrics_file  # (pandas and matplotlib: only for curves)

        for p in [*args.runs, *args.run_dirs]:
            if not metrics_file(Path(p)).is_file():
                raise ValueError(f"{p}: no training log ({metrics_file(Path(p))} not found); name a run folder "
                                 "or its metrics.jsonl")
            check_input_file(metrics_file(Path(p)), "training log")
    if args.command == "ablation":
        from analysis import ablation  # (pandas: only for ablation)

        ablation.get_variants(split_names(args.variants))  # unknown names: refused before any data or training
        if not args.run:
            given = [flag for flag, value, default in (
                ("--config", args.config, "toypedes"), ("--set", args.overrides, []), ("--epochs", args.epochs, None),
                ("--force", args.force, False), ("--data-root", args.data_root, None),
                ("--dataset", args.dataset, None), ("--seeds", args.seeds, None)) if value != default]
            if given:
                raise ValueError(f"{', '.join(given)} only apply with --run (training the variants); "
                                 "add --run, or leave them out to plot existing results")
        elif args.ablation_csv:
            raise ValueError("--csv plots an existing table, --run trains the variants: give one of them")
        else:
            _writable(Path(args.runs_dir) if args.runs_dir else default_runs_dir(), "--runs-dir")
