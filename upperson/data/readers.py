"""Readers for the person-retrieval datasets on disk (docs/method.md) and for a generic format.

Every reader returns a :class:`PedesDataset` and raises :class:`DatasetError` naming the file
and the entry for anything it cannot use. Nothing is dropped silently; what the readers keep,
skip and count (docs/data-rules.md):

- a blank caption inside a caption list is kept, as empty text (the paper's reference code
  keeps it: CUHK-PEDES test has one), counted and warned about;
- an image with an empty caption list is kept in val/test as a gallery image without queries
  (a distractor, as the reference code does) and skipped in train (there is nothing to train
  on), counted and warned about either way;
- with ``skip_bad_images=True`` missing or unreadable images are skipped, counted and warned
  about; without it they are an error;
- every other problem (an entry without an id, a path or a captions field, an unknown split,
  a missing image folder) is always an error.

Annotation files may start with a UTF-8 byte-order mark.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from PIL import Image

from upperson.data.records import SPLITS, DatasetError, ImageRecord, PedesDataset, ReadNote

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: how many bad image paths a message or a warning lists before "and N more"
SHOW_BAD = 5
#: the separator of several captions in one CSV cell of the generic format
CSV_CAPTION_SEP = " || "
#: the range of a person id: a 64-bit signed integer (ids become int64 tensors)
PID_MIN, PID_MAX = -(2**63), 2**63 - 1
#: the largest annotation file read (CUHK-PEDES's is about 40 MB); a larger one is refused unread
MAX_ANNOTATION_BYTES = 1024**3
#: how to skip bad images, named in the error that lists them
SKIP_HINT = ("to skip them, pass --skip-bad-images (evaluate, analysis) or --set data.skip_bad_images=true "
             "(train, pretrain, evaluate --config); skip_bad_images=True in Python")


@dataclass
class _Entry:
    """One parsed annotation entry, before its image is checked."""

    index: int  # position in the annotation file (0-based entry, or 1-based line for jsonl/csv)
    pid: int
    rel_path: str
    path: Path
    captions: list[str]
    split: str
    label: str  # how messages name this entry
    blank: int = 0  # captions that were blank (kept as "")


# ----------------------------------------------------------------------------- parsing


class JsonObject(dict):
    """A JSON object in which some key was given more than once (``duplicates``, in file order);
    its values are the last ones. The entry parser refuses it, naming the entry and the key."""

    duplicates: tuple[str, ...] = ()


def json_object(pairs: list[tuple[str, Any]]) -> dict:
    """``json``'s ``object_pairs_hook``: a dict, or a :class:`JsonObject` marking repeated keys
    (plain ``json`` silently keeps the last value of a repeated key)."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    marked = JsonObject(obj)
    marked.duplicates = tuple(k for k, _ in pairs if k in seen or seen.add(k))
    return marked


def _loads(text: str, where: str) -> Any:
    """``json.loads`` with repeated keys marked; a nesting or number bomb is a :class:`DatasetError`."""
    try:
        return json.loads(text, object_pairs_hook=json_object)
    except RecursionError:
        raise DatasetError(f"{where}: JSON nested too deeply to read") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise DatasetError(f"{where}: unreadable JSON value ({exc})") from None


def _read_text(path: Path) -> str:
    """An annotation file's text (a byte-order mark allowed), refused unread when it is not a
    regular file or is larger than :data:`MAX_ANNOTATION_BYTES`."""
    try:
        info = os.stat(path)
    except OSError:
        raise DatasetError(f"{path}: annotation file not found") from None
    if not stat.S_ISREG(info.st_mode):
        raise DatasetError(f"{path}: not a regular file; the annotation file must be a plain file")
    if info.st_size > MAX_ANNOTATION_BYTES:
        raise DatasetError(f"{path}: {info.st_size / 1e9:.1f} GB, larger than an annotation file may be "
                           f"({MAX_ANNOTATION_BYTES / 1e9:.1f} GB)")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return _loads(text, str(path))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: malformed JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def _as_pid(value: Any, where: str) -> int:
    pid: Optional[int] = None
    if isinstance(value, bool):
        pid = None
    elif isinstance(value, int):
        pid = value
    elif isinstance(value, float) and value.is_integer():
        pid = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        pid = int(value.strip())
    if pid is None:
        raise DatasetError(f"{where}: id must be an integer, got {value!r}")
    if not PID_MIN <= pid <= PID_MAX:
        shown = str(value) if len(str(value)) <= 40 else f"{str(value)[:40]}... ({len(str(value))} characters)"
        raise DatasetError(f"{where}: id {shown} is out of range; an id must be an integer from "
                           f"{PID_MIN} to {PID_MAX} (64 bits)")
    return pid


