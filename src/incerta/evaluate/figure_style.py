"""One style for every report figure: units, readable ticks, colour bars, element colours.

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


def readable_log(axis: Axis) -> None:
    """Ticks at 1, 2 and 5 times powers of ten, labelled with plain numbers."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
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


def colour_bar(fig: Figure, mappable: ScalarMappable, ax: Axes, label: str = "atoms per bin") -> None:
    """A colour bar beside ``ax`` saying what a colour means."""
    fig.colorbar(mappable, ax=ax, fraction=0.05, pad=0.02).set_label(label)


def element_name(number: int) -> str:
    return chemical_symbols[int(number)]


def finish(fig: Figure) -> Figure:
    """Tight layout; the figure is returned for the report."""
    fig.tight_layout()
    return fig
