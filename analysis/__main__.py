"""``python -m analysis <command>``: paper figures (PNG + SVG) of an UP-Person model.

Commands: attention, umap, ablation, curves, report. With no options every command uses the
embedded default model and the ToyPEDES it was evaluated on; ``--checkpoint PATH`` or
``--run RUN_DIR`` with ``--data-root DIR --dataset NAME`` point it at anything else.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import re
import shlex
import stat
import sys
from pathlib import Path
from typing import Optional, Sequence

from upperson.cli import OneLineParser

log = logging.getLogger("analysis")

DEFAULT_OUT = "figures"
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


# ----------------------------------------------------------------------------- arguments


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data (default: the embedded model on its ToyPEDES)")
    g.add_argument("--checkpoint", help="PETL checkpoint folder (petl.safetensors + petl.json)")
    g.add_argument("--run", dest="run_dir", metavar="RUN_DIR", help="training run folder (uses its best/ checkpoint)")
    g.add_argument("--pretrained", help="backbone weights to use instead of the path the checkpoint recorded")
    g.add_argument("--data-root", help="folder holding the dataset (default: the embedded ToyPEDES)")
    g.add_argument("--dataset", default="toypedes", help="dataset name: cuhk-pedes, icfg-pedes, rstpreid, toypedes, "
                   "generic (default: toypedes)")
    g.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="split to draw images and captions from (default: test)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="skip missing images of the dataset (counted and warned about) instead of stopping")


def _attention_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attention")
    g.add_argument("--image", help="image file (default: the --index-th record of the split)")
    g.add_argument("--caption", help="caption text (default: that record's --caption-index-th caption)")
    g.add_argument("--index", type=int, default=0, help="record of the split to show (default 0)")
    g.add_argument("--caption-index", type=int, default=0, help="which of its captions (default 0)")
    g.add_argument("--layers", help="image-tower layers, e.g. 0,5,11 or 0-5 or all (default all)")
    g.add_argument("--text-layers", help="text-tower layers (default: all)")
    g.add_argument("--heads", help="heads to average, e.g. 0,1 (default all); applies to both towers")
    g.add_argument("--text-heads", help="text-tower heads, when they differ from --heads")
    g.add_argument("--quantity", default="mass", choices=("mass", "effective", "share"),
                   help="mass: softmax mass m on the prefix (before lambda); effective: lambda*m; "
                        "share: lambda*m / ((1-m) + lambda*m) (default mass)")


def _umap_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("umap")
    g.add_argument("--ids", type=int, default=20, help="identities to show (default 20)")
    g.add_argument("--seed", type=int, default=0, help="seed of the identity choice and the UMAP (default 0)")
    g.add_argument("--no-links", action="store_true", help="do not link each caption to its image")
    g.add_argument("--cache-dir", help="embedding cache (default: <UPPERSON_CACHE>/index, shared with the demo)")


def _ablation_args(p: argparse.ArgumentParser, *, in_report: bool = False) -> None:
    g = p.add_argument_group("ablation")
    if not in_report:
        g.add_argument("--run", action="store_true", help="train the variants (skipping complete run folders, "
                       "resuming incomplete ones) before collecting them")
        g.add_argument("--config", default="toypedes", help="base preset or YAML of the sweep (default toypedes)")
        g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a base-config field for every variant (repeatable)")
        g.add_argument("--epochs", type=int, help="training epochs of every trained variant")
        g.add_argument("--variants", help="comma-separated variants (default: all); see --list")
        g.add_argument("--list", action="store_true", help="list the variants and exit")
        g.add_argument("--force", action="store_true", help="train again even where a complete run exists")
        g.add_argument("--data-root", help="dataset folder for training (default: the embedded ToyPEDES)")
        g.add_argument("--dataset", help="dataset name (default: the base config's)")
        g.add_argument("--seeds", type=int, default=None, help="training seeds per trained variant (default 3): "
                       "train.seed = the config's seed, +1, ...; runs go to RUNS/<variant>/seed-<s>/")
    g.add_argument("--runs-dir", default=None, help="folder of the variants' run folders (default runs/ablation)")
    g.add_argument("--csv", dest="ablation_csv", help="plot an existing ablation.csv instead of run folders "
                   "(its statistics are rebuilt from the per_query/ folder beside it, when there is one)")
    g.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the intervals (default 2000)")
    g.add_argument("--ci-seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        return p

    p = add("attention", "attention to the prefix per image patch and text token, per layer; and lambda")
    _model_args(p)
    _attention_args(p)
    p.set_defaults(func=cmd_attention)

    p = add("umap", "UMAP of test image and caption embeddings by identity, zero-shot beside UP-Person")
    _model_args(p)
    _umap_args(p)
    p.set_defaults(func=cmd_umap)

    p = add("ablation", "the per-component ablation: train or collect the variants, table (CSV) and figures")
    _ablation_args(p)
    p.set_defaults(func=cmd_ablation)

    p = add("curves", "training curves (loss and R@1 per epoch) of one or several runs")
    p.add_argument("runs", nargs="*", help="run folders or metrics.jsonl files (default: the embedded model's log, "
                   "else the shipped ablation's)")
    p.add_argument("--run", dest="run_dirs", action="append", default=[], metavar="RUN_DIR",
                   help="a run folder (repeatable; same as a positional argument)")
    p.set_defaults(func=cmd_curves)

    p = add("report", "every figure in one folder, with an index.html")
    _model_args(p)
    _attention_args(p)
    _umap_args(p)
    _ablation_args(p, in_report=True)
    p.add_argument("--curves", dest="curve_runs", action="append", default=[], metavar="RUN_DIR",
                   help="runs for the training curves (default: --run's folder, else the embedded/shipped logs)")
    p.set_defaults(func=cmd_report)
    return parser


# ----------------------------------------------------------------------------- commands


def _records(args):
    from analysis.sources import load_data

    data = load_data(args.data_root, args.dataset, skip_bad_images=getattr(args, "skip_bad_images", False))
    return data.split(args.split)


def _source(args):
    from analysis.sources import load_source

    return load_source(args.checkpoint, args.run_dir, pretrained=args.pretrained)


def attention_records(args, source=None, records=None):
    """The attention figures for the parsed ``args`` (shared by ``attention`` and ``report``)."""
    from analysis.attention import attention_figures
    from upperson.data import build_tokenizer

    source = source or _source(args)
    model = source.model
    check_attention_ranges(args, model)
    tokenizer = build_tokenizer(model.config.name)
    image, caption = args.image, args.caption
    if image is None or caption is None:
        records = records if records is not None else _records(args)
        if not 0 <= args.index < len(records):
            raise ValueError(f"--index {args.index}: the {args.split} split has {len(records)} records")
        rec = records[args.index]
        image = image or rec.path
        if caption is None:
            if not 0 <= args.caption_index < len(rec.captions):
                raise ValueError(f"--caption-index {args.caption_index}: record {args.index} has {len(rec.captions)} captions")
            caption = rec.captions[args.caption_index]
    log.info("attention of %s on %s / %r", source.label, image, caption)
    return attention_figures(model, tokenizer, Path(image), caption, Path(args.out), quantity=args.quantity,
                             image_layers=args.layers, text_layers=args.text_layers, heads=args.heads,
                             text_heads=args.text_heads)


def umap_records(args, source=None, records=None):
    from analysis.sources import zero_shot_of
    from analysis.umap_plot import umap_figure
    from upperson.data import build_tokenizer

    source = source or _source(args)
    records = records if records is not None else _records(args)
    zero = zero_shot_of(source)
    name = "UP-Person" if source.checkpoint is None else f"UP-Person ({Path(source.label).parent.name or source.label})"
    if not any(x is not None for b in source.model.blocks() for x in (b.prefix, b.lora_k, b.adapter_attn)):
        name = "fine-tuned" if not source.model.config.freeze_backbone else "model"
    models = [("Zero-shot backbone", zero.model), (name, source.model)]
    return umap_figure(models, build_tokenizer(source.model.config.name), records, Path(args.out), n_ids=args.ids,
                       seed=args.seed, links=not args.no_links,
                       cache_dir=Path(args.cache_dir) if args.cache_dir else None)


def _default_runs_dir() -> Path:
    return Path("runs") / "ablation"


def _shipped_csv() -> Path:
    from upperson.embedded import REPO_ROOT

    return REPO_ROOT / "assets" / "ablation" / "ablation.csv"


def ablation_table(args):
    """The table: from --csv, else from the runs folder, else the shipped one."""
    from analysis import ablation

    ci = dict(resamples=args.resamples, ci_seed=args.ci_seed)
    if getattr(args, "ablation_csv", None):
        return ablation.read_table(Path(args.ablation_csv), **ci), f"table {args.ablation_csv}"
    runs_dir = Path(args.runs_dir) if args.runs_dir else _default_runs_dir()
    variants = ablation.get_variants(_split_names(getattr(args, "variants", None)))
    if runs_dir.is_dir():
        df = ablation.collect(runs_dir, variants, **ci)
        if not df.empty:
            return df, f"run folders in {runs_dir}"
    if args.runs_dir is None and _shipped_csv().exists():
        log.info("no runs in %s: plotting the shipped table %s", runs_dir, _shipped_csv())
        return ablation.read_table(_shipped_csv(), **ci), f"shipped table {_shipped_csv()}"
    raise ValueError(f"no ablation results in {runs_dir}: train them with `python -m analysis ablation --run` "
                     "(or pass --runs-dir DIR or --csv FILE)")


def _split_names(spec: Optional[str]) -> Optional[list[str]]:
    return [s.strip() for s in spec.split(",") if s.strip()] if spec else None


# ----------------------------------------------------------------------------- validation


_INDEX_OPTIONS = (("layers", "--layers"), ("text_layers", "--text-layers"), ("heads", "--heads"),
                  ("text_heads", "--text-heads"))


def check_attention_ranges(args, model) -> None:
    """--layers/--heads inside ``model`` (image and text towers), before any attention is computed."""
    from analysis.indices import parse_indices

    if not hasattr(args, "layers"):
        return
    image, text = model.blocks("image"), model.blocks("text")
    counts = {"layers": (len(image), "image layers"), "text_layers": (len(text), "text layers"),
              "heads": (image[0].attn.num_heads if args.text_heads is not None
                        else min(image[0].attn.num_heads, text[0].attn.num_heads), "heads"),
              "text_heads": (text[0].attn.num_heads, "text heads")}
    for attr, flag in _INDEX_OPTIONS:
        spec = getattr(args, attr)
        if spec is not None:
            count, what = counts[attr]
            parse_indices(spec, count, f"{flag} ({what} of {model.config.name})")


def _writable(out: Path, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be written, before any work (and without creating it)."""
    import tempfile

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