def _as_captions(value: Any, where: str) -> list[str]:
    """The captions, whitespace-normalised; a blank one is kept as "" (the reference code keeps
    it), an empty list gives no captions (the caller decides what an image without any means)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise DatasetError(f"{where}: captions must be a list of strings, got {type(value).__name__}")
    captions = []
    for j, cap in enumerate(value):
        if not isinstance(cap, str):
            raise DatasetError(f"{where}: caption {j} is not a string ({cap!r})")
        captions.append(" ".join(cap.split()))
    return captions


def _as_split(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.strip().lower() not in allowed:
        raise DatasetError(f"{where}: split must be one of {list(allowed)}, got {value!r}")
    return value.strip().lower()


def _parse_entry(
    entry: Any,
    index: int,
    ann_file: Path,
    image_root: Path,
    *,
    id_keys: tuple[str, ...],
    path_keys: tuple[str, ...],
    caption_keys: tuple[str, ...],
    splits: tuple[str, ...],
    what: str = "entry",
) -> _Entry:
    where = f"{ann_file}: {what} {index}"
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected an object, got {type(entry).__name__}")
    if isinstance(entry, JsonObject):
        raise DatasetError(f"{where}: key {entry.duplicates[0]!r} is given twice; each key may appear once "
                           "(JSON would silently keep the last value)")

    def first(keys: tuple[str, ...], blank_ok: bool = False) -> Optional[str]:
        empty = (None,) if blank_ok else (None, "")
        return next((k for k in keys if k in entry and entry[k] not in empty), None)

    pkey = first(path_keys)
    if pkey is None or not isinstance(entry[pkey], str):
        raise DatasetError(f"{where}: missing image path ({' or '.join(repr(k) for k in path_keys)})")
    rel = entry[pkey].strip()
    where = f"{where} ({pkey} {rel!r})"
    ikey = first(id_keys)
    if ikey is None:
        raise DatasetError(f"{where}: missing identity ({' or '.join(repr(k) for k in id_keys)})")
    pid = _as_pid(entry[ikey], where)
    where = f"{ann_file}: {what} {index} (id {pid}, {pkey} {rel!r})"
    ckey = first(caption_keys, blank_ok=True)
    if ckey is None:
        raise DatasetError(f"{where}: missing captions ({' or '.join(repr(k) for k in caption_keys)})")
    captions = _as_captions(entry[ckey], where)
    if "split" not in entry:
        raise DatasetError(f"{where}: missing 'split'")
    split = _as_split(entry["split"], where, splits)
    path = Path(rel)
    if not path.is_absolute():
        path = image_root / path
    return _Entry(index, pid, rel, path.resolve(), captions, split, where, blank=captions.count(""))


# ----------------------------------------------------------------------------- images


def _image_problem(path: Path, verify: bool) -> Optional[str]:
    """Why the image at ``path`` cannot be used, or None if it can."""
    if not path.is_file():
        return "image not found"
    if not verify:
        return None
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        return f"unreadable image ({type(exc).__name__}: {exc})"
    if fmt == "JPEG" and not _jpeg_has_end(path):
        # PIL's verify() does not read JPEG data: a cut-off file passes it, then fails to decode
        return "unreadable image (truncated JPEG: no end-of-image marker)"
    return None


def _jpeg_has_end(path: Path, tail: int = 4096) -> bool:
    """Whether a JPEG file holds its end-of-image marker (FF D9) near its end; entropy-coded
    data never holds FF D9 (FF is stuffed), so a file cut off in its data lacks it."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - tail))
            return b"\xff\xd9" in fh.read()
    except OSError:
        return False


def _check_images(entries: list[_Entry], verify: bool) -> list[Optional[str]]:
    if len(entries) < 256:
        return [_image_problem(e.path, verify) for e in entries]
    with ThreadPoolExecutor(max_workers=8) as pool:  # I/O bound: threads overlap the reads
        return list(pool.map(lambda e: _image_problem(e.path, verify), entries, chunksize=64))


