"""The charts of ``report.html``: small matplotlib figures returned as inline SVG text.

A report is opened from disk, often on a machine without the pipeline, so a chart
cannot be an image file beside the page or a script that draws on load: it is SVG
markup pasted into the HTML. Two builds of the same version must give the same
bytes (a report is part of an immutable version, and diffs of it should be empty
when nothing changed), so every figure uses a fixed ``svg.hashsalt`` (matplotlib
otherwise draws its clip-path ids at random), writes no date, and drops the SVG
metadata block. Each chart's ids are prefixed with its name, since six charts share
one page. Text is written as ``<text>`` (``svg.fonttype: none``), which keeps charts
small and lets matplotlib escape user strings such as labels.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # matplotlib loads when a chart is drawn: a process that publishes nothing saves 0.5 s
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PALETTE = ("#3b6ea8", "#e08a3c", "#5a9e6f", "#b05a7a", "#7f7f7f")
MUTED = "#b9c3cf"
WIDTH = 7.5
"""Figure width in inches; the page scales SVGs to its column, so this sets the
ratio of text to plot more than the size on screen."""

_STYLE = {
    "svg.fonttype": "none",
    "text.parse_math": False,  # a label "$5 off" is text, not mathtext
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#8a94a0",
    "axes.labelcolor": "#2b3440",
    "xtick.color": "#4a5560",
    "ytick.color": "#4a5560",
    "axes.grid": True,
    "grid.color": "#e6e9ee",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "legend.frameon": False,
    "svg.hashsalt": "pipeline-report",
}
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_REFERENCE = re.compile(r"""(\sid="|url\(#|xlink:href="#)""")


_LOCK = threading.Lock()
"""``rc_context`` changes matplotlib's global settings: two reports built at once (a
flow running datasets in threads) must not restore each other's mid-figure."""


@contextmanager
def _figure(height: float) -> Iterator[tuple[Figure, Axes]]:
    """A styled figure. Built as a plain ``Figure``, not through pyplot, so no global
    figure registry keeps it alive and no display backend is involved."""
    import matplotlib
    from matplotlib.figure import Figure

    with _LOCK, matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(WIDTH, height), layout="constrained")
        yield fig, fig.subplots()