def read_csv_rows(path: Path, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line, cells)]) of a CSV input checked with :func:`check_input_file`; a row whose
    cell count differs from the header's, or a file that is not UTF-8 CSV, is an error naming both."""
    check_input_file(path, what)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
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
    from analysis.indices import parse_indices

    if args.command != "ablation" or not args.list:
        _writable(Path(args.out))
    if getattr(args, "cache_dir", None):
        _writable(Path(args.cache_dir), "--cache-dir")
    for attr, flag in _INDEX_OPTIONS:  # syntax and non-empty ranges; the model's size is checked later
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
        from analysis.curves import metrics_file

        for p in [*args.runs, *args.run_dirs]:
            if not metrics_file(Path(p)).is_file():
                raise ValueError(f"{p}: no training log ({metrics_file(Path(p))} not found); name a run folder "
                                 "or its metrics.jsonl")
            check_input_file(metrics_file(Path(p)), "training log")
    if args.command == "ablation":
        from analysis import ablation

        ablation.get_variants(_split_names(args.variants))  # unknown names: refused before any data or training
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
            _writable(Path(args.runs_dir) if args.runs_dir else _default_runs_dir(), "--runs-dir")


def cmd_ablation(args, command: str = ""):
    from analysis import ablation

    if args.list:
        for v in ablation.VARIANTS:
            sys.stdout.write(f"{v.name:20s} {' '.join(v.overrides) or '(base preset)'}\n")
        return []
    out = Path(args.out)
    details = {}
    if args.run:
        from upperson.embedded import backbone_file, embedded_available

        overrides = list(args.overrides)
        base_cfg = ablation.load_config(args.config, overrides)
        if base_cfg.model.pretrained is None and embedded_available() and base_cfg.model.name == "upp-tiny":
            overrides.insert(0, f"model.pretrained={backbone_file()}")
            log.info("backbone: the embedded one, %s", backbone_file())
        elif base_cfg.model.pretrained is None:
            log.warning("the sweep's backbone is RANDOMLY initialised (model.pretrained is null)")
        data_root = args.data_root
        data_note = data_root
        if data_root is None and (args.dataset or base_cfg.data.dataset) == "toypedes" and base_cfg.data.root is None:
            from upperson.embedded import embedded_data_root

            data_root = str(embedded_data_root())
            data_note = f"the embedded model's ToyPEDES (upperson.embedded.embedded_data_root(), here {data_root})"
        runs_dir = Path(args.runs_dir) if args.runs_dir else _default_runs_dir()
        seeds = 3 if args.seeds is None else args.seeds
        plan = ablation.SweepPlan(base=args.config, overrides=overrides, epochs=args.epochs, data_root=data_root,
                                  dataset=args.dataset, seeds=seeds)
        variants = ablation.get_variants(_split_names(args.variants))
        ablation.sweep(variants, plan, runs_dir, force=args.force, progress=not args.no_progress)
        df = ablation.collect(runs_dir, variants, include_other=False, resamples=args.resamples, ci_seed=args.ci_seed)
        details = {"base config": args.config, "overrides": " ".join(overrides) or "(none)",
                   "epochs": args.epochs if args.epochs is not None else "preset's", "data": data_note or base_cfg.data.root,
                   "seeds": f"{seeds} per trained variant (train.seed {base_cfg.train.seed} to "
                            f"{base_cfg.train.seed + seeds - 1}); zero-shot once (deterministic)",
                   "run folders": runs_dir}
    else:
        df, where = ablation_table(args)
        details = {"source": where}
    out.mkdir(parents=True, exist_ok=True)
    ablation.write_csv(df, out / "ablation.csv")
    ablation.copy_curves(df, out)
    ablation.copy_per_query(df, out)
    if ablation.has_intervals(df):
        details["intervals"] = (f"95 % percentile bootstrap over test queries, {args.resamples} resamples, seed "
                                f"{args.ci_seed} (rebuild: `python -m analysis ablation --csv {out / 'ablation.csv'}`)")
    figs = ablation.ablation_figures(df, out)
    ablation.write_readme(out, df, figs, command=command or "python -m analysis ablation", details=details)
    log.info("ablation table (%d variants) and figures in %s", len(df), out)
    return figs


