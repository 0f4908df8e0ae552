"""The per-component ablation: variants as data, a sweep that trains them, a table, figures.

Each variant is a list of config overrides on a base preset (default ``toypedes``). The
sweep trains each variant into ``<runs-dir>/<variant>/`` with ``upperson.train.train``
(zero-shot: ``train.epochs=0``, i.e. evaluation only), skipping variants whose run folder is
complete (``results.json`` written by the trainer) and resuming those that are not. The
table is collected from the run folders' ``results.json``: test metrics of the selected
checkpoint, trainable parameters and training time.

Outputs in ``--out``: ``ablation.csv``, ``ablation_bars.{png,svg}``,
``ablation_params.{png,svg}``, ``ablation_curves.{png,svg}``, ``curves/<variant>.jsonl``
(each run's per-epoch log) and ``README.md`` (the exact command and the table).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from analysis import style
from upperson.config import ExperimentConfig, load_config, to_dict
from upperson.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

PREFIX_OFF = "model.prefix.enabled=false"
LORA_OFF = "model.lora.enabled=false"
ADAPTER_OFF = "model.adapter.enabled=false"
ALL_OFF = (PREFIX_OFF, LORA_OFF, ADAPTER_OFF)


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: config overrides applied on top of the base preset."""

    name: str
    overrides: tuple[str, ...]
    label: str
    group: str  # baseline | single | pair | full | design
    description: str
    train: bool = True
    compare_to: Optional[str] = None


#: The study, in table order. Change the study here, not in code.
VARIANTS: tuple[Variant, ...] = (
    Variant("zero-shot", ALL_OFF + ("train.epochs=0",), "Zero-shot", "baseline",
            "frozen backbone, no component, no training", train=False),
    Variant("prefix-only", (LORA_OFF, ADAPTER_OFF), "Prefix", "single", "S-Prefix alone"),
    Variant("lora-only", (PREFIX_OFF, ADAPTER_OFF), "LoRA", "single", "LoRA on K and V alone"),
    Variant("adapter-only", (PREFIX_OFF, LORA_OFF), "Adapter", "single", "L-Adapter alone"),
    Variant("prefix+lora", (ADAPTER_OFF,), "Prefix+LoRA", "pair", "S-Prefix and LoRA"),
    Variant("prefix+adapter", (LORA_OFF,), "Prefix+Adapter", "pair", "S-Prefix and L-Adapter"),
    Variant("lora+adapter", (PREFIX_OFF,), "LoRA+Adapter", "pair", "LoRA and L-Adapter"),
    Variant("upperson", (), "UP-Person", "full", "S-Prefix + LoRA + L-Adapter (all three)"),
    Variant("vanilla-prefix", ("model.prefix.scaled=false",), "UP-Person, vanilla prefix", "design",
            "UP-Person with a vanilla prefix (lambda fixed at 1) instead of S-Prefix", compare_to="upperson"),
    Variant("sequential-adapter", ("model.adapter.placement=sequential",), "UP-Person, sequential adapter", "design",
            "UP-Person with sequential (Houlsby-style) adapters instead of L-Adapter", compare_to="upperson"),
    Variant("full-finetune", ALL_OFF + ("model.freeze_backbone=false", "train.backbone_lr=1.0e-4", "train.eps=1.0e-6"), "Full fine-tune",
            "baseline", "every backbone weight trains (lr 1e-4, eps 1e-6, as preset toypedes-full-finetune), no component"),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)

COLUMNS = ["variant", "label", "group", "prefix", "lora", "adapter", "prefix_scaled", "adapter_placement",
           "freeze_backbone", "R1", "R5", "R10", "mAP", "mINP", "eval_split", "trainable_params", "total_params",
           "trainable_percent", "train_time_s", "epochs", "best_epoch", "run_dir"]

RESULTS_NAME = "results.json"
TrainFn = Callable[..., dict]


def get_variants(names: Optional[Sequence[str]] = None) -> list[Variant]:
    """The variants named (all by default), in table order; unknown names are an error."""
    if not names:
        return list(VARIANTS)
    unknown = [n for n in names if n not in VARIANT_NAMES]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANT_NAMES)}")
    return [v for v in VARIANTS if v.name in set(names)]


