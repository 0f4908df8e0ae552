"""The Transfer view: the transfer matrix of ``python -m analysis transfer``, and one cell at a time.

Reads a study folder through :mod:`demo.views.study_files` (the shipped ``assets/transfer``, or a
``--studies`` folder): ``transfer.csv`` and ``transfer_summary.json`` as the CLI wrote them. The
matrix is drawn by the CLI's own function (:func:`analysis.transfer.figure.transfer_matrix_figure`,
for the visitor's screen). Choosing a cell shows its paired difference UP-Person - full fine-tune
with its interval (the CSV's), and example queries where the two methods disagree: one ranks the
true person first, the other does not (over the seeds: every seed of one at rank 1, none of the
other's). The examples are computed here from the cell's per-query files (those the matrix row
names); the files carry no caption text, so a caption is shown from the study's
``example_captions.json`` (the command writes the texts of these queries), else from one of the
app's galleries that holds a caption with the same key, else by its key.

``/transfer`` (folder) -> (figure, notes, cells); ``/transfer_cell`` (folder, cell) -> (notes, examples).
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from analysis.transfer.examples import EXAMPLE_CAPTIONS, MAX_EXAMPLES
from analysis.transfer.examples import disagreements as cell_disagreements
from analysis.transfer.figure import transfer_matrix_figure
from analysis.transfer.plan import FULL, LABELS, METHODS, UPPERSON
from demo.context import DemoContext, SharedUI
from demo.markup import text as esc
from demo.search import QueryError
from demo.views.common import cache_of, figure_with_caption, screen_layout
from demo.views.study_files import (MAX_PER_QUERY_BYTES, StudyFiles, StudyMissing, refuse_cut_short,
                                    require_filled)
from demo.views.study_panel import ItemsView, build_items_view, made_by
from upperson import stats

log = logging.getLogger(__name__)

KIND = "transfer"
TABLE, SUMMARY = "transfer.csv", "transfer_summary.json"
COMMAND = "python -m analysis transfer"
NUMBERS = ("seeds", "queries", "R1", "R1_ci_low", "R1_ci_high")  # on every row (R1_diff: UP-Person's only)
NEEDED = ("method", "source", "target", "R1", "R1_ci_low", "R1_ci_high", "R1_diff", "R1_diff_ci_low",
          "R1_diff_ci_high", "per_query")
STUDIES, DRAWINGS = "transfer-studies", "transfer-drawings"


@dataclass(frozen=True)
class TransferStudy:
    folder: Path
    table: pd.DataFrame
    summary: dict  # transfer_summary.json ({} when the folder has none)
    captions: dict  # example_captions.json: caption text by key of the cells' example queries ({} when none)


def cell_name(source: str, target: str) -> str:
    return f"{source}->{target}"


def load(ctx: DemoContext, folder: object) -> tuple[tuple, TransferStudy]:
    """(cache key, study) of a transfer folder; QueryError (StudyMissing for the default) otherwise."""
    files = StudyFiles(ctx.study_roots)
    path = files.folder(KIND, folder)
    key = files.stamp(path, (TABLE, SUMMARY, EXAMPLE_CAPTIONS))

    def make() -> TransferStudy:
        df = files.read_csv(KIND, path, TABLE, remade_by=COMMAND)
        missing = [c for c in NEEDED if c not in df.columns]
        if missing or df.empty:
            raise QueryError(f"{TABLE} is not a transfer matrix written by `python -m analysis transfer` "
                             f"({'no column ' + repr(missing[0]) if missing else 'no rows'}).")
        bad = sorted(set(df["method"].astype(str)) - set(METHODS))
        if bad:
            raise QueryError(f"{TABLE}: unknown method {bad[0][:40]!r}; known: {', '.join(METHODS)}.")
        require_filled(df, TABLE, COMMAND, [c for c in NUMBERS if c in df.columns],
                       [c for c in ("per_query", "runs") if c in df.columns])  # runs: the last column
        summary: dict = {}
        if (path / SUMMARY).is_file():
            try:
                summary = json.loads(files.read_bytes(KIND, path, SUMMARY, 2**20).decode("utf-8"))
            except (QueryError, ValueError) as exc:
                log.warning("transfer folder %s: %s not read (%s)", path, SUMMARY, exc)
        summary = summary if isinstance(summary, dict) else {}
        _every_cell_has_rows(df, summary)
        return TransferStudy(path, df, summary, _example_captions(files, path))

    return key, cache_of(ctx, STUDIES, 8).get_or_make(key, make)


def _example_captions(files: StudyFiles, path: Path) -> dict[str, str]:
    """The study's caption texts of its example queries (strings only; {} when the file is absent or unreadable)."""
    if not (path / EXAMPLE_CAPTIONS).is_file():
        return {}
    try:
        data = json.loads(files.read_bytes(KIND, path, EXAMPLE_CAPTIONS, 2**20).decode("utf-8"))
    except (QueryError, ValueError) as exc:
        log.warning("transfer folder %s: %s not read (%s)", path, EXAMPLE_CAPTIONS, exc)
        return {}
    texts = data.get("captions") if isinstance(data, dict) else None
    return {k: v for k, v in texts.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(texts, dict) else {}


def _every_cell_has_rows(df: pd.DataFrame, summary: dict) -> None:
    """QueryError when a method of the table lacks a row of a cell that the summary lists (whole rows lost)."""
    listed = summary.get("cells")
    if not isinstance(listed, list):
        return
    have = set(zip(df["method"].astype(str), df["source"].astype(str), df["target"].astype(str)))
    for method in dict.fromkeys(df["method"].astype(str)):
        for cell in listed:
            source, _, target = str(cell).partition("->")
            if (method, source, target) not in have:
                raise QueryError(f"{TABLE} has no row of {LABELS.get(method, method)} for the cell {str(cell)[:60]} "
                                 f"that {SUMMARY} lists; the table looks cut short (an interrupted run?): run "
                                 f"`{COMMAND}` again, or give another folder.")


def _gaps(study: TransferStudy) -> Optional[dict]:
    g = study.summary.get("gaps")
    return g if isinstance(g, dict) and "R1" in g else None


def _num(v: object) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _interval(v: object, lo: object, hi: object, signed: bool = False) -> str:
    if not math.isfinite(_num(v)):
        return "n/a"
    f = "+.1f" if signed else ".1f"
    return f"{_num(v):{f}} [{_num(lo):.1f}, {_num(hi):.1f}]"


def cells(study: TransferStudy) -> list[dict]:
    """Every cell with both methods (a paired difference): its name and numbers, in the matrix's order."""
    out = []
    for r in study.table[study.table["method"] == UPPERSON].itertuples():
        if not math.isfinite(_num(r.R1_diff)):
            continue
        out.append({"cell": cell_name(str(r.source), str(r.target)), "source": str(r.source),
                    "target": str(r.target), "in_domain": str(r.source) == str(r.target),
                    "R1_diff": _num(r.R1_diff), "R1_diff_ci_low": _num(r.R1_diff_ci_low),
                    "R1_diff_ci_high": _num(r.R1_diff_ci_high),
                    "significant": str(getattr(r, "R1_diff_significant", "")).strip().lower() == "true"})
    return out


def notes(study: TransferStudy, given: bool) -> str:
    df = study.table
    where = f"folder {esc(study.folder)}" if given else f"{esc(study.folder.parent.name)}/{esc(study.folder.name)}"
    sources, targets = list(dict.fromkeys(df["source"].astype(str))), list(dict.fromkeys(df["target"].astype(str)))
    lines = [f"**Transfer matrix** from {where}: {len(sources)} source(s) ({esc(', '.join(sources))}) × "
             f"{len(targets)} target(s) ({esc(', '.join(targets))}), {len(df)} rows.",
             "Each cell: R@1 with its 95 % bootstrap interval over the target's test queries; right: the paired "
             "difference UP-Person − full fine-tune. Choose a cell below for its queries."]
    line = study.summary.get("summary")
    if isinstance(line, str) and line:
        lines.append(f"**Summary:** {esc(line)}")
    for bad in study.summary.get("diagonal_mismatches") or []:
        lines.append(f"> ⚠️ in-domain cell differs from its run's results: {esc(bad)}")
    command = study.summary.get("command")
    if isinstance(command, str) and command:
        lines.append(made_by(command))
    return "\n\n".join(lines)


def _drawn(ctx: DemoContext, key: tuple, study: TransferStudy) -> tuple[str, str]:
    """(figure file, caption) for the visitor's screen (cached per study and layout)."""
    layout = screen_layout()

    def draw() -> tuple[str, str]:
        try:
            return figure_with_caption(ctx, lambda: transfer_matrix_figure(study.table, _gaps(study), layout=layout))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise QueryError(f"{TABLE} cannot be drawn ({type(exc).__name__}: {exc}).") from None

    return cache_of(ctx, DRAWINGS, 16).get_or_make((key, layout.name), draw)


def show(ctx: DemoContext, folder: object):
    """(figure, notes, cells) -- the ``/transfer`` action; the default study missing is a note, not an error."""
    try:
        key, study = load(ctx, folder)
    except StudyMissing as exc:
        return None, f"ℹ️ {esc(exc)}", []
    given = isinstance(folder, str) and bool(folder.strip())
    fig, caption = _drawn(ctx, key, study)
    return fig, notes(study, given) + f"\n\n**Figure:** {esc(caption)}", cells(study)


def _row(study: TransferStudy, method: str, source: str, target: str) -> Optional[pd.Series]:
    df = study.table
    m = df[(df["method"] == method) & (df["source"].astype(str) == source) & (df["target"].astype(str) == target)]
    return None if m.empty else m.iloc[0]


def _per_query(ctx: DemoContext, study: TransferStudy, row: pd.Series) -> list[pd.DataFrame]:
    """The row's per-query files (one per seed), read through the allow-list, in the CSV's order."""
    files = StudyFiles(ctx.study_roots)
    names = [n for n in str(row["per_query"]).split(";") if n.strip()]
    if not names:
        raise QueryError("this cell names no per-query files; run `python -m analysis transfer` again.")
    out = []
    for n in names:
        data = files.read_bytes(KIND, study.folder, n, MAX_PER_QUERY_BYTES)
        refuse_cut_short(data, n, COMMAND)
        try:
            df = pd.read_csv(io.BytesIO(data), dtype={"caption_key": str})
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise QueryError(f"{n}: cannot be read as a per-query file ({exc}).") from None
        missing = [c for c in ("query_index", "pid", "image_id", "caption_key", "first_rank") if c not in df.columns]
        if missing:
            raise QueryError(f"{n}: not a per-query file (no column {missing[0]!r}).")
        out.append(df[df["first_rank"].notna()].reset_index(drop=True))
    return out


def disagreements(up: list[pd.DataFrame], full: list[pd.DataFrame], limit: int = MAX_EXAMPLES) -> list[dict]:
    """:func:`analysis.transfer.examples.disagreements` (the command's own), its error for the visitor."""
    try:
        return cell_disagreements(up, full, limit)
    except ValueError as exc:
        raise QueryError(str(exc)) from None


def caption_texts(ctx: DemoContext, keys: set[str]) -> dict[str, str]:
    """Caption text by key, from the galleries the app holds now (a target's captions only if it is one)."""
    found: dict[str, str] = {}
    for gi in list(ctx.engine.galleries.values()):
        for item in gi.gallery.items:
            for c in item.captions:
                k = stats.caption_key(c)
                if k in keys:
                    found[k] = c
    return found


def parse_cell(study: TransferStudy, cell: object) -> dict:
    known = cells(study)
    for c in known:
        if c["cell"] == cell:
            return c
    names = ", ".join(c["cell"] for c in known) or "none (no cell has both methods)"
    raise QueryError(f"Cell must be one of {names}; got {str(cell)[:40]!r}.")


def show_cell(ctx: DemoContext, folder: object, cell: object):
    """(notes, examples) of one cell -- the ``/transfer_cell`` action."""
    try:
        _, study = load(ctx, folder)
    except StudyMissing as exc:
        return f"ℹ️ {esc(exc)}", []
    c = parse_cell(study, cell)
    s, t = c["source"], c["target"]
    up, full = _row(study, UPPERSON, s, t), _row(study, FULL, s, t)
    sig = "its interval excludes 0" if c["significant"] else "its interval includes 0: no difference shown"
    lines = [f"**{esc(s)} → {esc(t)}** ({'in-domain' if c['in_domain'] else 'cross-domain'}; "
             f"{int(_num(up.get('queries'))) if math.isfinite(_num(up.get('queries'))) else '?'} test queries)",
             f"UP-Person − full fine-tune, R@1: **{_interval(c['R1_diff'], c['R1_diff_ci_low'], c['R1_diff_ci_high'], True)}**"
             f" points (95 % paired bootstrap; {sig})" + (
                 f"; mAP {_interval(up.get('mAP_diff'), up.get('mAP_diff_ci_low'), up.get('mAP_diff_ci_high'), True)}"
                 if "mAP_diff" in up else "") + "."]
    for m in METHODS:
        r = _row(study, m, s, t)
        if r is not None:
            seeds = _num(r.get("seeds"))
            lines.append(f"- {LABELS[m]}: R@1 {_interval(r['R1'], r['R1_ci_low'], r['R1_ci_high'])}"
                         + (f" · {int(seeds)} seed(s)" if math.isfinite(seeds) else ""))
    examples = disagreements(_per_query(ctx, study, up), _per_query(ctx, study, full))
    keys = {e["caption_key"] for e in examples}
    texts = {**caption_texts(ctx, keys - set(study.captions)), **study.captions}
    for e in examples:
        e["caption"] = texts.get(e["caption_key"])
    if not examples:
        lines.append("No query where one method ranks the true person first (on every seed) and the other does not.")
    else:
        lines.append(f"**Queries where they disagree** (at most {MAX_EXAMPLES} each way; rank of the true person, "
                     "per seed):")
        for e in examples:
            what = f"“{esc(e['caption'])}”" if e["caption"] else f"caption key {esc(e['caption_key'])}"
            lines.append(f"- {esc(e['right'])} right: query {e['query_index']} · id {esc(e['pid'])} · image "
                         f"{esc(e['image_id'])} · {what} · UP-Person rank {'/'.join(map(str, e['upperson_ranks']))}, "
                         f"full fine-tune rank {'/'.join(map(str, e['full_finetune_ranks']))}")
        if any(not e["caption"] for e in examples):
            lines.append(f"The per-query files carry no caption text, and this study's {EXAMPLE_CAPTIONS} (written "
                         f"by `{COMMAND}`) lacks these queries; a caption shows as text when the app holds a gallery "
                         "with it, else by its key.")
    return "\n\n".join(lines), examples


VIEW = ItemsView(
    key="transfer", label="Transfer", figure_label="Transfer matrix", figure_id="matrix",
    intro=("The cross-domain transfer study (`python -m analysis transfer`): each method trained on a source "
           "domain and tested on every target. Choose a cell for its paired difference and its queries."),
    item="cell", item_label="Cell (source -> target)", json_label="The cells and examples as JSON",
    item_json_id="examples-json",
    doc="The transfer matrix (figure), notes and the cells with a paired difference.",
    item_doc="One cell: its paired difference with its interval, and queries where the two methods disagree.")


def build_transfer_tab(ctx: DemoContext, ui: SharedUI) -> None:
    """The Transfer tab's components and events (inside ``with gr.Tab(...)``)."""
    build_items_view(VIEW, lambda folder: show(ctx, folder), lambda folder, cell: show_cell(ctx, folder, cell),
                     lambda cells: cells[0]["cell"] if cells else None)
