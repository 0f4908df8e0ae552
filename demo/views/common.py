"""What the views share: input components that let a bad API value reach the handler, a small
thread-safe LRU cache, figures to served files, and the user-facing error.

A bad value from ``gradio_client`` (a layer of ``'abc'``, a count of ``None``) must reach the
view's own parser, which explains what to type; Gradio's own ``preprocess`` would answer with
a bare error. The components made below pass the payload through.
"""

from __future__ import annotations

import html
import threading
import weakref
from collections import OrderedDict
from typing import Callable, Generic, Hashable, Optional, TypeVar

import gradio as gr
from gradio.context import Context, LocalContext

V = TypeVar("V")


def _lenient(component, description: str):
    """``component`` with its input check left to the event function (set on the instance: a subclass
    of a Gradio component would make Gradio write a ``.pyi`` file beside this module)."""
    component.preprocess = lambda payload: payload  # type: ignore[method-assign]
    info = {**component.api_info(), "description": description}
    component.api_info = lambda: info  # type: ignore[method-assign]
    return component


def lenient_dropdown(*args, description: str = "a choice, or any text the handler checks", **kwargs) -> gr.Dropdown:
    """A dropdown whose value (any text or number from the API) reaches the handler unchanged."""
    return _lenient(gr.Dropdown(*args, **kwargs), description)


def lenient_radio(*args, description: str = "one of the choices (checked by the handler)", **kwargs) -> gr.Radio:
    """Radio buttons whose value reaches the handler unchanged (it checks the value itself)."""
    return _lenient(gr.Radio(*args, **kwargs), description)


def lenient_slider(minimum: float, maximum: float, **kwargs) -> gr.Slider:
    """A slider whose value reaches the handler unchanged (``'abc'`` or None included)."""
    return _lenient(gr.Slider(minimum, maximum, **kwargs), f"whole number from {minimum:g} to {maximum:g}")


def in_page(fn: Callable[..., tuple], outputs: int, message_at: int, clear: bool = True) -> Callable[..., tuple]:
    """``fn`` (a view's API action, which raises ``gr.Error``) for the page's own events: a refusal becomes
    one message (escaped) in output ``message_at`` of ``outputs``, the others cleared (or left as they are,
    ``clear=False``), never Gradio's red "Error" badges on every panel."""
    def page(*args):
        try:
            return fn(*args)
        except gr.Error as exc:
            out = [None if clear else gr.skip()] * outputs
            out[message_at] = f"ℹ️ {exc.message}"  # user_error escaped it already
            return tuple(out)

    page.__doc__ = fn.__doc__
    return page


#: the class of every figure image: demo.app's CSS puts its download button above the figure, not over its title
FIGURE_CLASS = "figure"


def figure_image(label: str, elem_id: str) -> gr.Image:
    """A figure (a PNG file the view drew): not editable, no label shown (the figure has its title), a
    download button above it."""
    return gr.Image(label=label, type="filepath", interactive=False, show_label=False, elem_id=elem_id,
                    buttons=["download"], elem_classes=[FIGURE_CLASS])


def hidden_api(fn: Callable, inputs: list, outputs: list, api_name: str) -> None:
    """Register ``fn`` as ``/api_name`` for ``gradio_client`` only (on a button never shown)."""
    gr.Button(visible=False, elem_classes="api-only").click(fn, inputs, outputs, api_name=api_name,
                                                             concurrency_id="engine")


def opened_by() -> list:
    """The tabs whose selection shows the view being built (call inside its ``with gr.Tab(...)``): its own
    tab, and its group's tab when the view is the group's first (``demo.tabs``: opening *Studies* shows
    *Ablation* without a click on it, and Gradio fires no ``select`` for a tab shown that way)."""
    tab = Context.block
    if not isinstance(tab, gr.Tab):
        return []
    out = [tab]
    bar = getattr(tab, "parent", None)
    group = getattr(bar, "parent", None)
    if isinstance(bar, gr.Tabs) and isinstance(group, gr.Tab) and bar.children and bar.children[0] is tab:
        out.append(group)
    return out