def _missing_folder(bad: list[tuple[_Entry, str]]) -> Optional[Path]:
    """The highest missing folder that holds every one of these (missing) images, if any."""
    try:
        common = Path(os.path.commonpath([str(e.path.parent) for e, _ in bad]))
    except ValueError:  # different drives
        return None
    if common.exists():
        return None
    while not common.parent.exists() and common.parent != common:
        common = common.parent
    return common


def _in_split_order(per_split: dict) -> dict:
    """``per_split`` with train, val, test first, then any other split name."""
    order = {s: i for i, s in enumerate(SPLITS)}
    return dict(sorted(per_split.items(), key=lambda kv: order.get(kv[0], len(order))))


def _by_split(entries: list[_Entry], count: Callable[[_Entry], int] = lambda e: 1) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entries:
        n = count(e)
        if n:
            out[e.split] = out.get(e.split, 0) + n
    return _in_split_order(out)


def _listing(items: list[str]) -> str:
    more = f"\n  (and {len(items) - SHOW_BAD} more)" if len(items) > SHOW_BAD else ""
    return "\n  " + "\n  ".join(items[:SHOW_BAD]) + more


def _build(
    name: str,
    root: Path,
    ann_file: Path,
    entries: list[_Entry],
    *,
    skip_bad_images: bool,
    check_images: bool,
    notes: Optional[list[ReadNote]] = None,
) -> PedesDataset:
    """The dataset of ``entries``, its images checked; ``notes``: the format reader's own, first."""
    if not entries:
        raise DatasetError(f"{ann_file}: no entries")
    problems = _check_images(entries, verify=check_images)
    bad = [(e, p) for e, p in zip(entries, problems) if p is not None]
    notes = list(notes or [])
    folder = (_missing_folder(bad) if bad and len(bad) == len(entries)
              and all(p == "image not found" for _, p in bad) else None)
    if folder is not None:
        raise DatasetError(
            f"{ann_file}: the image folder {folder} does not exist (all {len(entries)} images it names are "
            f"in it, e.g. {entries[0].path}); put the images there, or point the data root at the folder "
            "that holds the dataset's annotation file and its images"
        )
    if bad:
        lines = [f"{e.label}: {p}: {e.path}" for e, p in bad]
        if not skip_bad_images:
            raise DatasetError(f"{len(bad)} bad image(s); {SKIP_HINT}:" + _listing(lines))
        log.warning("%s: skipped %d of %d images that are missing or unreadable:%s",
                    ann_file, len(bad), len(entries), _listing(lines))
        notes.append(ReadNote("skipped", "bad images", "missing or unreadable (skip_bad_images)",
                              _by_split([e for e, _ in bad])))
    bad_ids = {id(e) for e, _ in bad}
    good = [e for e in entries if id(e) not in bad_ids]

    blank = [e for e in good if e.blank]
    if blank:
        log.warning("%s: kept %d blank caption(s) as empty text, as the reference code does:%s",
                    ann_file, sum(e.blank for e in blank), _listing([e.label for e in blank]))
        notes.append(ReadNote("kept", "blank captions", "as empty text, as the reference code does",
                              _by_split(blank, lambda e: e.blank)))
    silent = [e for e in good if not e.captions]
    silent_train = [e for e in silent if e.split == "train"]
    silent_eval = [e for e in silent if e.split != "train"]
    if silent_eval:
        log.warning("%s: kept %d image(s) without captions as gallery distractors (no queries), "
                    "as the reference code does:%s", ann_file, len(silent_eval),
                    _listing([e.label for e in silent_eval]))
        notes.append(ReadNote("kept", "images without captions", "gallery distractors, no queries",
                              _by_split(silent_eval)))
    if silent_train:
        log.warning("%s: skipped %d train image(s) without captions (nothing to train on):%s",
                    ann_file, len(silent_train), _listing([e.label for e in silent_train]))
        notes.append(ReadNote("skipped", "train images without captions", "nothing to train on",
                              _by_split(silent_train)))
    skip = {id(e) for e in silent_train}

    splits: dict[str, list[ImageRecord]] = {}
    for e in good:
        if id(e) in skip:
            continue
        records = splits.setdefault(e.split, [])
        records.append(ImageRecord(path=e.path, pid=e.pid, captions=e.captions, image_id=len(records)))
    if not splits:
        raise DatasetError(f"{ann_file}: every image was skipped (bad, or a train image without captions); "
                           "nothing left to load")
    dataset = PedesDataset(name=name, root=root, splits=_in_split_order(splits), notes=notes)
    log.info("loaded %s\n%s", name, dataset.summary())
    return dataset


