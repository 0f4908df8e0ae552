"""The Probe view: the attribute-binding probe's results (``python -m analysis binding``).

Reads a study folder through :mod:`demo.views.study_files` (the shipped ``assets/binding``, or a
``--studies`` folder): ``binding.csv`` and ``binding_attributes.csv`` read back by the CLI's own
reader (:func:`analysis.binding.output.parse_tables`) and drawn by its own figure function
(:func:`analysis.binding.output.draw_binding_figure`, for the visitor's screen). The tables are
shown as lists (one line per probe or attribute), which wrap on a phone.

``/probe`` (folder) -> (figure, notes, results).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from analysis.binding.output import ATTRIBUTES_CSV, PAIRS_CSV, README, ProbeResult, draw_binding_figure, parse_tables
from analysis.binding.scoring import Accuracy
from demo.context import DemoContext, SharedUI
from demo.markup import text as esc
from demo.search import QueryError
from demo.views.common import (cache_of, figure_image, figure_with_caption, hidden_api, in_page, opened_by,
                               screen_layout)
from demo.views.study_files import StudyFiles, StudyMissing, refuse_cut_short
from demo.views.study_panel import api_action, folder_row

log = logging.getLogger(__name__)

KIND = "probe"
STUDIES, DRAWINGS = "probe-studies", "probe-drawings"
MAX_BYTES = 16 * 2**20


@dataclass(frozen=True)
class ProbeStudy:
    folder: Path
    results: tuple[ProbeResult, ...]
    attributes: dict  # model -> attribute -> Accuracy
    command: str  # from the README ("" when unknown)
    setting: tuple[str, ...] = ()  # the README's setting lines (the pairs: which domain; the per-attribute data)


def load(ctx: DemoContext, folder: object) -> tuple[tuple, ProbeStudy]:
    files = StudyFiles(ctx.study_roots)
    path = files.folder(KIND, folder)
    key = files.stamp(path, (PAIRS_CSV, ATTRIBUTES_CSV, README))

    def make() -> ProbeStudy:
        def text(name: str) -> str:
            data = files.read_bytes(KIND, path, name, MAX_BYTES)
            if name != README:
                refuse_cut_short(data, name, "python -m analysis binding")
            return data.decode("utf-8", errors="replace")

        attrs = text(ATTRIBUTES_CSV) if (path / ATTRIBUTES_CSV).is_file() else None
        try:
            results, attributes = parse_tables(text(PAIRS_CSV), attrs)
        except ValueError as exc:
            raise QueryError(f"{exc}; is it a folder written by `python -m analysis binding`?") from None
        command, setting = "", ()
        if (path / README).is_file():
            readme = text(README)
            m = re.search(r"^`([^`\n]+)`$", readme, flags=re.M)  # write_readme: the command, in backticks
            command = m.group(1) if m else ""
            setting = tuple(f"{k}: {v}" for k, v in re.findall(r"^- (pairs|per-attribute data): (.+)$", readme, re.M))
        return ProbeStudy(path, tuple(results), attributes, command, setting)

    return key, cache_of(ctx, STUDIES, 8).get_or_make(key, make)


def _acc(a: Accuracy) -> str:
    return f"{a.value:.1f} [{a.low:.1f}, {a.high:.1f}]"


def _setting_lines(setting: tuple[str, ...]) -> list[str]:
    """Each README setting line (``pairs: ...``, ``per-attribute data: ...``) under its own label, escaped."""
    out = []
    for line in setting:
        label, _, value = line.partition(": ")
        out.append(f"**{esc(label[:1].upper() + label[1:])}:** {esc(value)}")
    return out


def notes(study: ProbeStudy, given: bool) -> str:
    where = f"folder {esc(study.folder)}" if given else f"{esc(study.folder.parent.name)}/{esc(study.folder.name)}"
    models = list(dict.fromkeys(r.model for r in study.results))
    lines = [f"**Attribute-binding probe** from {where}: {len(models)} model(s): {esc(', '.join(models))}.",
             *_setting_lines(study.setting),
             "**Minimal pairs** (accuracy %, 95 % interval; chance 50: the model cannot tell the pair apart):"]
    for name in dict.fromkeys(r.name for r in study.results):
        rows = [r for r in study.results if r.name == name]
        lines.append(f"- **{esc(name)}** ({rows[0].accuracy.n} pairs): "
                     + " · ".join(f"{esc(r.model)} {_acc(r.accuracy)}" for r in rows))
    diffs = [r for r in study.results if r.diff is not None]
    if diffs:
        lines.append("**Differences on the same pairs** (points, paired bootstrap 95 % interval):")
        for r in diffs:
            d = r.diff
            lines.append(f"- {esc(r.name)}: {esc(r.model)} − {esc(r.versus)} {d.value:+.1f} [{d.low:+.1f}, "
                         f"{d.high:+.1f}]" + (" (significant)" if d.significant else " (interval includes 0)"))
    if study.attributes:
        lines.append("**Per attribute** (share of queries whose top-1 other identity has the query's value, %; "
                     "chance in brackets after the name):")
        fields = list(dict.fromkeys(f for per in study.attributes.values() for f in per))
        for f in fields:
            first = next(per[f] for per in study.attributes.values() if f in per)
            lines.append(f"- **{esc(f)}** (chance {first.chance:.1f}): " + " · ".join(
                f"{esc(m)} {_acc(per[f])}" for m, per in study.attributes.items() if f in per))
    if study.command:
        lines.append(f"**Made by:** {esc(study.command)}")
    return "\n\n".join(lines)


def as_json(study: ProbeStudy) -> dict:
    return {"pairs": [{"model": r.model, "probe": r.probe, "side": r.side, **vars(r.accuracy),
                       **({"versus": r.versus, "diff": vars(r.diff)} if r.diff else {})} for r in study.results],
            "attributes": {m: {f: vars(a) for f, a in per.items()} for m, per in study.attributes.items()}}


def show(ctx: DemoContext, folder: object):
    """(figure, notes, results) -- the ``/probe`` action; the default study missing is a note, not an error."""
    try:
        key, study = load(ctx, folder)
    except StudyMissing as exc:
        return None, f"ℹ️ {esc(exc)}", {}
    layout = screen_layout()

    def draw() -> tuple[str, str]:
        try:
            return figure_with_caption(ctx, lambda: draw_binding_figure(list(study.results), study.attributes,
                                                                        layout=layout))
        except (KeyError, ValueError, TypeError) as exc:
            raise QueryError(f"{PAIRS_CSV} cannot be drawn ({type(exc).__name__}: {exc}).") from None

    fig, caption = cache_of(ctx, DRAWINGS, 16).get_or_make((key, layout.name), draw)
    given = isinstance(folder, str) and bool(folder.strip())
    return fig, notes(study, given) + f"\n\n**Figure:** {esc(caption)}", as_json(study)


def build_probe_tab(ctx: DemoContext, ui: SharedUI) -> None:
    """The Probe tab's components and events (inside ``with gr.Tab(...)``)."""
    tabs = opened_by()
    gr.Markdown("Does the model bind attributes to the right garment or object? (`python -m analysis binding`): "
                "minimal pairs that differ in one binding only, and per-attribute top-1 accuracy.")
    folder, run = folder_row("probe", "Probe")
    figure = figure_image("Attribute-binding probe", "probe-figure")
    info = gr.Markdown(elem_id="probe-info", latex_delimiters=[])
    with gr.Accordion("The results as JSON", open=False):
        results_json = gr.JSON(elem_id="probe-json")

    probe = api_action(lambda folder_path: show(ctx, folder_path), "probe",
                       "The binding probe's figure, its tables as notes, and its results.")
    in_view = in_page(probe, 3, 1)

    def on_open(folder_path, shown):
        return (gr.skip(),) * 3 if shown is not None else in_view(folder_path)

    outs = [figure, info, results_json]
    run.click(in_view, [folder], outs, api_visibility="private")
    folder.submit(in_view, [folder], outs, api_visibility="private")
    hidden_api(probe, [folder], outs, "probe")
    for tab in tabs:
        tab.select(on_open, [folder, results_json], outs, api_visibility="private")
