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