# ----------------------------------------------------------------------------- the formats


#: dataset name -> (its folder under a data root, its annotation file)
LAYOUTS: dict[str, tuple[str, str]] = {
    "cuhk-pedes": ("CUHK-PEDES", "reid_raw.json"),
    "icfg-pedes": ("ICFG-PEDES", "ICFG-PEDES.json"),
    "rstpreid": ("RSTPReid", "data_captions.json"),
    "toypedes": ("ToyPEDES", "reid_raw.json"),
    "toypedes-weak": ("ToyPEDES-weak", "reid_raw.json"),
}


def _found_here(root: Path) -> str:
    """Which datasets a data root holds, as a hint for a wrong --dataset or --data-root."""
    have = [f"{folder}/ (--dataset {name})" for name, (folder, ann) in LAYOUTS.items()
            if (root / folder / ann).is_file()]
    return f"; {root} holds {', '.join(have)}" if have else ""


def _looks_generic(path: Path) -> bool:
    """Whether ``path`` looks like a generic annotation file (for an error's advice only): a .jsonl,
    .json or .csv whose first 64 KB name an image field and an identity field."""
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16).decode("utf-8", errors="replace")
    except OSError:
        return False
    return any(k in head for k in _GENERIC_PATH_KEYS) and any(k in head for k in _GENERIC_ID_KEYS)


def _dataset_dir(root: Path, folder: str, ann_name: str) -> Path:
    """``root/folder`` -- or ``root`` itself when it already is that folder, or the folder of
    ``root`` when it is the annotation file itself."""
    if not root.exists():
        raise DatasetError(f"{root}: data root not found")
    if root.is_file():
        if root.name == ann_name:
            return root.parent
        if _looks_generic(root):
            raise DatasetError(f"{root}: looks like an annotation file of the generic format; choose that dataset "
                               "(--set data.dataset=generic for train, --dataset generic for evaluate), or give "
                               f"the folder that holds {folder}/")
        raise DatasetError(f"{root}: the data root is a file; give the folder that holds {folder}/ "
                           f"(or {folder}/ itself)")
    if (root / folder / ann_name).is_file():
        return root / folder
    if (root / ann_name).is_file():
        return root
    raise DatasetError(f"{root / folder / ann_name}: annotation file not found{_found_here(root)}")


def _read_pedes_json(
    name: str,
    root: PathLike,
    folder: str,
    ann_name: str,
    path_key: str,
    splits: tuple[str, ...],
    skip_bad_images: bool,
    check_images: bool,
) -> PedesDataset:
    root = Path(root).expanduser().resolve()
    ddir = _dataset_dir(root, folder, ann_name)
    ann_file = ddir / ann_name
    data = _read_json(ann_file)
    if not isinstance(data, list):
        raise DatasetError(f"{ann_file}: expected a JSON list of entries, got {type(data).__name__}")
    image_root = ddir / "imgs"
    entries = [
        _parse_entry(
            item, i, ann_file, image_root,
            id_keys=("id",), path_keys=(path_key,), caption_keys=("captions",), splits=splits,
        )
        for i, item in enumerate(data)
    ]
    return _build(name, ddir, ann_file, entries, skip_bad_images=skip_bad_images, check_images=check_images)


def read_cuhk_pedes(root: PathLike, *, skip_bad_images: bool = False, check_images: bool = True) -> PedesDataset:
    """CUHK-PEDES: ``root/CUHK-PEDES/reid_raw.json`` (``{id, file_path, captions, split}``), images in ``imgs/``."""
    return _read_pedes_json("CUHK-PEDES", root, "CUHK-PEDES", "reid_raw.json", "file_path",
                            SPLITS, skip_bad_images, check_images)


