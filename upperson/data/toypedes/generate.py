"""Generating ToyPEDES on disk, in CUHK-PEDES format, deterministically and atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import random
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from upperson.data.toypedes.attributes import Identity, identity_stream
from upperson.data.toypedes.captions import fine_caption, weak_caption
from upperson.data.toypedes.domain_captions import CAPTION_STYLES, noisy_caption
from upperson.data.toypedes.domains import DOMAINS, WEAK_PID_GAP, WORLD, WORLD_PID_OFFSET, domain_stream, world_stream
from upperson.data.toypedes.render import HEIGHT, WIDTH, render

log = logging.getLogger(__name__)

#: bump when the same seed would produce different files
GENERATOR_VERSION = 1
CAPTIONS_PER_IMAGE = 2
CAPTION_MODES = ("fine", "weak")
FOLDERS = {"fine": "ToyPEDES", "weak": "ToyPEDES-weak"}
#: every file of a generated folder with its size and SHA-256, checked before the folder is reused
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ToyPedesPreset:
    """Sizes of one ToyPEDES preset: identities per split and images per identity."""

    train: int
    val: int
    test: int
    images: tuple[int, int]  # images per identity, min and max
    weak_ids: int  # identities of the weak pretraining corpus
    weak_images: tuple[int, int]
    #: more test identities, drawn after the weak corpus (disjoint from it and from train/val)
    extra_test: int = 0
    #: only the test split is generated (a larger test set for a model trained on another preset)
    test_only: bool = False

    @property
    def benchmark_ids(self) -> int:
        return self.train + self.val + self.test


TOYPEDES_PRESETS: dict[str, ToyPedesPreset] = {
    # used by the tests of the whole repository: about a second to generate
    "tiny": ToyPedesPreset(train=24, val=8, test=8, images=(3, 3), weak_ids=48, weak_images=(2, 2)),
    "small": ToyPedesPreset(train=240, val=30, test=30, images=(3, 5), weak_ids=600, weak_images=(2, 3)),
    "default": ToyPedesPreset(train=2000, val=200, test=300, images=(3, 5), weak_ids=3000, weak_images=(2, 3)),
    # test only: default's 300 test identities (same files) and 700 more drawn after default's weak
    # corpus, so none was seen in training or pretraining: about 8,000 queries (docs/statistics.md)
    "test-large": ToyPedesPreset(train=2000, val=200, test=300, images=(3, 5), weak_ids=3000, weak_images=(2, 3),
                                 extra_test=700, test_only=True),
    # the generalization study (docs/generalization.md), with --domain: a small fine-tuning set
    # (~3,600 captions in every domain: >= 2,000 backbone weights per caption), val of ~1,200 and test of
    # ~6,000 queries, and with --domain world --captions weak the pretraining corpus (96,000 pairs)
    "regime": ToyPedesPreset(train=600, val=200, test=1000, images=(3, 3), weak_ids=16000, weak_images=(3, 3)),
}
#: the presets whose folders the domains leave byte for byte as they were (tests/test_toypedes_domains.py)
ORIGINAL_PRESETS = ("tiny", "small", "default", "test-large")


def _views(n: int, rng: random.Random) -> list[str]:
    """Cameras of one identity: a front, a back and a side view first, then random ones."""
    base = ["front", "back", "side"]
    return base[:n] + [rng.choices(base, weights=(0.4, 0.3, 0.3))[0] for _ in range(n - len(base))]


# a task: (identity, pid, split, number of images, seed, caption mode, output folder, domain or "")
_Task = tuple[Identity, int, str, int, int, str, str, str]


def _caption_fn(mode: str, domain: str):
    """The caption function (identity, view, rng) of a mode and domain ("" = the original)."""
    if not domain:
        return fine_caption if mode == "fine" else weak_caption
    if mode == "fine":
        return CAPTION_STYLES[DOMAINS[domain].caption_style]
    return lambda ident, view, rng: noisy_caption(ident, view, rng, domain)


def _render_identity(task: _Task) -> list[tuple[dict, dict]]:
    """Draw, caption and save every image of one identity; (annotation, image info) each."""
    ident, pid, split, n_images, seed, mode, out, domain = task
    if domain:
        spec = DOMAINS[domain]
        vrng = random.Random(f"toypedes/{seed}/{domain}/{pid}/views")
        views = [vrng.choices(("front", "back", "side"), weights=spec.views)[0] for _ in range(n_images)]
        n_captions = spec.captions_per_image if mode == "fine" else CAPTIONS_PER_IMAGE
        style = spec.style
    else:
        views = _views(n_images, random.Random(f"toypedes/{seed}/{pid}/views"))
        n_captions, style = CAPTIONS_PER_IMAGE, None
    caption = _caption_fn(mode, domain)
    ns = f"toypedes/{seed}/{domain}/{pid}" if domain else f"toypedes/{seed}/{pid}"
    results = []
    for k, view in enumerate(views):
        img, shown = render(
            ident, view,
            random.Random(f"{ns}/{k}/image"),
            np.random.default_rng([seed, pid, k]),
            style,
        )
        rel = f"{split}/{pid:05d}_{k}.png"
        path = Path(out) / "imgs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="PNG", optimize=False, compress_level=6)
        captions = [caption(ident, view, random.Random(f"{ns}/{k}/caption/{j}")) for j in range(n_captions)]
        results.append((
            {"id": pid, "file_path": rel, "captions": captions, "split": split},
            {"file_path": rel, "id": pid, **shown.to_dict(), **({"domain": domain} if domain else {})},
        ))
    return results


def _domain_plan(preset: ToyPedesPreset, seed: int, mode: str,
                 domain: str) -> list[tuple[Identity, int, str, int, str]]:
    """(identity, pid, split, images, domain) for a domain's benchmark, its weak corpus or the world's."""
    plan = []
    if domain == WORLD:
        lo, hi = preset.weak_images
        stream = world_stream(seed)
        for i in range(preset.weak_ids):
            name, ident = next(stream)
            pid = WORLD_PID_OFFSET + i + 1
            n = random.Random(f"toypedes/{seed}/{WORLD}/{pid}/count").randint(lo, hi)
            plan.append((ident, pid, "train", n, name))
        return plan
    spec = DOMAINS[domain]
    if mode == "fine":
        stream = domain_stream(seed, domain)
        splits = ["train"] * preset.train + ["val"] * preset.val + ["test"] * preset.test
        lo, hi = spec.images
        first = spec.pid_offset + 1
    else:
        stream = domain_stream(seed, domain, pretraining=True)
        splits = ["train"] * preset.weak_ids
        lo, hi = preset.weak_images
        first = spec.pid_offset + WEAK_PID_GAP + 1
    for i, split in enumerate(splits):
        pid = first + i
        n = random.Random(f"toypedes/{seed}/{domain}/{pid}/count").randint(lo, hi)
        plan.append((next(stream), pid, split, n, domain))
    return plan


def _plan(preset: ToyPedesPreset, seed: int, mode: str) -> list[tuple[Identity, int, str, int]]:
    """(identity, pid, split, images) for every identity to draw; pids start at 1."""
    stream = identity_stream(seed)
    bench = [next(stream) for _ in range(preset.benchmark_ids)]
    plan = []
    if mode == "fine":
        splits = ["train"] * preset.train + ["val"] * preset.val + ["test"] * preset.test
        lo, hi = preset.images
        for i, (ident, split) in enumerate(zip(bench, splits)):
            pid = i + 1
            n = random.Random(f"toypedes/{seed}/{pid}/count").randint(lo, hi)
            plan.append((ident, pid, split, n))
        if preset.extra_test:
            for _ in range(preset.weak_ids):  # the weak corpus's identities: skipped, never tested on
                next(stream)
            first = preset.benchmark_ids + preset.weak_ids + 1
            for pid in range(first, first + preset.extra_test):
                n = random.Random(f"toypedes/{seed}/{pid}/count").randint(lo, hi)
                plan.append((next(stream), pid, "test", n))
    else:
        lo, hi = preset.weak_images
        for i in range(preset.weak_ids):
            pid = preset.benchmark_ids + i + 1  # after the benchmark's pids: ids and identities disjoint
            n = random.Random(f"toypedes/{seed}/{pid}/count").randint(lo, hi)
            plan.append((next(stream), pid, "train", n))
    return plan


def _meta(preset_name: str, seed: int, mode: str, splits: Optional[Sequence[str]] = None,
          domain: Optional[str] = None) -> dict:
    extra = {"splits": sorted(splits)} if splits else {}
    if domain:  # only then: the original presets' meta.json stays as it was
        extra["domain"] = domain
    return {**extra, 
        "generator": "upperson toypedes",
        "version": GENERATOR_VERSION,
        "preset": preset_name,
        "seed": seed,
        "captions": mode,
        "image_size": [HEIGHT, WIDTH],
    }


def _holds(folder: Path, meta: dict) -> bool:
    """Whether ``folder`` is a complete ToyPEDES generated with ``meta``'s settings."""
    try:
        if not (folder / "reid_raw.json").is_file():
            return False
        found = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and {k: found.get(k) for k in meta} == meta


