"""Log axes of report figures: as many plain-number labels as the axis has room for."""

from __future__ import annotations

from itertools import pairwise

import matplotlib.pyplot as plt

from incerta.evaluate.figure_style import ReadableLogLocator, readable_log, ticks_between


def labels_shown(low: float, high: float, inches: float) -> list[str]:
    """The y tick labels inside [low, high] on a log axis ``inches`` tall."""
    fig, ax = plt.subplots(figsize=(3.0, inches / 0.77))  # the axes take 77 % of the default figure height
    ax.set_yscale("log")
    readable_log(ax.yaxis)
    ax.set_ylim(low, high)
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high and t.get_text()]
    plt.close(fig)
    return shown


def test_a_short_range_gets_every_hundred():
    """95-349 meV/Å on a 2.3-inch panel: 100, 200 and 300 (1-2-5 gave only 100 and 200)."""
    assert labels_shown(95.0, 349.0, 2.3) == ["100", "200", "300"]


def test_a_range_within_one_decade_gets_evenly_spaced_labels():
    """84-150 meV/Å: 1-9 times powers of ten would label only 90 and 100."""
    shown = labels_shown(84.0, 150.0, 2.3)
    assert len(shown) >= ReadableLogLocator.MIN_LABELS
    values = [float(text) for text in shown]
    assert len(set(round(b - a, 6) for a, b in pairwise(values))) == 1  # evenly spaced


def test_a_wide_range_gets_no_more_labels_than_it_has_room_for():
    """1-1000 on 3 inches has room for 6 labels: the decades (1-3 would give 7)."""
    shown = labels_shown(1.0, 1000.0, 3.0)
    assert shown == ["1", "10", "100", "1000"]
    assert len(shown) <= 3.0 / ReadableLogLocator.INCHES_PER_LABEL


def test_ticks_between_counts_inside_the_range_only():
    assert ticks_between((1.0, 2.0, 5.0), 95.0, 349.0) == 2
    assert ticks_between((1.0, 3.0), 1.0, 1000.0) == 7