def variant_config(variant: Variant, base: str = "toypedes", *, overrides: Sequence[str] = (),
                   epochs: Optional[int] = None, data_root: Optional[str] = None,
                   dataset: Optional[str] = None) -> ExperimentConfig:
    """The base preset with the user's overrides, then the variant's (the variant wins)."""
    items = list(overrides)
    if epochs is not None and variant.train:
        items.append(f"train.epochs={int(epochs)}")
    items += list(variant.overrides)
    if data_root is not None:
        items.append(f"data.root={json.dumps(str(data_root))}")
    if dataset is not None:
        items.append(f"data.dataset={dataset}")
    return load_config(base, items)


def _plain(obj) -> object:
    return json.loads(json.dumps(obj))


def run_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / RESULTS_NAME).exists()


def _default_train_fn() -> TrainFn:
    from upperson.train import train

    return train


def run_variant(variant: Variant, cfg: ExperimentConfig, run_dir: Path, *, train_fn: Optional[TrainFn] = None,
                force: bool = False, progress: bool = True) -> Path:
    """Train one variant into ``run_dir``, unless a complete run of the same config is there."""
    run_dir = Path(run_dir)
    planned = _plain(to_dict(cfg))
    if run_complete(run_dir) and not force:
        done = json.loads((run_dir / RESULTS_NAME).read_text())
        if done.get("config") == planned:
            log.info("%s: complete run in %s, skipped", variant.name, run_dir)
            return run_dir
        raise ValueError(f"{run_dir} holds a complete run of {variant.name!r} with a different config; "
                         "pass --force to train it again, or choose another --runs-dir")
    if force and run_dir.exists():
        log.info("%s: --force, removing %s", variant.name, run_dir)
        shutil.rmtree(run_dir)
    resume = (run_dir / "config.yaml").exists()
    train_fn = train_fn or _default_train_fn()
    log.info("%s: %s %s (%s)", variant.name, "resuming" if resume else "training", run_dir, variant.description)
    t0 = time.time()
    train_fn(cfg, run_dir, resume=resume, progress=progress)
    if not run_complete(run_dir):
        raise RuntimeError(f"{variant.name}: training finished but wrote no {RESULTS_NAME} in {run_dir}")
    log.info("%s: done in %.0f s", variant.name, time.time() - t0)
    return run_dir


def row_from_run(run_dir: Path, variant: Optional[Variant] = None) -> dict:
    """One table row from a run folder's ``results.json``."""
    run_dir = Path(run_dir)
    res = json.loads((run_dir / RESULTS_NAME).read_text())
    metrics = res.get("metrics", {})
    split = "test" if "test" in metrics else res.get("selected_on", next(iter(metrics), ""))
    m = metrics.get(split, {})
    model = res.get("config", {}).get("model", {})
    params = res.get("parameters", {})
    name = variant.name if variant else run_dir.name
    return {
        "variant": name,
        "label": variant.label if variant else name,
        "group": variant.group if variant else "other",
        "prefix": bool(model.get("prefix", {}).get("enabled", False)),
        "lora": bool(model.get("lora", {}).get("enabled", False)),
        "adapter": bool(model.get("adapter", {}).get("enabled", False)),
        "prefix_scaled": bool(model.get("prefix", {}).get("scaled", False)) and bool(model.get("prefix", {}).get("enabled")),
        "adapter_placement": model.get("adapter", {}).get("placement", "") if model.get("adapter", {}).get("enabled") else "",
        "freeze_backbone": bool(model.get("freeze_backbone", True)),
        **{k: float(m.get(k, math.nan)) for k in ("R1", "R5", "R10", "mAP", "mINP")},
        "eval_split": split,
        "trainable_params": int(params.get("trainable", 0)),
        "total_params": int(params.get("total", 0)),
        "trainable_percent": float(params.get("percent", math.nan)),
        "train_time_s": float(res.get("train_time_s", 0.0)),
        "epochs": int(res.get("config", {}).get("train", {}).get("epochs", 0)),
        "best_epoch": int(res.get("best_epoch", -1)),
        "run_dir": str(run_dir),
    }


