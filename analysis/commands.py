"""The bodies of ``python -m analysis``'s commands (``report`` reuses attention, umap and ablation)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from analysis.checks import check_attention_ranges
from analysis.options import default_runs_dir, parse_test_on, split_names
from upperson.train.run import Run

log = logging.getLogger("analysis")

# Heavy imports (torch, pandas, matplotlib) stay inside the commands that need them, so that
# `python -m analysis --help` and the option checks stay fast.


def example_of(args, records=None) -> tuple:
    """``--image`` and ``--caption``, each defaulting to the ``--index``-th record of the split and
    its ``--caption-index``-th caption (the records are read only when one of the two is missing)."""
    image, caption = args.image, args.caption
    if image is None or caption is None:
        records = records if records is not None else records_of(args)
        if not 0 <= args.index < len(records):
            raise ValueError(f"--index {args.index}: the {args.split} split has {len(records)} records")
        rec = records[args.index]
        image = image or rec.path
        if caption is None:
            if not 0 <= args.caption_index < len(rec.captions):
                raise ValueError(f"--caption-index {args.caption_index}: record {args.index} has {len(rec.captions)} captions")
            caption = rec.captions[args.caption_index]
    return image, caption


def records_of(args):
    """The ``--split`` records of the parsed ``args``' dataset."""
    from analysis.sources import load_data  # (heavy: only when the command runs)

    data = load_data(args.data_root, args.dataset, skip_bad_images=getattr(args, "skip_bad_images", False))
    return data.split(args.split)


def source_of(args):
    """The model of the parsed ``args`` (``--checkpoint``, ``--run`` or the embedded default)."""
    from analysis.sources import SourceSpec, load_source  # (heavy: only when the command runs)

    return load_source(SourceSpec(checkpoint=args.checkpoint, run=args.run_dir, pretrained=args.pretrained))


def attention_records(args, source=None, records=None):
    """The attention figures for the parsed ``args`` (shared by ``attention`` and ``report``)."""
    from analysis.attention import attention_figures  # (heavy: only when the command runs)
    from upperson.data import build_tokenizer  # (heavy: only when the command runs)

    source = source or source_of(args)
    model = source.model
    check_attention_ranges(args, model)
    tokenizer = build_tokenizer(model.config.name)
    image, caption = example_of(args, records)
    log.info("attention of %s on %s / %r", source.label, image, caption)
    return attention_figures(model, tokenizer, Path(image), caption, Path(args.out), quantity=args.quantity,
                             image_layers=args.layers, text_layers=args.text_layers, heads=args.heads,
                             text_heads=args.text_heads)


def umap_records(args, source=None, records=None):
    from analysis.sources import zero_shot_of  # (heavy: only when the command runs)
    from analysis.umap_plot import umap_figure  # (heavy: only when the command runs)
    from upperson.data import build_tokenizer  # (heavy: only when the command runs)

    source = source or source_of(args)
    records = records if records is not None else records_of(args)
    zero = zero_shot_of(source)
    name = "UP-Person" if source.checkpoint is None else f"UP-Person ({Run.label_of(source.checkpoint)})"
    if not any(x is not None for b in source.model.blocks() for x in (b.prefix, b.lora_k, b.adapter_attn)):
        name = "fine-tuned" if not source.model.config.freeze_backbone else "model"
    models = [("Zero-shot backbone", zero.model), (name, source.model)]
    return umap_figure(models, build_tokenizer(source.model.config.name), records, Path(args.out), n_ids=args.ids,
                       seed=args.seed, links=not args.no_links,
                       cache_dir=Path(args.cache_dir) if args.cache_dir else None)


def shipped_csv() -> Path:
    from upperson.embedded import REPO_ROOT  # (heavy: only when the command runs)

    return REPO_ROOT / "assets" / "ablation" / "ablation.csv"


def ablation_table(args):
    """The table: from --csv, else from the runs folder, else the shipped one."""
    from analysis import ablation  # (heavy: only when the command runs)

    ci = dict(resamples=args.resamples, ci_seed=args.ci_seed)
    if getattr(args, "ablation_csv", None):
        return ablation.read_table(Path(args.ablation_csv), **ci), f"table {args.ablation_csv}"
    runs_dir = Path(args.runs_dir) if args.runs_dir else default_runs_dir()
    variants = ablation.get_variants(split_names(getattr(args, "variants", None)))
    if runs_dir.is_dir():
        df = ablation.collect(runs_dir, variants, **ci)
        if not df.empty:
            return df, f"run folders in {runs_dir}"
    if args.runs_dir is None and shipped_csv().exists():
        log.info("no runs in %s: plotting the shipped table %s", runs_dir, shipped_csv())
        return ablation.read_table(shipped_csv(), **ci), f"shipped table {shipped_csv()}"
    raise ValueError(f"no ablation results in {runs_dir}: train them with `python -m analysis ablation --run` "
                     "(or pass --runs-dir DIR or --csv FILE)")



