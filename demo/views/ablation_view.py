"""The Ablation tab: the study's table, its figures and the command that reproduces it.

Reads a folder written by ``python -m analysis ablation --out DIR`` (default: the shipped
``assets/ablation/``, or any folder under the app's allowed roots): ``ablation.csv`` as written
(:func:`analysis.ablation.read_csv`), its ``README.md`` for the command, and
``ablation_curves.png`` when present. The bars and the parameter plot are drawn by the CLI's
functions (:func:`analysis.ablation.bars_figure`, :func:`analysis.ablation.params_figure`); the
metric selector redraws the bars, with the 95 % intervals as error bars where the table has them.

Every file it shows is resolved first (symlinks followed) and read only if it lies inside the
allowed folders (the ``--allow-root`` folders; ``assets/ablation`` for the shipped study): a
table that resolves outside is an error, a figure or README that does is left out and named
in the notes. The curves figure is shown only if it is a PNG of at most :data:`MAX_FIGURE_BYTES`.
"""

from __future__ import annotations

import html
import io
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gradio as gr
import pandas as pd

from analysis import ablation, style
from analysis.curves import training_curves_figure
from demo.context import DemoContext, SharedUI
from demo.gallery import GalleryError
from demo.markup import text as esc
from demo.search import QueryError
from demo.thumbs import OutsideRoots, open_inside, real, within
from demo.views.common import (cache_of, figure_file, figure_image, hidden_api, in_page, lenient_dropdown, opened_by,
                               png_file, screen_layout, user_error)
from demo.views.study_panel import readme_command
from upperson import stats
from upperson.embedded import read_card

log = logging.getLogger(__name__)

CSV_NAME = "ablation.csv"
CLI_METRICS = "R1+mAP"  # what the CLI's ablation_bars.png shows
METRICS = {CLI_METRICS: ("R1", "mAP"), **{m: (m,) for m in ablation.BAR_METRICS}}
#: uncertainty columns shown when the table has them (docs/statistics.md)
STAT_COLUMNS = ["seeds", "R1_std", "R1_ci_low", "R1_ci_high", "mAP_ci_low", "mAP_ci_high", "R1_diff_vs_upperson",
                "R1_diff_ci_low", "R1_diff_ci_high"]
SIGNIFICANCE = "vs UP-Person"  # the mark column added to the shown table
STUDIES, STUDIES_SIZE = "ablation-studies", 8  # (csv path, mtime, size) -> Study
DRAWINGS, DRAWINGS_SIZE = "ablation-drawings", 64
CURVES_NAME, README_NAME = "ablation_curves.png", "README.md"
CURVE_LOGS = "curves"  # the study's training logs (<variant>.jsonl): a phone gets the curves drawn from them
MAX_CURVE_LOGS, MAX_LOG_BYTES = 64, 4 * 2**20
MAX_FIGURE_BYTES = 20 * 2**20  # a larger ablation_curves.png is not shown (the CLI writes ~100 kB)
MAX_README_BYTES = 2**20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def shipped_folder() -> Path:
    """``assets/ablation`` of this repository: the study that ships with it."""
    from upperson.embedded import REPO_ROOT

    return REPO_ROOT / "assets" / "ablation"


@dataclass
class Study:
    """One ablation folder, read."""

    folder: Path
    table: pd.DataFrame  # ablation.csv as written
    command: str  # the commands from its README ("" when unknown)
    curves: Optional[bytes]  # ablation_curves.png, when the folder has it
    left_out: tuple[str, ...] = ()  # why a file of the folder is not shown
    logs: tuple[tuple[str, bytes], ...] = ()  # (variant, curves/<variant>.jsonl): the curves drawn for a phone


def read_inside(path: Path, roots: list[Path], limit: int) -> tuple[Optional[bytes], str]:
    """(bytes, "") of ``path`` if it resolves inside ``roots`` and has at most ``limit`` bytes; else
    (None, why it is left out); (None, "") when there is no such file."""
    if not os.path.lexists(path):
        return None, ""
    try:
        with open_inside(path, roots) as fh:
            data = fh.read(limit + 1)
    except OutsideRoots:
        return None, f"{path.name} is not shown: it resolves outside the allowed folders"
    except OSError as exc:
        return None, f"{path.name} is not shown: it cannot be read ({exc.strerror or type(exc).__name__})"
    if len(data) > limit:
        return None, f"{path.name} is not shown: it is larger than {limit // 2**20} MB"
    return data, ""


