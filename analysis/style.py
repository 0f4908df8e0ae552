"""One paper style for every figure: fonts, sizes, colour-blind-safe palettes, saving.

Import this module before ``matplotlib.pyplot``: it selects the non-interactive Agg
backend. Every figure is saved as PNG (``DPI`` dots per inch, so a ``figsize`` of
(w, h) inches gives a ``w*DPI x h*DPI`` pixel PNG) and SVG, each written atomically.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, ListedColormap  # noqa: E402

from upperson.io import atomic_path  # noqa: E402

log = logging.getLogger(__name__)

DPI = 150
FORMATS = ("png", "svg")

#: Okabe & Ito (2008), the standard colour-blind-safe qualitative palette.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
#: Paul Tol's "muted" palette (colour-blind safe, 9 colours + grey).
TOL_MUTED = ["#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499",
             "#DDDDDD"]
#: Paul Tol's discrete rainbow (colour-blind distinguishable up to ~20 colours when ordered).
TOL_RAINBOW_20 = ["#D1BBD7", "#AE76A3", "#882E72", "#1965B0", "#5289C7", "#7BAFDE", "#4EB265", "#90C987",
                  "#CAE0AB", "#F7F056", "#F6C141", "#F1932D", "#E8601C", "#DC050C", "#72190E", "#B17BA6",
                  "#994F88", "#437DBF", "#CAACCB", "#A5170E"]
#: Sequential map for attention mass: perceptually uniform, colour-blind safe.
SEQUENTIAL = "viridis"

TOWER_COLOURS = {"image": OKABE_ITO[0], "text": OKABE_ITO[3]}

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "grid.alpha": 0.3,
    "savefig.dpi": DPI,
    "figure.dpi": DPI,
    "svg.fonttype": "none",  # keep text as text in SVG (editable in a paper)
    "image.cmap": SEQUENTIAL,
}


def apply() -> None:
    """Set the paper style on matplotlib's global rc parameters."""
    matplotlib.rcParams.update(RC)


apply()


def qualitative(n: int) -> list[str]:
    """``n`` distinguishable colours, colour-blind safe as far as that is possible for ``n``."""
    if n <= len(OKABE_ITO):
        return OKABE_ITO[:n]
    if n <= len(TOL_MUTED):
        return TOL_MUTED[:n]
    if n <= len(TOL_RAINBOW_20):
        return TOL_RAINBOW_20[:n]
    cmap = plt.get_cmap("turbo", n)
    return [matplotlib.colors.to_hex(cmap(i)) for i in range(n)]


def qualitative_cmap(n: int) -> ListedColormap:
    return ListedColormap(qualitative(n))


def overlay_cmap() -> LinearSegmentedColormap:
    """Viridis whose low end is transparent, for heat maps laid over an image."""
    base = plt.get_cmap(SEQUENTIAL)
    colours = base(range(256))
    colours[:, 3] = [min(1.0, 0.25 + 0.75 * i / 255) for i in range(256)]
    return LinearSegmentedColormap.from_list("viridis_overlay", colours)


@dataclass(frozen=True)
class Layout:
    """Where a figure is shown, so that it is drawn for that width.

    ``width`` caps the figure's width (inches; the PNG is ``width * DPI`` pixels wide); ``shown_px`` is
    the width (CSS pixels) the app shows it at on that screen, None for a file (the paper, the CLI):
    there the figure is read at its own size. :func:`on_screen_px` turns a font size into the pixels
    a reader sees.
    """

    name: str
    width: float
    shown_px: Optional[float] = None

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"layout {self.name!r}: width must be > 0 inches, got {self.width}")
        if self.shown_px is not None and not self.shown_px > 0:
            raise ValueError(f"layout {self.name!r}: shown_px must be > 0, got {self.shown_px}")

    @property
    def narrow(self) -> bool:
        """True for a phone: stack panels, wrap titles, fewer columns."""
        return self.width < NARROW_BELOW

    def fit(self, width: float) -> float:
        """``width`` (inches) capped at this layout's width."""
        return min(width, self.width)

    def on_screen_px(self, points: float, figure_width: float) -> float:
        """The height in screen pixels of ``points``-point text of a ``figure_width``-inch figure shown at
        ``shown_px`` (never scaled up: an image narrower than its place is shown at its own size)."""
        px = points * DPI / 72
        if self.shown_px is None:
            return px
        return px * min(1.0, self.shown_px / (figure_width * DPI))


NARROW_BELOW = 5.0  # inches: a layout narrower than this is a phone's
#: a figure file (the CLI, a paper): each figure's own size, at most 12 inches (1,800 px) wide
PAPER = Layout("paper", 12.0)
#: a 390 px phone, where the app shows a figure 326 px wide (the page's padding takes the rest):
#: figures at most 3.6 inches (540 px) wide, so 8-point text stays >= 9 px on the screen
PHONE = Layout("phone", 3.6, shown_px=326.0)
LAYOUTS = {layout.name: layout for layout in (PAPER, PHONE)}
#: the smallest text a reader should have to read, in screen pixels
MIN_SCREEN_PX = 9.0


def wrap(text: str, width: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width`` inches at ``fontsize`` points (DejaVu Sans averages
    about 0.6 em a character; existing line breaks are kept)."""
    chars = max(8, int(width * 72 / (0.62 * fontsize)))
    return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in text.split("\n"))


@dataclass
class FigureRecord:
    """A saved figure: its name, a one-paragraph caption, and its files."""

    name: str
    caption: str
    files: dict[str, Path]
    size: tuple[float, float] = (0.0, 0.0)  # inches; the PNG is size * DPI pixels

    @property
    def pixels(self) -> tuple[int, int]:
        """(width, height) of the PNG in pixels."""
        return int(self.size[0] * DPI), int(self.size[1] * DPI)  # Agg truncates, as here

    @property
    def png(self) -> Path:
        return self.files["png"]

    @property
    def svg(self) -> Path:
        return self.files["svg"]


def figure(width: float, height: float, **kwargs):
    """A new figure of ``width x height`` inches (the PNG is ``width*DPI x height*DPI`` pixels,
    rounded to whole pixels: the size is nudged a quarter pixel up so Agg's truncation keeps it)."""
    return plt.figure(figsize=(_whole_pixels(width), _whole_pixels(height)), dpi=DPI, **kwargs)


def _whole_pixels(inches: float) -> float:
    return (round(inches * DPI) + 0.25) / DPI


def subplots(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float], **kwargs):
    """``plt.subplots`` in the paper style, with a fixed figure size in inches."""
    return plt.subplots(nrows, ncols, figsize=(_whole_pixels(size[0]), _whole_pixels(size[1])), dpi=DPI, **kwargs)


def png_bytes(fig) -> bytes:
    """``fig`` as the PNG :func:`save` writes (same size and DPI), in memory; the figure is closed."""
    import io

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": "UP-Person analysis"})
    finally:
        plt.close(fig)
    return buf.getvalue()


def save(fig, out_dir: Path, name: str, caption: str, formats: Sequence[str] = FORMATS) -> FigureRecord:
    """Save ``fig`` as ``out_dir/name.{png,svg}`` atomically, close it, and describe it.

    No ``bbox_inches="tight"``: the PNG keeps exactly the figure's size times ``DPI``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata={"Software": "UP-Person analysis"} if fmt == "png" else None)
        files[fmt] = path
    size = tuple(float(x) for x in fig.get_size_inches())
    plt.close(fig)
    log.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return FigureRecord(name=name, caption=caption, files=files, size=size)