def cmd_curves(args, command: str = ""):
    from analysis.curves import curves_figure, default_logs, read_runs

    paths = [Path(p) for p in [*args.runs, *args.run_dirs]] or default_logs()
    if not paths:
        raise ValueError("no training log found: name run folders (python -m analysis curves RUN_DIR ...)")
    runs = read_runs(paths)
    if not runs:
        raise ValueError(f"none of {', '.join(map(str, paths))} holds a readable metrics.jsonl")
    return [curves_figure(runs, Path(args.out))]


def cmd_attention(args, command: str = ""):
    return attention_records(args)


def cmd_umap(args, command: str = ""):
    return umap_records(args)


def cmd_report(args, command: str = ""):
    from analysis.report import build_report

    return build_report(args, command=command)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from upperson.logs import setup_logging

    setup_logging(logging.DEBUG if args.verbose else logging.INFO, ("analysis", "upperson"))
    if getattr(args, "no_progress", False):
        os.environ.setdefault("TQDM_DISABLE", "1")
    command = "python -m analysis " + shlex.join(argv)
    try:
        validate_args(args)
        figs = args.func(args, command=command)
    except (ValueError, RuntimeError, OSError, KeyboardInterrupt) as exc:
        # one line; -v shows the traceback. Figures and tables are written atomically (temp
        # file, then rename), so an interrupted or failed command leaves no half-written file.
        if args.verbose:
            raise
        sys.stderr.write(f"error: {_describe(exc)}\n")
        return 2
    for f in figs or []:
        sys.stdout.write(f"{f.png}\n{f.svg}\n")
    return 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return ("interrupted; every file already written is complete (each is written atomically); "
                "run the same command again to finish (ablation --run resumes incomplete runs)")
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}; check that this path can be written (--out, --cache-dir) and has free space"
    return str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