def _svg(fig: Figure, name: str) -> str:
    """The figure as an ``<svg>`` element ready to inline (no XML prolog, DOCTYPE or metadata)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})  # inside _figure, so _STYLE's hashsalt applies
    text = buf.getvalue()
    svg = _METADATA.sub("", text[text.index("<svg") :], count=1)
    # Every figure names its groups figure_1, axes_1, ...: prefix all ids (and the
    # references to them) with the chart's name so ids stay unique on the page. User
    # text is escaped, so every "<...>" here is a tag.
    svg = _TAG.sub(lambda tag: _REFERENCE.sub(lambda m: f"{m.group(1)}{name}-", tag.group(0)), svg)
    return svg.replace("<svg ", f'<svg class="chart" role="img" aria-label="{name}" ', 1)


def _bar_height(n: int) -> float:
    return max(1.6, 0.28 * n + 0.8)


def hbar(
    name: str,
    labels: Sequence[str],
    values: Sequence[int],
    xlabel: str,
    highlight: Sequence[bool] | None = None,
) -> str:
    """Horizontal bars, first label on top, each bar annotated with its value.

    ``highlight`` picks bars drawn in the main colour; the others are muted (e.g.
    languages the config does not allow).
    """
    with _figure(_bar_height(len(labels))) as (fig, ax):
        y = np.arange(len(labels))
        marked = highlight if highlight is not None else [True] * len(labels)
        colors = [PALETTE[0] if h else MUTED for h in marked]
        ax.barh(y, values, color=colors, height=0.7)
        ax.set_yticks(y, [str(label) for label in labels])
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        top = max(values, default=0)
        for yi, v in zip(y, values):
            ax.text(v + top * 0.01, yi, f"{v:,}", va="center", fontsize=8, color="#2b3440")
        ax.set_xlim(0, top * 1.12 if top else 1)
        return _svg(fig, name)


def funnel(name: str, steps: Sequence[str], rows: Sequence[int]) -> str:
    """Rows left after each step, with the rows each step removed (or added) beside its bar."""
    with _figure(_bar_height(len(steps))) as (fig, ax):
        y = np.arange(len(steps))
        ax.barh(y, rows, color=PALETTE[0], height=0.7)
        ax.set_yticks(y, list(steps))
        ax.invert_yaxis()
        ax.set_xlabel("rows")
        ax.grid(axis="y", visible=False)
        top = max(rows, default=0)
        for i, (yi, v) in enumerate(zip(y, rows)):
            change = v - rows[i - 1] if i else 0
            note = f"{v:,}" + (f"  ({change:+,})".replace("-", "−") if change else "")
            ax.text(v + top * 0.01, yi, note, va="center", fontsize=8, color="#2b3440")
        ax.set_xlim(0, top * 1.2 if top else 1)
        return _svg(fig, name)


def histograms(
    name: str,
    series: dict[str, np.ndarray],
    xlabel: str,
    bins: int = 40,
    quantile: float = 0.99,
) -> str:
    """Overlaid step histograms of several series on shared bins.

    Lengths have long tails (one pasted log file stretches the axis over the whole
    figure), so the bins stop at ``quantile`` of the pooled values and the last bin
    also counts everything beyond it; the x label says where it stops.
    """
    pooled = np.concatenate([s for s in series.values() if len(s)]) if any(len(s) for s in series.values()) else None
    with _figure(2.8) as (fig, ax):
        if pooled is None:
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
            return _svg(fig, name)
        top = max(float(np.quantile(pooled, quantile)), float(pooled.min()) + 1)
        edges = np.linspace(float(pooled.min()), top, bins + 1)
        for i, (label, values) in enumerate(series.items()):
            clipped = np.minimum(values, top)
            counts, _ = np.histogram(clipped, bins=edges)
            color = PALETTE[i % len(PALETTE)]
            ax.stairs(counts, edges, label=f"{label} ({len(values):,} rows)", color=color, linewidth=1.6)
        beyond = int((pooled > top).sum())
        note = f" (last bin also holds {beyond:,} longer)" if beyond else ""
        ax.set_xlabel(f"{xlabel}{note}")
        ax.set_ylabel("rows")
        ax.legend(loc="upper right")
        return _svg(fig, name)


def grouped_bars(name: str, categories: Sequence[str], groups: dict[str, Sequence[int]], ylabel: str) -> str:
    """Vertical bars per category, one bar per group side by side (e.g. before/after)."""
    n = max(len(groups), 1)
    width = 0.8 / n
    with _figure(3.2) as (fig, ax):
        x = np.arange(len(categories))
        for i, (label, values) in enumerate(groups.items()):
            ax.bar(x + (i - (n - 1) / 2) * width, values, width=width, label=label, color=PALETTE[i % len(PALETTE)])
        slanted = len(categories) > 6
        ax.set_xticks(
            x, [str(c) for c in categories],
            rotation=30 if slanted else 0, ha="right" if slanted else "center", rotation_mode="anchor",
        )
        ax.set_ylabel(ylabel)
        ax.grid(axis="x", visible=False)
        ax.legend(loc="upper right")
        return _svg(fig, name)


def bars(name: str, categories: Sequence[str], values: Sequence[int], xlabel: str, ylabel: str) -> str:
    """Vertical bars of counts per category, annotated (e.g. clusters per cluster size)."""
    with _figure(2.6) as (fig, ax):
        x = np.arange(len(categories))
        ax.bar(x, values, color=PALETTE[0], width=0.7)
        ax.set_xticks(x, [str(c) for c in categories])
        ax.set_xlim(-0.6, max(len(categories), 8) - 0.4)  # a lone bar stays a bar, not a wall
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(axis="x", visible=False)
        for xi, v in zip(x, values):
            ax.text(xi, v, f"{v:,}", ha="center", va="bottom", fontsize=8, color="#2b3440")
        return _svg(fig, name)
