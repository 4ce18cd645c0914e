"""Plots the course writes into run folders (PNG files, no screen needed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw to files; works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402


def plot_losses(history: dict, path: str | Path, title: str = "loss") -> Path:
    """Training loss per step (thin) and validation loss (dots) on one chart."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history["step"], history["train_loss"], linewidth=0.8, alpha=0.7, label="train")
    if history.get("val_loss"):
        ax.plot(history["val_step"], history["val_loss"], "o-", markersize=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_bars(labels: list[str], values: list[float], path: str | Path, ylabel: str, title: str) -> Path:
    """A simple bar chart, e.g. accuracy per task family."""
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(labels)), 3.5))
    ax.bar(labels, values)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_histograms(panels: dict[str, tuple[list[float], list[float]]], labels: tuple[str, str],
                    path: str | Path, xlabel: str, title: str) -> Path:
    """One panel per key, each with two overlaid histograms (e.g. scores of preferred vs other answers)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (name, (first, second)) in zip(axes[0], panels.items()):
        values = first + second
        bins = 30 if max(values) > min(values) else 1
        ax.hist(first, bins=bins, range=(min(values), max(values) + 1e-9), alpha=0.6, label=labels[0])
        ax.hist(second, bins=bins, range=(min(values), max(values) + 1e-9), alpha=0.6, label=labels[1])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("pairs")
        ax.set_title(f"{title}: {name}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_curves(panels: list[dict], path: str | Path, xlabel: str, title: str) -> Path:
    """Side-by-side line charts. Each panel: {"ylabel": str, "lines": [(label, xs, ys, style), ...]}."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, xs, ys, style in panel["lines"]:
            ax.plot(xs, ys, style, label=label, markersize=4)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel["ylabel"])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