def _stat_key(path: Path) -> tuple:
    """What a cached study depends on for ``path``: where it resolves now, and that file's mtime and size."""
    try:
        st = os.stat(path)
    except OSError:
        return (str(path), None)
    return (str(real(path)), st.st_mtime_ns, st.st_size)


def study_folder(ctx: DemoContext, folder: object) -> Path:
    """The folder to read: the shipped study for an empty value, else ``folder`` inside the allowed roots."""
    if folder is not None and not isinstance(folder, str):
        raise QueryError(f"The folder must be text; got {type(folder).__name__}.")
    if folder is None or not folder.strip():
        return real(shipped_folder())
    try:
        path = ctx.resolve(folder)
    except GalleryError as exc:
        raise QueryError(f"{exc}. Leave the folder empty for the shipped study.") from None
    if not path.is_dir():
        raise QueryError(f"{folder}: not a folder; give the --out folder of `python -m analysis ablation`.")
    return path


def load_study(ctx: DemoContext, folder: object) -> tuple[tuple, Study]:
    """(cache key, study) of an ablation folder; QueryError when it holds no readable table."""
    path = study_folder(ctx, folder)
    roots = [path] if path == real(shipped_folder()) else list(ctx.allow_roots)
    csv = path / CSV_NAME
    if not csv.is_file():
        raise QueryError(f"{path.name or path}: no {CSV_NAME} in this folder; give the --out folder of "
                         "`python -m analysis ablation` (or leave it empty for the shipped study).")
    if not within(real(csv), roots):
        raise QueryError(f"{CSV_NAME} in {path.name or path} resolves outside the allowed folders; copy the "
                         "table into the folder instead of linking it.")
    key = tuple(_stat_key(path / n) for n in (CSV_NAME, CURVES_NAME, README_NAME, CURVE_LOGS))

    def make() -> Study:
        try:
            table = ablation.read_csv(real(csv))
        except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise QueryError(f"{CSV_NAME} cannot be read as an ablation table: {exc}") from None
        if table.empty:
            raise QueryError(f"{CSV_NAME} has no rows: no variant has a complete run.")
        curves, why_curves = read_inside(path / CURVES_NAME, roots, MAX_FIGURE_BYTES)
        if curves is not None and not curves.startswith(PNG_SIGNATURE):
            curves, why_curves = None, f"{CURVES_NAME} is not shown: it is not a PNG file"
        readme, why_readme = read_inside(path / README_NAME, roots, MAX_README_BYTES)
        command = readme_command(readme.decode("utf-8", errors="replace")) if readme else ""
        logs, why_logs = [], []
        for f in sorted((path / CURVE_LOGS).glob("*.jsonl"))[:MAX_CURVE_LOGS] if (path / CURVE_LOGS).is_dir() else []:
            data, why = read_inside(f, roots, MAX_LOG_BYTES)
            if data is not None:
                logs.append((f.stem, data))
            elif why:
                why_logs.append(f"{CURVE_LOGS}/{why}")
        left_out = tuple(w for w in (why_curves, why_readme, *why_logs) if w)
        for why in left_out:
            log.warning("ablation folder %s: %s", path, why)
        return Study(path, table, command, curves, left_out, tuple(logs))

    return key, cache_of(ctx, STUDIES, STUDIES_SIZE).get_or_make(key, make)