def read_icfg_pedes(root: PathLike, *, skip_bad_images: bool = False, check_images: bool = True) -> PedesDataset:
    """ICFG-PEDES: ``root/ICFG-PEDES/ICFG-PEDES.json`` (``{id, file_path, captions, split}``, train/test)."""
    return _read_pedes_json("ICFG-PEDES", root, "ICFG-PEDES", "ICFG-PEDES.json", "file_path",
                            SPLITS, skip_bad_images, check_images)


def read_rstpreid(root: PathLike, *, skip_bad_images: bool = False, check_images: bool = True) -> PedesDataset:
    """RSTPReid: ``root/RSTPReid/data_captions.json`` (``{id, img_path, captions, split}``)."""
    return _read_pedes_json("RSTPReid", root, "RSTPReid", "data_captions.json", "img_path",
                            SPLITS, skip_bad_images, check_images)


def read_toypedes(root: PathLike, *, skip_bad_images: bool = False, check_images: bool = True) -> PedesDataset:
    """ToyPEDES (generated by ``python -m upperson toypedes``): CUHK-PEDES format in ``root/ToyPEDES/``."""
    return _read_pedes_json("ToyPEDES", root, "ToyPEDES", "reid_raw.json", "file_path",
                            SPLITS, skip_bad_images, check_images)


def read_toypedes_weak(root: PathLike, *, skip_bad_images: bool = False, check_images: bool = True) -> PedesDataset:
    """ToyPEDES's weak pretraining corpus (``--captions weak``): ``root/ToyPEDES-weak/``, train only."""
    return _read_pedes_json("ToyPEDES-weak", root, "ToyPEDES-weak", "reid_raw.json", "file_path",
                            SPLITS, skip_bad_images, check_images)


_GENERIC_PATH_KEYS = ("image", "file_path", "img_path")
_GENERIC_ID_KEYS = ("pid", "id")
_GENERIC_CAPTION_KEYS = ("captions", "caption")


def _generic_rows(path: Path) -> tuple[list[tuple[int, Any]], list[str]]:
    """(line number, row object) for each row of a .jsonl, .json or .csv file, and the CSV
    header's columns that the reader does not use (metadata; none for JSON)."""
    suffix = path.suffix.lower()
    text = _read_text(path)
    if suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, _loads(line, f"{path}: line {lineno}")))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: line {lineno}: malformed JSON ({exc.msg}, column {exc.colno})") from None
        return rows, []
    if suffix == ".json":
        data = _read_json(path)
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
        return list(enumerate(data)), []
    if suffix == ".csv":
        return _csv_rows(path, text)
    raise DatasetError(f"{path}: the generic format is a .jsonl, .json or .csv file, not {suffix or 'no suffix'!r}")


#: every column the generic CSV reader uses; any other is metadata, counted in the summary
_GENERIC_COLUMNS = (*_GENERIC_PATH_KEYS, *_GENERIC_ID_KEYS, *_GENERIC_CAPTION_KEYS, "split")


def _csv_rows(path: Path, text: str) -> tuple[list[tuple[int, Any]], list[str]]:
    """(line number, row) of a generic CSV file, and its unused columns; a repeated column or a
    row with more cells than the header is an error naming it (csv would keep the last value, or
    drop the extra cells)."""
    reader = csv.DictReader(text.splitlines())
    try:
        header = list(reader.fieldnames or [])
        return _csv_body(path, reader, header)
    except csv.Error as exc:  # a NUL byte, a cell over csv's field limit, ...
        raise DatasetError(f"{path}: line {reader.line_num + 1}: unreadable CSV ({exc})") from None


