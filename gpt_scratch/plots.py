"""Plots the course writes into run folders (PNG files, no screen needed).

Every function draws on its own matplotlib Figure object and saves it to a file. Nothing here
touches pyplot or matplotlib's global backend, so importing the package never changes how a
notebook or script shows its own plots (and it works on machines without a display).

No two series of a chart look alike: matplotlib's colours repeat after ten, so named points get
twenty colours (then the same again, hollow, then half filled), and a line drawn like an earlier
one of its panel gets another dash pattern (then hollow markers).
"""

from pathlib import Path

from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

# matplotlib's ten default colours (tab10), then a lighter shade of each (the rest of tab20).
PALETTE = [to_hex(colour) for colour in colormaps["tab20"].colors[0::2] + colormaps["tab20"].colors[1::2]]
LINE_STYLES = ("-", "--", ":", "-.")
FILL_STYLES = ("full", "none", "left", "bottom")


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1) -> tuple[Figure, list]:
    """A Figure that belongs to no window, and its axes, row by row."""
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(axes.flat)


def save(fig: Figure, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def point_style(index: int) -> dict:
    """Colour and fill of the index-th named point: twenty colours, then the same hollow, then half filled
    (80 points told apart by these alone)."""
    colour = PALETTE[index % len(PALETTE)]
    return {"color": colour, "fillstyle": FILL_STYLES[(index // len(PALETTE)) % len(FILL_STYLES)]}


def tell_lines_apart(lines: list[Line2D]) -> None:
    """Give a line drawn exactly like an earlier one (colour, dashes, marker, fill) the first dash pattern,
    then marker fill, that makes it unique: matplotlib's colour cycle starts again at the eleventh line."""
    seen = set()
    for line in lines:
        colour, marker = to_hex(line.get_color()), line.get_marker()
        asked = (line.get_linestyle(), line.get_fillstyle())
        options = [asked] + [(dashes, fill) for fill in FILL_STYLES for dashes in LINE_STYLES]
        dashes, fill = next((o for o in options if (colour, *o, marker) not in seen), asked)
        line.set_linestyle(dashes)
        line.set_fillstyle(fill)
        seen.add((colour, dashes, fill, marker))


def plot_losses(history: dict, path: str | Path, title: str = "loss") -> Path:
    """Training loss per step (thin) and validation loss (dots) on one chart."""
    fig, (ax,) = new_figure(6, 3.5)
    ax.plot(history["step"], history["train_loss"], linewidth=0.8, alpha=0.7, label="train")
    if history.get("val_loss"):
        ax.plot(history["val_step"], history["val_loss"], "o-", markersize=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    return save(fig, path)


def plot_bars(labels: list[str], values: list[float], path: str | Path, ylabel: str, title: str) -> Path:
    """A simple bar chart, e.g. accuracy per task family."""
    fig, (ax,) = new_figure(max(4, 0.8 * len(labels)), 3.5)
    ax.bar(labels, values)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    return save(fig, path)


def plot_histograms(panels: dict[str, tuple[list[float], list[float]]], labels: tuple[str, str],
                    path: str | Path, xlabel: str, title: str) -> Path:
    """One panel per key, each with two overlaid histograms (e.g. scores of preferred vs other answers)."""
    fig, axes = new_figure(4.5 * len(panels), 3.5, ncols=len(panels))
    for ax, (name, (first, second)) in zip(axes, panels.items()):
        values = first + second
        bins = 30 if max(values) > min(values) else 1
        ax.hist(first, bins=bins, range=(min(values), max(values) + 1e-9), alpha=0.6, label=labels[0])
        ax.hist(second, bins=bins, range=(min(values), max(values) + 1e-9), alpha=0.6, label=labels[1])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("pairs")
        ax.set_title(f"{title}: {name}")
        ax.legend(fontsize=8)
    return save(fig, path)


def plot_curves(panels: list[dict], path: str | Path, xlabel: str, title: str, per_row: int = 4) -> Path:
    """Line charts, per_row of them side by side. Each panel: {"ylabel": str, "lines": [(label, xs, ys, style), ...]},
    and optionally "ylim": (bottom, top), either None for matplotlib's choice: (0, 1.05) for shares, (0, None) for a
    loss, so that a drop is drawn to scale; "xscale": "log" for a learning rate; and "legend": keyword arguments
    of the legend, e.g. {"loc": "lower center", "ncol": 2} to keep it off the lines."""
    ncols = min(per_row, len(panels))
    nrows = -(-len(panels) // ncols)  # ceiling division
    fig, axes = new_figure(5.5 * ncols, 3.8 * nrows, ncols=ncols, nrows=nrows)
    for ax in axes[len(panels):]:
        ax.set_visible(False)  # the empty places of the last row
    for ax, panel in zip(axes, panels):
        for label, xs, ys, style in panel["lines"]:
            ax.plot(xs, ys, style, label=label, markersize=4)
        tell_lines_apart(ax.get_lines())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel["ylabel"])
        if "ylim" in panel:
            ax.set_ylim(*panel["ylim"])
        ax.set_xscale(panel.get("xscale", "linear"))
        ax.legend(fontsize=8, **panel.get("legend", {}))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save(fig, path)


def plot_labelled_points(points: list[tuple[str, float, float, str]], path: str | Path, xlabel: str, ylabel: str,
                         title: str, log_x: bool = False) -> Path:
    """A scatter plot of named points, [(label, x, y, marker), ...], one colour each (point_style), named in
    a legend beside the axes (labels written next to close points would overlap)."""
    fig, (ax,) = new_figure(8, 4)
    for index, (label, x, y, marker) in enumerate(points):
        ax.plot([x], [y], marker=marker, markersize=7, linestyle="none", label=label, **point_style(index))
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save(fig, path)
