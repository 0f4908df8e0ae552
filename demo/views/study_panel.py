"""The panel the Studies views share: a study folder box and its button, the study's notes and
figure, and (Transfer, Budget) a dropdown of the study's items with the chosen one's notes.

Each view keeps its own reading and drawing (``show``, ``show_item``); this module builds the
components, their element ids (``<key>-folder``, ``<key>-run``, ``<key>-info``, ...) and their
events: the page's own (a refusal is one message in the notes, :func:`demo.views.common.in_page`),
the API's (``/<key>``, ``/<key>_<item>``, :func:`demo.views.common.hidden_api`) and the tab's
(the study shown when its tab opens, once).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import gradio as gr

from demo.markup import text as esc
from demo.search import QueryError
from demo.views.common import figure_image, hidden_api, in_page, lenient_dropdown, opened_by, user_error


def readme_command(readme: str) -> str:
    """The command a study's README says made it: its first fenced code block (the ablation's and
    the budget's ``write_readme`` put the exact command there), else "" (unknown)."""
    m = re.search(r"^```[^\n]*\n(.*?)^```", readme, flags=re.S | re.M)
    return m.group(1).strip() if m else ""


def made_by(command: str) -> str:
    """The notes' line of the command that made a study, folded (it runs to a dozen lines on a phone),
    escaped; "" when unknown."""
    if not command:
        return ""
    return f"<details><summary><b>Made by</b> (the command)</summary>\n\n{esc(command)}\n\n</details>"


def folder_row(key: str, label: str) -> tuple[gr.Textbox, gr.Button]:
    """The study folder box (empty: the default study) and its button."""
    with gr.Row():
        folder = gr.Textbox(label=f"{label} folder (empty: the default study)", elem_id=f"{key}-folder", scale=3)
        run = gr.Button("Show the study", variant="primary", elem_id=f"{key}-run", scale=1)
    return folder, run


def api_action(fn: Callable[..., tuple], name: str, doc: str) -> Callable[..., tuple]:
    """``fn`` as an API action named ``name`` (its docstring ``doc``: Gradio shows it): a
    QueryError becomes the visitor's one escaped message."""
    def action(*args):
        try:
            return fn(*args)
        except QueryError as exc:
            raise user_error(exc) from None

    action.__name__ = action.__qualname__ = name
    action.__doc__ = doc
    return action


@dataclass(frozen=True)
class ItemsView:
    """What differs between the views of a study with items (Transfer: cells; Budget: points)."""

    key: str  # "transfer": element ids transfer-..., the API /transfer and /transfer_<item>
    intro: str  # the view's first paragraph (Markdown)
    label: str  # "Transfer": the folder box's label
    figure_label: str
    figure_id: str  # element id suffix of the figure: transfer-matrix
    item: str  # "cell": the dropdown transfer-cell, its notes transfer-cell-info, the API /transfer_cell
    item_label: str
    json_label: str  # the accordion of the JSON outputs
    item_json_id: str  # element id suffix of the chosen item's JSON: transfer-examples-json
    doc: str  # the study action's docstring
    item_doc: str  # the item action's docstring


def build_items_view(view: ItemsView, show: Callable[[object], tuple], show_item: Callable[[object, object], tuple],
                     first: Callable[[Sequence[dict]], Optional[str]]) -> None:
    """The view's components and events (inside its ``with gr.Tab(...)``). ``show(folder)`` ->
    (figure, notes, items: dicts with the item's name under ``view.item``); ``show_item(folder,
    name)`` -> (notes, JSON); ``first(items)``: the item chosen when the study is shown."""
    tabs = opened_by()
    gr.Markdown(view.intro)
    folder, run = folder_row(view.key, view.label)
    info = gr.Markdown(elem_id=f"{view.key}-info", latex_delimiters=[])
    figure = figure_image(view.figure_label, f"{view.key}-{view.figure_id}")
    item = lenient_dropdown([], label=view.item_label, elem_id=f"{view.key}-{view.item}")
    item_info = gr.Markdown(elem_id=f"{view.key}-{view.item}-info", latex_delimiters=[])
    with gr.Accordion(view.json_label, open=False):
        items_json = gr.JSON(elem_id=f"{view.key}-json")
        item_json = gr.JSON(elem_id=f"{view.key}-{view.item_json_id}")

    study = api_action(show, view.key, view.doc)
    one = api_action(show_item, f"{view.key}_{view.item}", view.item_doc)
    in_view, item_in_view = in_page(study, 3, 1), in_page(one, 2, 0)

    def page(folder_path):
        fig, text, known = in_view(folder_path)
        names = [k[view.item] for k in known or []]
        chosen = first(known or []) if names else None
        detail, numbers = item_in_view(folder_path, chosen) if chosen else ("", None)
        return fig, text, known, gr.Dropdown(choices=names, value=chosen), detail, numbers

    def on_open(folder_path, shown):
        return (gr.skip(),) * 6 if shown is not None else page(folder_path)

    outs = [figure, info, items_json, item, item_info, item_json]
    run.click(page, [folder], outs, api_visibility="private")
    folder.submit(page, [folder], outs, api_visibility="private")
    hidden_api(study, [folder], [figure, info, items_json], view.key)
    item.input(item_in_view, [folder, item], [item_info, item_json], api_visibility="private")
    hidden_api(one, [folder, item], [item_info, item_json], f"{view.key}_{view.item}")
    for tab in tabs:
        tab.select(on_open, [folder, items_json], outs, api_visibility="private")