def _write_json(path: Path, obj: object, indent: Optional[int] = None) -> None:
    path.write_text(json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=True) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(folder: Path, names: Sequence[str]) -> None:
    """``manifest.json``: size and SHA-256 of each of ``names`` (relative to ``folder``)."""
    files = {n: {"bytes": (folder / n).stat().st_size, "sha256": _sha256(folder / n)} for n in sorted(names)}
    _write_json(folder / MANIFEST, {"version": 1, "files": files}, indent=1)


def damage(folder: Union[str, Path]) -> Optional[str]:
    """What is wrong with a generated ToyPEDES folder, checked against its manifest: a missing,
    changed or linked file (sizes first, then SHA-256 of every file); ``None`` if it is whole.
    A folder written before manifests existed gives the string ``"no manifest"``."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        assert isinstance(files, dict)
    except FileNotFoundError:
        return "no manifest"
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return f"{folder / MANIFEST} is unreadable"
    for name, want in files.items():
        path = folder / name
        try:
            info = os.lstat(path)
        except OSError:
            return f"{path} is missing"
        if not stat.S_ISREG(info.st_mode):
            return f"{path} is not a regular file (a link or a folder)"
        if info.st_size != want.get("bytes"):
            return f"{path} has {info.st_size} bytes, {want.get('bytes')} when written"
    for name, want in files.items():
        if _sha256(folder / name) != want.get("sha256"):
            return f"{folder / name} changed since it was written (SHA-256 differs)"
    return None


def generate_toypedes(
    out_dir: Union[str, Path],
    preset: str = "tiny",
    seed: int = 0,
    captions: str = "fine",
    workers: Optional[int] = None,
    *,
    overwrite: bool = False,
    splits: Optional[Sequence[str]] = None,
    repair: bool = False,
    domain: Optional[str] = None,
) -> Path:
    """Write ToyPEDES under ``out_dir`` and return its folder.

    ``captions="fine"`` writes the benchmark to ``out_dir/ToyPEDES/`` (train/val/test by
    identity); ``"weak"`` writes the pretraining corpus to ``out_dir/ToyPEDES-weak/`` (all
    train, identities disjoint from the benchmark of the same preset and seed). Each folder
    holds ``imgs/``, ``reid_raw.json`` (CUHK-PEDES format), ``attributes.json`` (every
    identity's attributes, every image's view) and ``meta.json``.

    Same arguments, same bytes: every image and caption is seeded by (seed, pid, image
    index), so ``workers`` does not change the output. The dataset is built in a temporary
    folder beside the target and renamed into place when complete, so an interrupted run
    leaves no half dataset. If the folder exists from the same preset, seed and generator
    version it is reused once every file matches its ``manifest.json`` (size and SHA-256); if it
    differs, ``overwrite=True`` is needed. A damaged folder (a file changed, truncated, missing
    or replaced by a link) is an error naming the file, or, with ``repair=True`` (a cache), is
    regenerated with a warning. A folder written before manifests is reused with a warning.

    ``splits`` (e.g. ``["test"]``) draws only those splits' identities: the same pids, images
    and captions as in the full benchmark, in a fraction of the time. A ``test_only`` preset
    (``test-large``) always draws its test split alone.

    ``domain`` (a key of :data:`~upperson.data.toypedes.domains.DOMAINS`) draws that domain's
    benchmark (``fine``) or weak corpus; ``"world"`` with ``captions="weak"`` draws the
    pretraining corpus of every domain at once (docs/generalization.md). The folder names stay
    ``ToyPEDES`` / ``ToyPEDES-weak``: give each domain its own ``out_dir``. ``None`` is the
    original ToyPEDES, byte for byte as before.
    """
    if splits is not None and (not splits or set(splits) - {"train", "val", "test"}):
        raise ValueError(f"splits must be a non-empty subset of train, val, test; got {splits!r}")
    if preset not in TOYPEDES_PRESETS:
        raise ValueError(f"unknown ToyPEDES preset {preset!r}; known: {', '.join(TOYPEDES_PRESETS)}")
    if captions not in CAPTION_MODES:
        raise ValueError(f"captions must be one of {CAPTION_MODES}, got {captions!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if domain is not None and domain not in DOMAINS and domain != WORLD:
        raise ValueError(f"unknown ToyPEDES domain {domain!r}; known: {', '.join(DOMAINS)}, "
                         f"{WORLD} (weak captions only)")
    if domain == WORLD and captions != "weak":
        raise ValueError(f"domain {WORLD!r} is the pretraining corpus of every domain: "
                         "it needs weak captions (--captions weak)")
    spec = TOYPEDES_PRESETS[preset]
    if domain is not None and spec.test_only:
        raise ValueError(f"ToyPEDES {preset!r} is the original domain's larger test split; a domain's own "
                         "test split is in its preset (e.g. regime)")
    if spec.test_only:
        if captions != "fine":
            raise ValueError(f"ToyPEDES {preset!r} is a test split only; it has no weak corpus "
                             "(generate the weak corpus with the preset the backbone was pretrained on)")
        if splits is not None and set(splits) != {"test"}:
            raise ValueError(f"ToyPEDES {preset!r} is a test split only; splits must be ['test'], got {splits!r}")
        splits = ["test"]
    out_dir = Path(out_dir).expanduser().resolve()
    final = out_dir / FOLDERS[captions]
    meta = _meta(preset, seed, captions, splits, domain)
    if final.exists() and _holds(final, meta) and not overwrite:
        problem = damage(final)
        if problem is None:
            log.info("%s already holds ToyPEDES %s (seed %d), verified; reusing it", final, preset, seed)
            return final
        if problem == "no manifest":
            log.warning("%s: written before ToyPEDES folders had checksums (no %s); reused unverified "
                        "(pass --overwrite to regenerate it)", final, MANIFEST)
            return final
        if not repair:
            raise ValueError(f"{final} is damaged: {problem}; pass --overwrite (overwrite=True) to regenerate it")
        log.warning("%s is damaged (%s): regenerating it", final, problem)
        overwrite = True
    if final.exists():
        if repair and not overwrite:
            log.warning("%s does not hold ToyPEDES %s (seed %d) as its meta.json says: regenerating it",
                        final, preset, seed)
            overwrite = True
        if not overwrite:
            raise ValueError(f"{final} exists and is not ToyPEDES {preset!r} with seed {seed}; "
                             "pass --overwrite (overwrite=True) to replace it")

    if domain is None:
        plan = [(*entry, "") for entry in _plan(spec, seed, captions)]
    else:
        plan = _domain_plan(spec, seed, captions, domain)
    if splits:
        plan = [entry for entry in plan if entry[2] in splits]
    n_images = sum(entry[3] for entry in plan)
    if workers is None:
        workers = 1 if n_images < 600 else max(1, min(os.cpu_count() or 1, 8))
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=out_dir))
    log.info("generating ToyPEDES %s%s (%s captions, seed %d): %d identities, %d images, %d worker(s)",
             preset, f" domain {domain}" if domain else "", captions, seed, len(plan), n_images, workers)
    try:
        tasks: list[_Task] = [(ident, pid, split, n, seed, captions, str(tmp), dom)
                              for ident, pid, split, n, dom in plan]
        bar = tqdm(total=len(tasks), unit="id", desc=f"ToyPEDES {preset}", disable=None, leave=False)
        results: list[list[tuple[dict, dict]]] = []
        if workers == 1:
            for task in tasks:
                results.append(_render_identity(task))
                bar.update()
        else:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with mp.get_context(method).Pool(workers) as pool:
                chunk = max(1, len(tasks) // (workers * 16))
                for res in pool.imap(_render_identity, tasks, chunksize=chunk):
                    results.append(res)
                    bar.update()
        bar.close()

        annotations = [ann for res in results for ann, _ in res]
        images = {info["file_path"]: {k: v for k, v in info.items() if k != "file_path"}
                  for res in results for _, info in res}
        identities = {str(pid): {"split": split, **ident.to_dict(), **({"domain": dom} if dom else {})}
                      for ident, pid, split, _, dom in plan}
        counts = {}
        for split in ("train", "val", "test"):
            anns = [a for a in annotations if a["split"] == split]
            if anns:
                counts[split] = {"ids": len({a["id"] for a in anns}), "images": len(anns),
                                 "captions": sum(len(a["captions"]) for a in anns)}
        _write_json(tmp / "attributes.json", {"identities": identities, "images": images}, indent=1)
        _write_json(tmp / "meta.json", {**meta, "counts": counts}, indent=1)
        names = [p.relative_to(tmp).as_posix() for p in (tmp / "imgs").rglob("*.png")]
        _write_json(tmp / "reid_raw.json", annotations)
        _write_manifest(tmp, [*names, "attributes.json", "meta.json", "reid_raw.json"])
        os.chmod(tmp, 0o755)

        trash = None
        if final.exists():  # overwrite: move the old one aside, swap, and only then delete it
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=out_dir))
            os.replace(final, trash / final.name)
        try:
            os.replace(tmp, final)
        except OSError:
            if _holds(final, meta) and damage(final) is None:  # a concurrent run finished the same dataset first
                log.info("%s was written concurrently; keeping that copy", final)
            elif trash is not None and not final.exists():  # put the old dataset back
                os.replace(trash / final.name, final)
                raise
            else:
                raise
        finally:
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s: %s", final, ", ".join(f"{s} {c['ids']} ids / {c['images']} images / "
                                              f"{c['captions']} captions" for s, c in counts.items()))
    return final