def _num(value: object) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def significance_mark(row: pd.Series) -> str:
    """The mark of a row's paired R@1 difference to UP-Person: reference, ``* significant`` (its 95 %
    interval excludes zero), ``n.s.``, or ``-`` (no difference computed)."""
    if row.get("variant") == ablation.REFERENCE:
        return "reference"
    if not math.isfinite(_num(row.get("R1_diff_vs_upperson"))):
        return "-"
    sig = str(row.get("R1_diff_significant", "")).strip().lower()
    if sig in ("true", "false"):
        return "* significant" if sig == "true" else "n.s."
    lo, hi = _num(row.get("R1_diff_ci_low")), _num(row.get("R1_diff_ci_high"))
    if math.isfinite(lo) and math.isfinite(hi):
        return "* significant" if lo > 0 or hi < 0 else "n.s."
    return "-"


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as shown: every column of the CSV (the metrics and their uncertainty first), and (with
    the uncertainty columns) the significance mark of the R@1 difference to UP-Person after the label."""
    df = table.copy()
    if ablation.has_intervals(df) and "R1_diff_vs_upperson" in df.columns:
        df.insert(0, SIGNIFICANCE, [significance_mark(r) for _, r in df.iterrows()])
    first = [c for c in ["variant", "label", SIGNIFICANCE, *ablation.BAR_METRICS, *STAT_COLUMNS] if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]  # the metrics first, then the setting


def parse_metric(value: object) -> str:
    if value not in METRICS:
        raise QueryError(f"Metric must be one of {', '.join(METRICS)}; got {str(value)[:40]!r}.")
    return str(value)


def _drawn(ctx: DemoContext, key: tuple, make) -> str:
    """The figure ``make()`` returns, as a cached file; a table the figure code cannot read is a message."""
    def draw() -> str:
        try:
            return figure_file(ctx, make)
        except (KeyError, ValueError, TypeError) as exc:
            raise QueryError(f"{CSV_NAME} cannot be drawn ({type(exc).__name__}: {exc}); is it a table written by "
                             "`python -m analysis ablation`?") from None

    return cache_of(ctx, DRAWINGS, DRAWINGS_SIZE).get_or_make(key, draw)


def bars(ctx: DemoContext, key: tuple, study: Study, metric: str) -> str:
    cols = [m for m in METRICS[metric] if m in study.table.columns]
    if not cols:
        raise QueryError(f"This table has no {metric} column; choose another metric.")
    layout = screen_layout()
    return _drawn(ctx, (key, "bars", metric, layout.name),
                  lambda: ablation.bars_figure(study.table, cols, layout=layout))


def _queries(folder: Path) -> Optional[int]:
    """The number of test queries behind the study (rows of its first per-query file), when it has one."""
    files = [f for fs in ablation.per_query_in(folder / "per_query").values() for f in fs][:1]
    if not files or files[0].stat().st_size > 64 * 2**20:
        return None
    try:
        return stats.read_per_query_csv(files[0]).num_queries
    except ValueError:  # not a per-query file: the study's table check names it
        return None


def split_note(study: Study) -> str:
    """Which split the numbers are on, with how many queries, and why they differ from the model card's."""
    df = study.table
    splits = sorted({str(v) for v in df["eval_split"].dropna()}) if "eval_split" in df.columns else []
    n = _queries(study.folder)
    on = f"the **{'/'.join(splits) or 'test'}** split of the data the study trained on" + (
        f" ({n:,} queries)" if n else "")
    card = read_card().get("metrics", {}).get("zero-shot", {})
    zero = df.loc[df["variant"] == "zero-shot", "R1"] if "variant" in df.columns and "R1" in df.columns else []
    if card.get("queries") and len(zero):
        return (f"Scores on {on}: not the model card's evaluation (the larger test-large split, "
                f"{card['queries']:,} queries), which is why zero-shot R@1 is {float(zero.iloc[0]):.1f} here and "
                f"{card['R1']:.2f} in the README's results table.")
    return f"Scores on {on}."


_TEMP_PATH = re.compile(r"(--[\w-]+)(\s+|=)(/(?:tmp|var/tmp|home|root|Users)/\S*)")


def portable_command(command: str) -> str:
    """``command`` with the paths of the machine that made the study (``/tmp/...``, home folders) replaced by
    placeholders named after their option (``--data-root DATA_ROOT``)."""
    return _TEMP_PATH.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(1)[2:].upper().replace('-', '_')}", command)