def cmd_ablation(args, command: str = ""):
    from analysis import ablation  # (heavy: only when the command runs)

    if args.list:
        for v in ablation.VARIANTS:
            sys.stdout.write(f"{v.name:20s} {' '.join(v.overrides) or '(base preset)'}\n")
        return []
    out = Path(args.out)
    details = {}
    target = None
    if getattr(args, "test_on", None):
        if getattr(args, "ablation_csv", None):
            raise ValueError("--test-on evaluates run folders: leave out --csv")
        target = parse_test_on(args.test_on)  # before anything trains
    if args.run:
        from upperson.embedded import backbone_file, embedded_available  # (heavy: only when the command runs)

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
            from upperson.embedded import embedded_data_root  # (heavy: only when the command runs)

            data_root = str(embedded_data_root())
            data_note = f"the embedded model's ToyPEDES (upperson.embedded.embedded_data_root(), here {data_root})"
        runs_dir = Path(args.runs_dir) if args.runs_dir else default_runs_dir()
        seeds = 3 if args.seeds is None else args.seeds
        plan = ablation.SweepPlan(base=args.config, overrides=overrides, epochs=args.epochs, data_root=data_root,
                                  dataset=args.dataset, seeds=seeds)
        variants = ablation.get_variants(split_names(args.variants))
        ablation.sweep(variants, plan, runs_dir, force=args.force, progress=not args.no_progress)
        df = _ablation_collect(args, runs_dir, variants, target, args.dataset or base_cfg.data.dataset)
        details = {"base config": args.config, "overrides": " ".join(overrides) or "(none)",
                   "epochs": args.epochs if args.epochs is not None else "preset's", "data": data_note or base_cfg.data.root,
                   "seeds": f"{seeds} per trained variant (train.seed {base_cfg.train.seed} to "
                            f"{base_cfg.train.seed + seeds - 1}); zero-shot once (deterministic)",
                   "run folders": runs_dir}
    elif target is not None:
        runs_dir = Path(args.runs_dir) if args.runs_dir else default_runs_dir()
        variants = ablation.get_variants(split_names(args.variants))
        df = _ablation_collect(args, runs_dir, variants, target, args.dataset)
        details = {"source": f"run folders in {runs_dir}"}
    else:
        df, where = ablation_table(args)
        details = {"source": where}
    if target is not None:
        details["evaluated on"] = (f"{target[0]}: the test split of {target[1]} (each run's selected checkpoint; "
                                   f"per_query_test-{target[0]}.csv.gz in each run folder)")
    out.mkdir(parents=True, exist_ok=True)
    figs = ablation.write_study(df, out)
    if ablation.has_intervals(df):
        details["intervals"] = (f"95 % percentile bootstrap over test queries, {args.resamples} resamples, seed "
                                f"{args.ci_seed} (rebuild: `python -m analysis ablation --csv {out / 'ablation.csv'}`)")
    ablation.write_readme(out, df, figs, command=command or "python -m analysis ablation", details=details)
    log.info("ablation table (%d variants) and figures in %s", len(df), out)
    return figs


def _ablation_collect(args, runs_dir: Path, variants, target, dataset):
    """The table of the run folders: on their own test split, or (``target``: (name, root)) on the
    target's, each complete run evaluated there first (``analysis.ablation.targets``)."""
    from analysis import ablation  # (heavy: only when the command runs)
    from analysis.ablation.targets import evaluate_on_target, per_query_name

    ci = dict(resamples=args.resamples, ci_seed=args.ci_seed)
    if target is None:
        return ablation.collect(runs_dir, variants, include_other=False, **ci)
    name, root = target
    runs = [r for v in variants for r in ablation.seed_runs(Path(runs_dir) / v.name)]
    if not runs:
        raise ValueError(f"no complete ablation run in {runs_dir} to evaluate on {name}: train them with "
                         "`python -m analysis ablation --run` (or pass --runs-dir DIR)")
    if dataset is None:  # the runs' own dataset (the source's format)
        dataset = json.loads((Path(runs[0]) / "results.json").read_text())["config"]["data"]["dataset"]
    evaluate_on_target(runs, name, root, dataset, progress=not args.no_progress)
    return ablation.collect(runs_dir, variants, include_other=False, per_query_file=per_query_name(name),
                            target=name, **ci)


def cmd_curves(args, command: str = ""):
    from analysis.curves import curves_figure, default_logs, read_runs  # (heavy: only when the command runs)

    paths = [Path(p) for p in [*args.runs, *args.run_dirs]] or default_logs()
    if not paths:
        raise ValueError("no training log found: name run folders (python -m analysis curves RUN_DIR ...)")
    runs = read_runs(paths)
    if not runs:
        raise ValueError(f"none of {', '.join(map(str, paths))} holds a readable metrics.jsonl")
    return [curves_figure(runs, Path(args.out))]


def cmd_attention(args, command: str = ""):
    return attention_records(args)


def cmd_budget(args, command: str = ""):
    from analysis.budget import budget_command  # (heavy: only when the command runs)

    return budget_command(args, command=command or "python -m analysis budget")


def cmd_explain(args, command: str = ""):
    from analysis.explain import explain_command  # (heavy: only when the command runs)

    return explain_command(args, source_of, example_of)


def cmd_umap(args, command: str = ""):
    return umap_records(args)


def cmd_transfer(args, command: str = ""):
    from analysis.transfer.command import run  # (heavy: torch, pandas, matplotlib only when the command runs)

    return run(args, command=command)
