"""Shared matplotlib plumbing: headless Agg rendering, stable PNG bytes, safe labels, run colours.

Figures are built with the object-oriented API (`Figure` + `FigureCanvasAgg`), never pyplot,
so nothing needs a display and no global figure state leaks between reports.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

DPI = 100
BASELINE_COLOR = "#7f7f7f"
# tab10 without its grey, which is the baseline's colour.
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
HIT_COLOR = "#2ca02c"
MISS_COLOR = "#d62728"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SPACES = re.compile(r"\s+")


def run_colors(keys: Sequence[str]) -> dict[str, str]:
    """A fixed colour per run key, in the given order (cycles after nine runs)."""
    return {key: RUN_COLORS[i % len(RUN_COLORS)] for i, key in enumerate(keys)}


def plain_label(text: object, limit: int = 60) -> str:
    """`text` as one short line that matplotlib draws literally.

    Control characters and line breaks go, long text is cut with an ellipsis, and `$` is
    escaped so a caption such as "2 for $5" is not parsed as mathtext. A leading underscore
    would hide a legend entry, so it gets a space in front.
    """
    line = _SPACES.sub(" ", _CONTROL.sub(" ", str(text))).strip()
    if len(line) > limit:
        line = line[: max(limit - 1, 1)].rstrip() + "…"
    line = line.replace("$", r"\$")
    return " " + line if line.startswith("_") else line


@contextmanager
def plot_style() -> Iterator[None]:
    """Matplotlib's default style whatever the user's matplotlibrc says, for reproducible figures."""
    with matplotlib.style.context("default"), matplotlib.rc_context(
        {"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8, "figure.dpi": DPI}
    ), warnings.catch_warnings():
        # Captions may hold characters DejaVu Sans lacks; a missing glyph is not worth a warning per figure.
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
        yield


def new_figure(width_in: float, height_in: float) -> Figure:
    """A figure bound to the Agg canvas (headless)."""
    figure = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def to_png(figure: Figure, palette: bool = False) -> bytes:
    """PNG bytes of `figure`, without the Software tag, so equal figures give equal bytes.

    `palette` stores 256 adaptive colours instead of true colour: photo thumbnails otherwise
    make the file several times larger for no visible gain.
    """
    buffer = io.BytesIO()
    if not palette:
        figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
        return buffer.getvalue()
    canvas = figure.canvas
    canvas.draw()
    rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def show_message(axes: Axes, message: str) -> None:
    """An empty panel that says why it is empty."""
    axes.set_axis_off()
    axes.text(0.5, 0.5, plain_label(message, 80), ha="center", va="center", color="#555555",
              transform=axes.transAxes, fontsize=11)


def message_png(title: str, message: str) -> bytes:
    """A small figure holding only a title and a message (e.g. "no M1 runs yet")."""
    with plot_style():
        figure = new_figure(8, 2.5)
        axes = figure.add_subplot()
        axes.set_title(plain_label(title, 90))
        show_message(axes, message)
        return to_png(figure)