def notes(study: Study, folder_given: bool) -> str:
    df = study.table
    where = "the shipped study (assets/ablation)" if not folder_given else f"folder {esc(study.folder)}"
    lines = [f"**{len(df)} variants** from {where}.", split_note(study)]
    lines += [f"> ⚠️ {esc(why)}." for why in study.left_out]
    if ablation.has_intervals(df):
        lines.append("Uncertainty: means over seeds; 95 % bootstrap intervals over test queries; *vs UP-Person* "
                     "marks a paired R@1 difference whose interval excludes zero (`* significant`).")
    else:
        lines.append("This table has no uncertainty columns (one seed, no per-query results): differences of a "
                     "few points may be noise.")
    return "\n\n".join(lines)


def phone_curves(study: Study):
    """(figure, caption) of the study's training curves drawn for a phone (``ablation_curves.png`` is a
    desktop figure, unreadable 326 px wide), from its ``curves/*.jsonl``; ValueError when none is usable."""
    labels = dict(zip(study.table["variant"], study.table["label"])) if "label" in study.table.columns else {}
    order = {v: i for i, v in enumerate(study.table["variant"])}
    runs = []
    for variant, data in sorted(study.logs, key=lambda x: order.get(x[0], len(order))):
        df = pd.read_json(io.StringIO(data.decode("utf-8", errors="replace")), lines=True)
        if not df.empty and "epoch" in df.columns:
            runs.append((str(labels.get(variant, variant)), df.sort_values("epoch").reset_index(drop=True)))
    return training_curves_figure(runs, title="Ablation: training curves per variant", layout=style.PHONE)


def show(ctx: DemoContext, folder, metric):
    """(table, bars, params figure, curves figure, command, notes) -- the ``/ablation`` action."""
    m = parse_metric(metric)
    key, study = load_study(ctx, folder)
    layout = screen_layout()
    params = _drawn(ctx, (key, "params", layout.name), lambda: ablation.params_figure(study.table, layout=layout))
    curves = png_file(ctx, study.curves) if study.curves else None
    if layout.narrow and study.logs:
        try:
            curves = _drawn(ctx, (key, "curves", layout.name), lambda: phone_curves(study))
        except QueryError as exc:  # logs the figure code cannot read: the folder's own PNG, as on a desktop
            log.warning("ablation folder %s: curves not drawn for a phone (%s)", study.folder, exc)
    command = portable_command(study.command) if study.command else \
        "(the folder has no README.md with the command that made it)"
    if command != study.command and study.command:
        command += "\n# DATA_ROOT, RUNS_DIR, ...: your own folders (the study's were on the machine that made it)"
    given = isinstance(folder, str) and bool(folder.strip())
    return shown_table(study.table), bars(ctx, key, study, m), params, curves, command, notes(study, given)


#: the columns a phone's card shows per variant (column -> label); the interval columns go with their metric
CARD_METRICS = {"R1": "R@1", "mAP": "mAP", "R5": "R@5", "R10": "R@10", "mINP": "mINP"}


def _number(value: object, digits: int = 1) -> str:
    v = _num(value)
    return "-" if not math.isfinite(v) else f"{v:,.{digits}f}"


def table_cards(df: pd.DataFrame) -> str:
    """The shown table as one card per variant (HTML, every value escaped): how a phone shows it, with the
    main metrics and their 95 % intervals, the parameters and the seeds; every column is in the table."""
    cards = []
    for _, row in df.iterrows():
        items = []
        for col, name in CARD_METRICS.items():
            if col not in df.columns:
                continue
            text = _number(row[col])
            lo, hi = row.get(f"{col}_ci_low"), row.get(f"{col}_ci_high")
            if math.isfinite(_num(lo)) and math.isfinite(_num(hi)):
                text += f" [{_number(lo)}, {_number(hi)}]"
            items.append((name, text))
        if "trainable_params" in df.columns:
            items.append(("trainable", _number(row["trainable_params"], 0)))
        if "seeds" in df.columns and math.isfinite(_num(row.get("seeds"))):
            items.append(("seeds", _number(row["seeds"], 0)))
        mark = row.get(SIGNIFICANCE)
        label, variant = html.escape(str(row.get("label", ""))), html.escape(str(row.get("variant", "")))
        head = f"<b>{label}</b> <code>{variant}</code>"
        if isinstance(mark, str) and mark not in ("", "-", "reference"):
            head += f" · {html.escape(mark)} vs UP-Person"
        body = "".join(f"<div><dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd></div>" for k, v in items)
        cards.append(f'<div class="ablation-card">{head}<dl>{body}</dl></div>')
    note = ("<p><i>One card per variant (R@1 and mAP with their 95 % intervals in brackets); every column of "
            "ablation.csv is in the table on a wider screen.</i></p>")
    return note + "".join(cards)