def user_error(message: object) -> gr.Error:
    """A ``gr.Error`` the visitor can act on; the message is escaped (it may quote their input)."""
    return gr.Error(html.escape(" ".join(str(message).split()), quote=False), print_exception=False)


class LRU(Generic[V]):
    """A small least-recently-used cache, thread-safe; ``get_or_make`` computes a missing value once
    (concurrent callers of one key wait for the first instead of computing it again)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self._making: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable) -> Optional[V]:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key: Hashable, value: V) -> V:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        hit = self.get(key)
        if hit is not None:
            return hit
        with self._lock:
            lock = self._making.setdefault(key, threading.Lock())
        try:
            with lock:
                hit = self.get(key)
                if hit is None:
                    hit = self.put(key, make())
        finally:
            with self._lock:
                self._making.pop(key, None)
        return hit


_DRAW_LOCK = threading.Lock()  # pyplot's figure registry is global: one drawing at a time

#: the cookie the page sets to the browser window's width (CSS pixels; demo.app.HEAD_SCRIPT)
WIDTH_COOKIE = "upperson_width"
PHONE_MAX_PX = 480  # a window this narrow gets figures drawn for a phone (analysis.style.PHONE)


def screen_layout():
    """The figure layout for the visitor of the current event: ``analysis.style.PHONE`` when the page
    said (cookie :data:`WIDTH_COOKIE`) that its window is at most :data:`PHONE_MAX_PX` wide, else
    ``analysis.style.PAPER`` (the CLI's figure; also for an API client, which sets no cookie)."""
    from analysis import style  # (matplotlib: only once a figure is drawn, not at start-up)

    request = LocalContext.request.get(None)
    cookies = getattr(request, "cookies", None) or {}
    try:
        width = int(str(cookies.get(WIDTH_COOKIE, ""))[:6])
    except ValueError:
        return style.PAPER
    return style.PHONE if 0 < width <= PHONE_MAX_PX else style.PAPER


def figure_file(ctx, make: Callable[[], object]) -> str:
    """Draw ``make()`` (a matplotlib figure, or an analysis ``(figure, caption)`` pair) as the CLI's
    PNG (same size and DPI) into the app's served image folder; returns the file (content-addressed:
    the same figure is one file). Drawings of concurrent requests take turns."""
    from analysis import style

    import matplotlib.pyplot as plt

    with _DRAW_LOCK:
        try:
            made = make()
        except BaseException:
            plt.close("all")  # a figure half made by a failed drawing (only ours are open: we hold the lock)
            raise
        data = style.png_bytes(made[0] if isinstance(made, tuple) else made)
    return png_file(ctx, data)


def figure_with_caption(ctx, make: Callable[[], tuple]) -> tuple[str, str]:
    """:func:`figure_file` of an analysis ``(figure, caption)`` function, and its caption (shown under it)."""
    made: list[str] = []

    def draw():
        fig, caption = make()
        made.append(str(caption))
        return fig, caption

    return figure_file(ctx, draw), made[0]


def png_file(ctx, data: bytes) -> str:
    """PNG bytes into the app's served, content-addressed image folder (``demo.thumbs.ImageFiles``)."""
    return ctx.files.write(data, ".png")  # the content-addressed writer behind ImageFiles.save


_CACHES: "weakref.WeakKeyDictionary[object, dict[str, LRU]]" = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def cache_of(ctx, name: str, size: int) -> LRU:
    """The app's LRU cache ``name`` (one per engine: shared by the visitors of one app, never by two apps)."""
    with _CACHES_LOCK:
        caches = _CACHES.setdefault(ctx.engine, {})
        if name not in caches:
            caches[name] = LRU(size)
        return caches[name]


def view_key(ctx, state) -> tuple:
    """(gallery key, checkpoint, gallery name, images): what a cached result of the visitor's view depends on."""
    s = ctx.valid_state(state)
    g = ctx.gallery(s)
    return (*ctx.cache_key(s), g.name, len(g.items))