def collect(runs_dir: Path, variants: Optional[Sequence[Variant]] = None, *, include_other: bool = True) -> pd.DataFrame:
    """The table from ``runs_dir/<variant>/results.json``; missing variants are left out (logged)."""
    runs_dir = Path(runs_dir)
    variants = list(variants) if variants is not None else list(VARIANTS)
    rows, missing = [], []
    for v in variants:
        d = runs_dir / v.name
        if run_complete(d):
            rows.append(row_from_run(d, v))
        else:
            missing.append(v.name)
    if include_other and runs_dir.is_dir():
        known = set(VARIANT_NAMES)
        for d in sorted(p for p in runs_dir.iterdir() if p.is_dir() and p.name not in known and run_complete(p)):
            rows.append(row_from_run(d))
    if missing:
        log.warning("no complete run in %s for: %s", runs_dir, ", ".join(missing))
    return pd.DataFrame(rows, columns=COLUMNS)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")


def read_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    missing = [c for c in ("variant", "R1", "mAP", "trainable_params", "train_time_s") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not an ablation table (missing columns {missing})")
    if "label" not in df.columns:
        df["label"] = df["variant"]
    return df


def copy_curves(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Copy each run's ``metrics.jsonl`` to ``out_dir/curves/<variant>.jsonl`` (small, shippable)."""
    copied = []
    for _, row in df.iterrows():
        src = Path(str(row.get("run_dir", ""))) / "metrics.jsonl"
        if src.is_file() and src.stat().st_size > 0:
            dst = Path(out_dir) / "curves" / f"{row['variant']}.jsonl"
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
            copied.append(dst)
    return copied


# ----------------------------------------------------------------------------- figures


def plot_bars(df: pd.DataFrame, out_dir: Path, *, name: str = "ablation_bars") -> style.FigureRecord:
    """Grouped bars: R@1 and mAP per variant."""
    n = len(df)
    fig = style.figure(max(5.0, 1.2 + 0.62 * n), 3.8, layout="constrained")
    ax = fig.subplots()
    x = np.arange(n)
    w = 0.38
    for off, col, colour, lab in ((-w / 2, "R1", style.OKABE_ITO[0], "R@1"), (w / 2, "mAP", style.OKABE_ITO[1], "mAP")):
        vals = df[col].to_numpy(dtype=float)
        bars = ax.bar(x + off, vals, w, color=colour, label=lab, edgecolor="white", linewidth=0.5)
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, df["label"].tolist(), rotation=35, ha="right")
    for tick, variant in zip(ax.get_xticklabels(), df["variant"]):
        if variant == "upperson":
            tick.set_fontweight("bold")
    top = np.nanmax(df[["R1", "mAP"]].to_numpy(dtype=float)) if n else 1.0
    ax.set_ylim(0, (top if np.isfinite(top) and top > 0 else 1.0) * 1.15)
    ax.set_ylabel("score (%)")
    ax.grid(True, axis="y")
    ax.set_axisbelow(True)
    ax.legend(frameon=False, ncol=2, loc="upper left")
    ax.set_title("Ablation: retrieval per variant (test split)")
    caption = ("Text-to-image R@1 and mAP (%) on the test split for each variant of the ablation: the "
               "zero-shot backbone, each component alone, each pair, all three (UP-Person), UP-Person with a "
               "vanilla prefix or sequential adapters, and a full fine-tune.")
    return style.save(fig, out_dir, name, caption)


GROUP_MARKERS = {"baseline": "s", "single": "o", "pair": "D", "full": "*", "design": "P", "other": "X"}


def plot_params(df: pd.DataFrame, out_dir: Path, *, name: str = "ablation_params") -> style.FigureRecord:
    """R@1 against trainable parameters (log scale); the zero-shot model (0 parameters) is a line."""
    fig = style.figure(5.6, 4.0, layout="constrained")
    ax = fig.subplots()
    groups = list(dict.fromkeys(df["group"].tolist())) if "group" in df else ["other"]
    colours = dict(zip(groups, style.OKABE_ITO))
    trained = df[df["trainable_params"] > 0]
    for g in groups:
        sub = trained[trained["group"] == g] if "group" in trained else trained
        if len(sub):
            ax.scatter(sub["trainable_params"], sub["R1"], marker=GROUP_MARKERS.get(g, "o"), s=70 if g == "full" else 36,
                       color=colours[g], label=g, edgecolors="black", linewidths=0.4, zorder=3)
    for _, r in trained.iterrows():
        ax.annotate(r["label"], (r["trainable_params"], r["R1"]), xytext=(4, 3), textcoords="offset points",
                    fontsize=6.5)
    for _, r in df[df["trainable_params"] <= 0].iterrows():
        ax.axhline(r["R1"], color="0.4", ls="--", lw=0.9, label=f"{r['label']} (0 trainable)")
    if len(trained):
        ax.set_xscale("log")
        lo, hi = trained["trainable_params"].min(), trained["trainable_params"].max()
        ax.set_xlim(lo / 2.5, hi * 4)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("R@1 (%)")
    ax.grid(True, which="major")
    ax.legend(frameon=False, fontsize=7, loc="best")
    ax.set_title("Retrieval against trainable parameters")
    caption = ("Text-to-image R@1 (%) against the number of trainable parameters (log scale) for each variant; "
               "the dashed line is the zero-shot backbone, which trains nothing.")
    return style.save(fig, out_dir, name, caption)


def _markdown_table(df: pd.DataFrame) -> str:
    cols = ["variant", "R1", "mAP", "trainable_params", "trainable_percent", "train_time_s", "epochs"]
    cols = [c for c in cols if c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c in ("R1", "mAP", "trainable_percent"):
                cells.append(f"{float(v):.2f}")
            elif c == "train_time_s":
                cells.append(f"{float(v):.0f}")
            elif c == "trainable_params":
                cells.append(f"{int(v):,}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_readme(out_dir: Path, df: pd.DataFrame, figures: Sequence[style.FigureRecord], *, command: str,
                 details: dict) -> Path:
    """``README.md``: the command that made this folder, the setting and the table."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Ablation of UP-Person's components",
        "",
        "Made by:",
        "",
        "```",
        command,
        "```",
        "",
        f"on {now}, commit {_git_commit()}.",
        "",
    ]
    for k, v in details.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "Variants (overrides on the base preset):", ""]
    for v in VARIANTS:
        if v.name in set(df["variant"]):
            lines.append(f"- `{v.name}`: {v.description}; `{' '.join(v.overrides) or '(none)'}`")
    lines += ["", "Results (`ablation.csv`, test split of the selected checkpoint):", "", _markdown_table(df), ""]
    lines += ["Figures:", ""]
    for f in figures:
        lines.append(f"- `{f.png.name}` / `{f.svg.name}`: {f.caption}")
    lines.append("")
    path = Path(out_dir) / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path


@dataclass
class SweepPlan:
    base: str = "toypedes"
    overrides: list[str] = field(default_factory=list)
    epochs: Optional[int] = None
    data_root: Optional[str] = None
    dataset: Optional[str] = None


def sweep(variants: Sequence[Variant], plan: SweepPlan, runs_dir: Path, *, train_fn: Optional[TrainFn] = None,
          force: bool = False, progress: bool = True) -> list[Path]:
    """Train (or skip, or resume) every variant; returns the run folders in order."""
    from tqdm.auto import tqdm

    # every config first, so that a bad override fails before hours of training, not after
    configs = [variant_config(v, plan.base, overrides=plan.overrides, epochs=plan.epochs, data_root=plan.data_root,
                              dataset=plan.dataset) for v in variants]
    done = []
    for v, cfg in tqdm(list(zip(variants, configs)), desc="ablation", unit="variant", disable=not progress):
        done.append(run_variant(v, cfg, Path(runs_dir) / v.name, train_fn=train_fn, force=force, progress=progress))
    return done


def ablation_figures(df: pd.DataFrame, out_dir: Path) -> list[style.FigureRecord]:
    """The table's figures (and the training curves of the runs it names, when they exist)."""
    if df.empty:
        raise ValueError("the ablation table is empty: no variant has a complete run")
    figs = [plot_bars(df, out_dir), plot_params(df, out_dir)]
    curves_dir = Path(out_dir) / "curves"
    if curves_dir.is_dir() and any(curves_dir.glob("*.jsonl")):
        from analysis.curves import curves_figure, read_runs

        order = {n: i for i, n in enumerate(df["variant"])}
        files = sorted(curves_dir.glob("*.jsonl"), key=lambda p: order.get(p.stem, len(order)))
        labels = dict(zip(df["variant"], df["label"]))
        runs = read_runs(files, labels={p.stem: labels.get(p.stem, p.stem) for p in files})
        if runs:
            figs.append(curves_figure(runs, out_dir, name="ablation_curves",
                                      title="Ablation: training curves per variant"))
    return figs
