"""``report``: every figure in one folder, with an ``index.html`` that shows each with its caption."""

from __future__ import annotations

import datetime
import html
import logging
from pathlib import Path
from typing import Callable, Sequence

from analysis import ablation, style
from analysis.commands import ablation_table, attention_records, records_of, source_of, umap_records
from analysis.curves import curves_figure, default_logs, read_runs
from upperson.io import atomic_write_text

log = logging.getLogger(__name__)

CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
figure { margin: 1.2em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.92em; color: #333; margin-top: 0.4em; }
code { background: #f4f4f4; padding: 0 0.25em; } .skipped { color: #8a4b00; }
"""


def link(path: Path, out_dir: Path) -> str:
    """The href of a figure file: relative inside ``out_dir`` (``./`` before a first segment with a colon,
    so ``javascript:x.png`` stays a file, never a URL scheme), else its absolute ``file:`` URI."""
    if not path.is_relative_to(out_dir):
        return path.resolve().as_uri()
    rel = path.relative_to(out_dir).as_posix()
    return "./" + rel if ":" in rel.split("/")[0] else rel


def render_index(sections: Sequence[tuple[str, list[style.FigureRecord], str]], out_dir: Path, *, title: str,
                 notes: Sequence[str] = ()) -> Path:
    """Write ``out_dir/index.html``: one section per command, one numbered figure per record.

    ``sections`` holds (heading, figures, note): a section with no figures shows the note as the
    reason it was skipped, one with figures as what its numbers are on.
    """
    out_dir = Path(out_dir)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", f"<p>Generated {now}.</p>"]
    for note in notes:
        parts.append(f"<p>{note}</p>")
    n = 0
    for heading, figures, skipped in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if not figures:
            parts.append(f'<p class="skipped">Not included: {html.escape(skipped)}</p>')
        elif skipped:  # a section with figures: the note says what its numbers are on
            parts.append(f"<p>{html.escape(skipped)}</p>")
        for f in figures:
            n += 1
            png, svg = link(f.png, out_dir), link(f.svg, out_dir)
            parts.append(
                f'<figure id="{html.escape(f.name)}"><a href="{html.escape(svg)}">'
                f'<img src="{html.escape(png)}" alt="{html.escape(f.name)}"></a>'
                f"<figcaption><b>Figure {n}.</b> {html.escape(f.caption)} "
                f'(<a href="{html.escape(png)}">PNG</a>, <a href="{html.escape(svg)}">SVG</a>)</figcaption></figure>')
    parts.append("</body></html>")
    path = out_dir / "index.html"
    atomic_write_text(path, "\n".join(parts) + "\n")
    log.info("wrote %s (%d figures)", path, n)
    return path


def _section(heading: str, make: Callable[[], list], sections: list) -> list:
    try:
        figs = make() or []
        sections.append((heading, figs, ""))
        return figs
    except (ValueError, FileNotFoundError) as exc:
        log.warning("report: %s skipped: %s", heading, exc)
        sections.append((heading, [], str(exc)))
        return []


def build_report(args, command: str = "") -> list[style.FigureRecord]:
    """Run attention, umap, ablation and curves into ``args.out`` and index them."""
    out = Path(args.out)
    source = source_of(args)
    records = records_of(args)
    sections: list = []
    figs = []
    figs += _section("Attention to the prefix", lambda: attention_records(args, source, records), sections)
    figs += _section("Embeddings (UMAP)", lambda: umap_records(args, source, records), sections)

    def make_ablation():
        df, where = ablation_table(args)
        splits = sorted({str(x) for x in df["eval_split"].dropna()}) if "eval_split" in df.columns else []
        on = f"its own {' and '.join(splits)} split" if splits else "the split its runs were evaluated on"
        notes["Ablation"] = (f"From {where}: scored on {on} of the study's data, not on the data of the "
                             "attention and embeddings sections.")
        return ablation.write_study(df, out)

    notes: dict[str, str] = {}
    figs += _section("Ablation", make_ablation, sections)
    sections[-1] = (*sections[-1][:2], sections[-1][2] or notes.get("Ablation", ""))

    def make_curves():
        paths = [Path(p) for p in args.curve_runs]
        if not paths and args.run_dir:
            paths = [Path(args.run_dir)]
        paths = paths or default_logs()
        runs = read_runs(paths)
        if not runs:
            raise ValueError("no training log (metrics.jsonl) found; name runs with --curves RUN_DIR")
        return [curves_figure(runs, out)]

    figs += _section("Training curves", make_curves, sections)
    header = [f"Model: <code>{html.escape(source.label)}</code>. Attention and embeddings: data <code>"
              f"{html.escape(str(records[0].path.parent) if records else '')}</code> "
              f"({html.escape(args.split)} split, {len(records)} images)."]
    if command:
        header.append(f"Command: <code>{html.escape(command)}</code>")
    render_index(sections, out, title="UP-Person analysis report", notes=header)
    return figs