def build_ablation_tab(ctx: DemoContext, ui: SharedUI) -> None:
    """The Ablation tab's components and events (inside ``with gr.Tab(...)``)."""
    tabs = opened_by()  # the tabs whose opening shows this view: it opens on the shipped study
    gr.Markdown("The per-component ablation (`python -m analysis ablation`): every variant and metric, the "
                "figures, and the command that reproduces the study.")
    roots = ", ".join(map(str, ctx.allow_roots))
    with gr.Row():
        folder = gr.Textbox(label="Ablation folder (empty: the shipped study" + (f"; or a folder under {roots})"
                            if roots else "; start with --allow-root DIR to choose one)"), elem_id="ablation-folder",
                            scale=3)
        metric = lenient_dropdown([(("R@1 and mAP (as the CLI)" if k == CLI_METRICS else ablation.BAR_METRICS[k]), k)
                         for k in METRICS], value=CLI_METRICS, label="Metric", elem_id="ablation-metric", scale=1)
        run = gr.Button("Show the study", variant="primary", elem_id="ablation-run", scale=1)
    info = gr.Markdown(elem_id="ablation-info", latex_delimiters=[])
    table = gr.Dataframe(label="ablation.csv", interactive=False, wrap=True, elem_id="ablation-table")
    cards = gr.HTML(elem_id="ablation-cards")  # the table on a phone (demo.app's CSS shows one or the other)
    with gr.Row():
        bar_fig = figure_image("Retrieval per variant", "ablation-bars")
        params_fig = figure_image("R@1 against trainable parameters", "ablation-params")
    curves_fig = figure_image("Training curves", "ablation-curves")
    command = gr.Code(label="Reproduce the study", language="shell", interactive=False, elem_id="ablation-command",
                      lines=2)

    def ablation_study(folder_path, metric_name):
        """The ablation table (every variant and metric), its figures and the command that made it."""
        try:
            return show(ctx, folder_path, metric_name)
        except QueryError as exc:
            raise user_error(exc) from None

    def redraw(folder_path, metric_name):
        """The metric changed: redraw the bars (only)."""
        try:
            key, study = load_study(ctx, folder_path)
            return bars(ctx, key, study, parse_metric(metric_name))
        except QueryError as exc:
            raise user_error(exc) from None

    outputs = [table, bar_fig, params_fig, curves_fig, command, info]
    in_view = in_page(ablation_study, 6, 5)

    def page_study(folder_path, metric_name):
        """The study in the page: the API's outputs, and the table as cards for a phone."""
        out = in_view(folder_path, metric_name)
        return (*out, table_cards(out[0]) if isinstance(out[0], pd.DataFrame) else "")

    def on_open(folder_path, metric_name, shown):
        """The tab was opened: show the shipped study (or the folder typed), once."""
        return (gr.skip(),) * 7 if shown is not None else page_study(folder_path, metric_name)

    def page_redraw(folder_path, metric_name):
        try:
            return redraw(folder_path, metric_name), gr.skip()
        except gr.Error as exc:
            return gr.skip(), f"ℹ️ {exc.message}"

    run.click(page_study, [folder, metric], outputs + [cards], api_visibility="private")
    hidden_api(ablation_study, [folder, metric], outputs, "ablation")
    folder.submit(page_study, [folder, metric], outputs + [cards], api_visibility="private")
    metric.change(page_redraw, [folder, metric], [bar_fig, info], api_visibility="private")
    for tab in tabs:
        tab.select(on_open, [folder, metric, params_fig], outputs + [cards], api_visibility="private")