def _csv_body(path: Path, reader: csv.DictReader, header: list[str]) -> tuple[list[tuple[int, Any]], list[str]]:
    """The rows of :func:`_csv_rows` after its header."""
    fields = set(header)
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DatasetError(f"{path}: CSV header names column(s) {repeated} more than once; each column may appear once")
    for keys in (_GENERIC_PATH_KEYS, _GENERIC_ID_KEYS, _GENERIC_CAPTION_KEYS, ("split",)):
        if not fields & set(keys):
            raise DatasetError(f"{path}: CSV header lacks a column {' or '.join(repr(k) for k in keys)} "
                               f"(header: {sorted(fields)})")
    rows = []
    for row in reader:
        if row.get(None):
            raise DatasetError(f"{path}: line {reader.line_num}: {len(header) + len(row[None])} cells, the header "
                               f"has {len(header)}; quote a cell that holds a comma")
        row = {k: v for k, v in row.items() if k is not None}
        # "a || || b": a blank caption between two; empty cells: no captions
        cells = {k: row[k] for k in _GENERIC_CAPTION_KEYS if isinstance(row.get(k), str)}
        filled = {k: v for k, v in cells.items() if v.strip()}
        for key in cells:
            row.pop(key)
        for key, cell in (filled or dict(list(cells.items())[:1])).items():
            row[key] = cell.split(CSV_CAPTION_SEP.strip()) if cell.strip() else []
        rows.append((reader.line_num, row))
    return rows, [c for c in header if c not in _GENERIC_COLUMNS]


def read_generic(root: PathLike, *, skip_bad_images: bool = False, check_images: bool = True) -> PedesDataset:
    """A generic annotation file: ``root`` is a ``.jsonl`` (one object per line), a ``.json``
    list or a ``.csv`` with a header. Fields: ``image`` (path relative to the file's folder;
    ``file_path``/``img_path`` also accepted), ``pid`` (or ``id``), ``captions`` (a list; in
    CSV one cell with captions separated by ``" || "``) or ``caption`` (one string), and
    ``split`` (train/val/test). Rows naming the same image are merged: their captions are
    concatenated in file order; they must agree on pid and split."""
    path = Path(root).expanduser().resolve()
    if path.is_dir():
        raise DatasetError(f"{path}: the generic dataset's root is its annotation file (.jsonl/.json/.csv), not a folder")
    what = "entry" if path.suffix.lower() == ".json" else "line"
    merged: dict[Path, _Entry] = {}
    rows, extra = _generic_rows(path)
    for index, row in rows:
        entry = _parse_entry(
            row, index, path, path.parent,
            id_keys=_GENERIC_ID_KEYS, path_keys=_GENERIC_PATH_KEYS,
            caption_keys=_GENERIC_CAPTION_KEYS, splits=SPLITS, what=what,
        )
        prev = merged.get(entry.path)
        if prev is None:
            merged[entry.path] = entry
            continue
        if (prev.pid, prev.split) != (entry.pid, entry.split):
            raise DatasetError(
                f"{entry.label}: the same image is in {prev.label.split(': ', 1)[1]} with "
                f"id {prev.pid} / split {prev.split!r}, here id {entry.pid} / split {entry.split!r}"
            )
        prev.captions = prev.captions + entry.captions
    notes = []
    if extra:
        notes.append(ReadNote("ignored", "extra CSV columns", f"{', '.join(map(repr, extra))} (metadata, not read)",
                              count=len(extra)))
    return _build(path.stem, path, path, list(merged.values()),
                  skip_bad_images=skip_bad_images, check_images=check_images, notes=notes)


Reader = Callable[..., PedesDataset]

#: dataset name -> reader(root, *, skip_bad_images, check_images)
DATASETS: dict[str, Reader] = {
    "cuhk-pedes": read_cuhk_pedes,
    "icfg-pedes": read_icfg_pedes,
    "rstpreid": read_rstpreid,
    "toypedes": read_toypedes,
    "toypedes-weak": read_toypedes_weak,
    "generic": read_generic,
}


def load_dataset(
    name: str,
    root: PathLike,
    *,
    skip_bad_images: bool = False,
    check_images: bool = True,
) -> PedesDataset:
    """Read dataset ``name`` (a key of :data:`DATASETS`) from ``root``.

    For the public datasets and ToyPEDES ``root`` is the data root that holds
    ``CUHK-PEDES/``, ``ICFG-PEDES/``, ``RSTPReid/``, ``ToyPEDES/`` (the dataset's own folder
    is accepted too); for ``generic`` it is the annotation file. ``check_images=True`` opens
    every image and runs PIL's ``verify()`` (reads headers and, for PNG, chunk checksums,
    without decoding pixels); ``False`` only checks that each file exists.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if root is None or str(root) == "":
        raise DatasetError(f"dataset {name!r}: no data root given")
    return DATASETS[key](root, skip_bad_images=skip_bad_images, check_images=check_images)
