"""One registry of every figure function of ``python -m analysis`` and of the app.

A figure function returns ``(figure, caption)`` unsaved and takes a ``layout`` keyword
(:class:`analysis.style.Layout`: the paper's, or a phone's). It is registered with the
small representative inputs it is checked on, made without a model or training::

    @figure_registry.register(examples=_bars_examples)
    def bars_figure(df, metrics=("R1", "mAP"), *, layout=style.PAPER): ...

``tests/test_figure_text.py`` draws every example of every registered figure in every layout
and checks its text (inside the canvas, no two texts overlapping, large enough on a phone),
so a new figure is covered once it is registered; the same test fails for a function of
:data:`MODULES` that draws a figure and is not registered.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

#: the modules whose figure functions are registered (importing them fills the registry)
MODULES = ("analysis.attention", "analysis.umap_plot", "analysis.curves", "analysis.ablation.figures",
           "analysis.binding.output", "analysis.budget.figure",
           "analysis.transfer.figure", "analysis.explain")


@dataclass(frozen=True)
class Example:
    """One call of a figure function: ``function(*args, **kwargs, layout=...)``."""

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "layout" in self.kwargs:
            raise ValueError(f"example {self.label!r}: the layout is the check's to choose, not the example's")


@dataclass(frozen=True)
class FigureEntry:
    """A registered figure function and the builder of its examples."""

    name: str  # module.function
    function: Callable[..., tuple]
    examples: Callable[[], list[Example]]


_REGISTRY: dict[str, FigureEntry] = {}


def register(*, examples: Callable[[], list[Example]]) -> Callable[[Callable], Callable]:
    """Decorator: register a figure function with the builder of its examples (called only by checks)."""
    def wrap(function: Callable) -> Callable:
        name = f"{function.__module__}.{function.__qualname__}"
        if name in _REGISTRY and _REGISTRY[name].function is not function:
            raise ValueError(f"figure {name} is registered twice")
        _REGISTRY[name] = FigureEntry(name, function, examples)
        return function

    return wrap


def entries() -> list[FigureEntry]:
    """Every registered figure (the modules of :data:`MODULES` imported first), by name."""
    for module in MODULES:
        importlib.import_module(module)
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def cases() -> Iterator[tuple[FigureEntry, Example]]:
    """(entry, example) for every example of every registered figure."""
    for entry in entries():
        for example in entry.examples():
            yield entry, example


def draw(entry: FigureEntry, example: Example, layout: Any) -> tuple:
    """``(figure, caption)`` of one example in ``layout``."""
    return entry.function(*example.args, **example.kwargs, layout=layout)
