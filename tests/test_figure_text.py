"""Every figure's text is readable: inside the canvas, no two texts overlapping, large enough on a phone.

The figures are those of :mod:`analysis.figure_registry` (every figure function of the analysis CLI
and of the app), each drawn on its registered examples in every layout (:data:`analysis.style.LAYOUTS`:
the paper's, and a 390 px phone's). The text is what the Agg renderer actually draws: each
``draw_text`` call (one per line of a text) is recorded with its position and angle, and its
rectangle is the renderer's own extent of that string, rotated as drawn. Two rectangles overlap when
they intersect by more than ``TOLERANCE_PX`` along every separating axis (texts may touch, e.g.
neighbouring tick labels); a rectangle is inside when it sticks out of the canvas by at most that.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from analysis import figure_registry, style

import matplotlib.pyplot as plt  # noqa: E402  (after analysis.style: the Agg backend)

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE_PX = 1.0
#: calls that make a new figure: a function making one must be registered
FIGURE_MAKERS = {("style", "figure"), ("style", "subplots"), ("plt", "figure"), ("plt", "subplots")}

CASES = list(figure_registry.cases())


def drawn_texts(fig) -> list[tuple[object, str, np.ndarray]]:
    """(text artist, string, 4x2 corners in pixels, y up) of every line of text the renderer draws."""
    renderer = fig.canvas.get_renderer()
    height = fig.canvas.get_width_height()[1]
    seen = []
    original = renderer.draw_text

    def record(gc, x, y, s, prop, angle, ismath=False, mtext=None):
        if s.strip():
            y_up = height - y if renderer.flipy() else y  # Agg gets y from the top
            w, h, d = renderer.get_text_width_height_descent(s, prop, ismath)
            box = np.array([[0, -d], [w, -d], [w, h - d], [0, h - d]], dtype=float)
            a = math.radians(angle)
            rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            seen.append((mtext, s, box @ rot.T + [x, y_up], prop.get_size_in_points()))
        return original(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)

    renderer.draw_text = record
    try:
        fig.canvas.draw()
    finally:
        del renderer.draw_text
    return seen


def overlap_px(a: np.ndarray, b: np.ndarray) -> float:
    """How far two convex quadrilaterals interpenetrate (0 when a separating axis exists)."""
    depth = math.inf
    for poly in (a, b):
        for i in range(len(poly)):
            edge = poly[(i + 1) % len(poly)] - poly[i]
            n = np.array([-edge[1], edge[0]])
            norm = np.hypot(*n)
            if norm == 0:
                continue
            n /= norm
            pa, pb = a @ n, b @ n
            depth = min(depth, min(pa.max(), pb.max()) - max(pa.min(), pb.min()))
            if depth <= 0:
                return 0.0
    return depth


def text_problems(fig, layout: style.Layout) -> list[str]:
    """What is wrong with the figure's text: outside the canvas, overlapping, too small for the layout."""
    width, height = fig.canvas.get_width_height()
    texts = drawn_texts(fig)
    problems = []
    fig_w = fig.get_size_inches()[0]
    for artist, s, corners, points in texts:
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        if lo[0] < -TOLERANCE_PX or lo[1] < -TOLERANCE_PX or hi[0] > width + TOLERANCE_PX or \
                hi[1] > height + TOLERANCE_PX:
            problems.append(f"outside the {width}x{height} canvas: {s!r} spans x {lo[0]:.0f}..{hi[0]:.0f}, "
                            f"y {lo[1]:.0f}..{hi[1]:.0f}")
        px = layout.on_screen_px(points, fig_w)
        if px < style.MIN_SCREEN_PX - 1e-6:
            problems.append(f"too small on the screen: {s!r} at {points:g} pt is {px:.1f} px "
                            f"(< {style.MIN_SCREEN_PX:g})")
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            (a_art, a_s, a, _), (b_art, b_s, b, _) = texts[i], texts[j]
            if a_art is b_art and a_art is not None:
                continue  # the lines of one text
            depth = overlap_px(a, b)
            if depth > TOLERANCE_PX:
                problems.append(f"overlap by {depth:.1f} px: {a_s!r} and {b_s!r}")
    return problems


@pytest.mark.parametrize("layout", list(style.LAYOUTS.values()), ids=list(style.LAYOUTS))
@pytest.mark.parametrize("entry,example", CASES, ids=[f"{e.name.split('.')[-1]}-{x.label}" for e, x in CASES])
def test_every_text_is_inside_apart_and_readable(entry, example, layout):
    fig, caption = figure_registry.draw(entry, example, layout)
    try:
        assert caption.strip()
        assert fig.get_size_inches()[0] <= layout.width + 0.01, f"wider than the {layout.name} layout"
        problems = text_problems(fig, layout)
    finally:
        plt.close(fig)
    assert not problems, f"{entry.name} [{example.label}] in the {layout.name} layout:\n  " + "\n  ".join(problems)


def _figure_makers(path: Path) -> list[str]:
    """Qualified names of the functions of a source file that make a figure themselves."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                for call in ast.walk(child):
                    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
                            isinstance(call.func.value, ast.Name) and \
                            (call.func.value.id, call.func.attr) in FIGURE_MAKERS:
                        found.append(name)
                        break
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return found


def test_every_function_that_makes_a_figure_is_registered():
    """In analysis/ and demo/, a function that makes a figure (style.figure, plt.subplots, ...) is a
    registered figure function (style.py's own helpers excepted): forgetting to register one fails here."""
    registered = {e.name for e in figure_registry.entries()}
    assert registered, "no figure is registered"
    missing = []
    for folder in ("analysis", "demo"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            if module == "analysis.style":
                continue
            missing += [f"{module}.{n}" for n in _figure_makers(path) if f"{module}.{n}" not in registered]
    assert not missing, f"figure functions not registered in analysis.figure_registry: {missing}"
    for entry in figure_registry.entries():
        assert entry.examples(), f"{entry.name} has no example to check"


def test_the_check_finds_a_clipped_title_and_overlapping_labels():
    """The checks themselves: a title wider than its figure, and two labels on one spot, are found."""
    fig = style.figure(2.0, 1.5)
    fig.suptitle("a title far too long to fit into a figure two inches wide")
    ax = fig.subplots()
    ax.text(0.5, 0.5, "one label")
    ax.text(0.5, 0.5, "another")
    problems = text_problems(fig, style.PAPER)
    plt.close(fig)
    assert any(p.startswith("outside") and "a title far" in p for p in problems)
    assert any(p.startswith("overlap") and "one label" in p and "another" in p for p in problems)
    fig = style.figure(2.0, 1.5)
    fig.text(0.1, 0.5, "touching", fontsize=8)
    fig.text(0.1, 0.5 - 8 / 72 / 1.5 * 1.3, "neighbour", fontsize=8)  # a line below, no overlap
    assert text_problems(fig, style.PAPER) == []
    plt.close(fig)
