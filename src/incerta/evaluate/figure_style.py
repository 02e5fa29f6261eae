"""One style for every report figure: units, readable ticks, colour bars, element names.

Forces and uncertainties are drawn in meV/Å, energies in meV/atom. Log axes carry plain
numbers (20, 50, 100) instead of powers of ten; counts and iterations get integer ticks;
every 2-D histogram has a colour bar saying what a colour counts.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np
from ase.data import chemical_symbols
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

FORCE = "meV/Å"
ENERGY_PER_ATOM = "meV/atom"
MEV = 1e3  # eV -> meV


def plain_number(value: float, _position: int | None = None) -> str:
    """20, 0.5, 1500: a tick label without powers of ten."""
    if value == 0 or not np.isfinite(value):
        return "0"
    digits = max(0, -int(np.floor(np.log10(abs(value)))))
    return f"{value:.{digits}f}" if digits else f"{value:.0f}"


class ReadableLogLocator(LogLocator):
    """Log ticks as dense as the axis has room for (about one label per half inch): the densest
    of 1-9, 1-2-5, 1-3 or 1 times powers of ten whose ticks inside the axis range fit; a range
    where even 1-9 gives fewer than ``MIN_LABELS`` (84-150: only 90 and 100) gets evenly spaced
    ticks (100, 120, 140) instead."""

    CHOICES = ((1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0), (1.0, 2.0, 5.0), (1.0, 3.0), (1.0,))
    INCHES_PER_LABEL = 0.5
    MIN_LABELS = 3

    def __init__(self) -> None:
        super().__init__(base=10, subs=(1.0, 2.0, 5.0))

    def tick_values(self, vmin: float, vmax: float):
        if self.axis is not None and vmin > 0 and vmax > 0 and vmin != vmax:
            box = self.axis.axes.bbox
            inches = (box.width if self.axis.axis_name == "x" else box.height) / self.axis.figure.dpi
            room = inches / self.INCHES_PER_LABEL
            low, high = sorted((vmin, vmax))
            if ticks_between(self.CHOICES[0], low, high) < self.MIN_LABELS:
                return MaxNLocator(nbins=max(self.MIN_LABELS, int(room)), steps=[1, 2, 2.5, 5, 10]).tick_values(low, high)
            self.set_params(subs=next((subs for subs in self.CHOICES if ticks_between(subs, low, high) <= room),
                                      self.CHOICES[-1]))
        return super().tick_values(vmin, vmax)


def ticks_between(subs: tuple[float, ...], low: float, high: float) -> int:
    """How many of ``subs`` times powers of ten lie in [low, high] (0 < low < high)."""
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    return sum(low <= sub * 10.0**decade <= high for decade in decades for sub in subs)


def readable_log(axis: Axis) -> None:
    """Log ticks as dense as fits, labelled with plain numbers (20, 50, 100)."""
    axis.set_major_locator(ReadableLogLocator())
    axis.set_major_formatter(FuncFormatter(plain_number))
    axis.set_minor_formatter(NullFormatter())


def log_axes(ax: Axes, x: bool = True, y: bool = True) -> None:
    """Log scale with readable ticks on the chosen axes of ``ax``."""
    if x:
        ax.set_xscale("log")
        readable_log(ax.xaxis)
    if y:
        ax.set_yscale("log")
        readable_log(ax.yaxis)


def integer_ticks(axis: Axis) -> None:
    """Whole-number ticks (iterations, counts of labels or structures)."""
    axis.set_major_locator(MaxNLocator(integer=True))


def colour_bar(fig: Figure, mappable: ScalarMappable, ax: Axes, label: str = "atoms per bin", counts: bool = True) -> None:
    """A colour bar beside ``ax`` saying what a colour means (whole-number ticks for counts)."""
    bar = fig.colorbar(mappable, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label(label)
    if counts:
        integer_ticks(bar.ax.yaxis)


def element_name(number: int) -> str:
    return chemical_symbols[int(number)]


def finish(fig: Figure) -> Figure:
    """Tight layout; the figure is returned for the report."""
    fig.tight_layout()
    return fig
