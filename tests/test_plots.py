"""Plots (plots.py): files are drawn without touching matplotlib's global state."""

import subprocess
import sys

import pytest

from gpt_scratch.plots import plot_bars, plot_curves, plot_histograms, plot_labelled_points, plot_losses

MODULES = ["gpt_scratch.plots", "gpt_scratch.train", "gpt_scratch.sft", "gpt_scratch.compare", "gpt_scratch.reward",
           "gpt_scratch.best_of_n", "gpt_scratch.pipeline", "gpt_scratch.cli"]


def test_importing_the_package_leaves_the_matplotlib_backend_alone():
    """A notebook's inline backend (here: svg, chosen before the imports) must survive importing the course."""
    code = ("import matplotlib; matplotlib.use('svg'); before = matplotlib.get_backend(); "
            f"import {', '.join(MODULES)}; "
            "import matplotlib.pyplot as plt; "
            "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend()); print(before)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "svg"


def test_every_plot_writes_a_png_without_pyplot(tmp_path):
    history = {"step": [0, 1, 2], "train_loss": [3.0, 2.0, 1.5], "val_step": [2], "val_loss": [1.7]}
    files = [
        plot_losses(history, tmp_path / "loss.png"),
        plot_bars(["a", "b"], [0.5, 0.9], tmp_path / "bars.png", ylabel="accuracy", title="t"),
        plot_histograms({"style": ([1.0, 2.0, 3.0], [0.0, 1.0])}, ("preferred", "other"), tmp_path / "hist.png",
                        xlabel="score", title="t"),
        plot_curves([{"ylabel": "y", "lines": [("a", [0, 1], [0, 1], "o-")]}], tmp_path / "curves.png", xlabel="x",
                    title="t"),
        plot_labelled_points([("full", 1e6, 0.94, "o"), ("near", 8e5, 0.93, "o")], tmp_path / "points.png",
                             xlabel="x", ylabel="y", title="t", log_x=True),
    ]
    for path in files:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000, path


def test_plot_curves_wraps_panels_into_rows(tmp_path, monkeypatch):
    import gpt_scratch.plots as plots
    drawn = {}
    real_save = plots.save

    def keep(fig, path):
        drawn["axes"] = [(ax.get_ylabel(), ax.get_visible()) for ax in fig.axes]
        drawn["size"] = tuple(fig.get_size_inches())
        return real_save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    panels = [{"ylabel": f"y{i}", "lines": [("a", [0, 1], [0, i], "-")]} for i in range(6)]
    plot_curves(panels, tmp_path / "six.png", xlabel="x", title="t", per_row=4)
    # 6 panels at 4 per row: 2 rows of 4 places, the last two hidden, the panels in order
    assert drawn["size"] == (22.0, 7.6)
    assert drawn["axes"] == [(f"y{i}", True) for i in range(6)] + [("", False), ("", False)]


def test_plot_curves_takes_a_panels_y_range_and_legend_place(tmp_path, monkeypatch):
    """A share drawn from 0 (a drop is seen at its true size) and a legend moved off the lines; other panels as before."""
    import gpt_scratch.plots as plots
    drawn = {}
    real_save = plots.save

    def keep(fig, path):
        drawn["ylim"] = [tuple(ax.get_ylim()) for ax in fig.axes]
        drawn["legend"] = [(ax.get_legend()._loc, ax.get_legend()._ncols) for ax in fig.axes]
        return real_save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    lines = [("a", [0, 1], [0.6, 0.9], "-")]
    plot_curves([{"ylabel": "share", "ylim": (0, 1.02), "legend": {"loc": "lower center", "ncol": 2}, "lines": lines},
                 {"ylabel": "score", "lines": lines}], tmp_path / "two.png", xlabel="x", title="t")
    assert drawn["ylim"][0] == (0, 1.02) and drawn["ylim"][1][0] > 0.5  # the second panel keeps matplotlib's range
    assert drawn["legend"][0] == (8, 2) and drawn["legend"][1] == (0, 1)  # 8 = "lower center", 0 = "best"


def test_drawing_a_run_folder_plot_never_loads_pyplot(tmp_path):
    code = ("import sys; from gpt_scratch.plots import plot_losses; "
            f"plot_losses({{'step': [0, 1], 'train_loss': [2.0, 1.0]}}, {str(tmp_path / 'loss.png')!r}); "
            "print('matplotlib.pyplot' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False" and (tmp_path / "loss.png").is_file()


# --- no two series look alike ---------------------------------------------------------------------

def drawn_figures(monkeypatch) -> list:
    """Every Figure that plots.save is given, from now on in this test."""
    import gpt_scratch.plots as plots
    figures = []
    real_save = plots.save

    def keep(fig, path):
        figures.append(fig)
        return real_save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    return figures


def series_styles(ax) -> list[tuple]:
    """(colour, dashes, marker, fill) of each named series of an axes: what tells them apart in the legend."""
    from matplotlib.colors import to_hex
    return [(to_hex(line.get_color()), line.get_linestyle(), line.get_marker(), line.get_fillstyle())
            for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_the_freezing_vs_lora_comparison_gives_every_method_its_own_colour(tmp_path, monkeypatch):
    from gpt_scratch.compare import DEFAULT_METHODS, plot_accuracy_vs_trainable
    figures = drawn_figures(monkeypatch)
    rows = [{"method": method, "trainable_parameters": 1000 * (i + 1), "accuracy_after": i / 20}
            for i, method in enumerate(DEFAULT_METHODS)]
    plot_accuracy_vs_trainable(rows, tmp_path / "compare.png")
    styles = series_styles(figures[0].axes[0])
    assert len(DEFAULT_METHODS) > 10 and len(styles) == len(DEFAULT_METHODS)
    assert len({colour for colour, *_ in styles}) == len(DEFAULT_METHODS)  # lora:16 is not full's colour
    assert [marker for _, _, marker, _ in styles] == ["s" if m.startswith("lora") else "o" for m in DEFAULT_METHODS]


@pytest.mark.filterwarnings("ignore:Tight layout not applied")  # a legend of 60 names is taller than the chart
def test_many_named_points_never_repeat_a_style(tmp_path, monkeypatch):
    figures = drawn_figures(monkeypatch)
    plot_labelled_points([(f"p{i}", i + 1, 0.5, "o") for i in range(60)], tmp_path / "points.png", "x", "y", "t")
    styles = series_styles(figures[0].axes[0])
    assert len(styles) == 60 and len(set(styles)) == 60
    assert len({colour for colour, *_ in styles[:20]}) == 20  # twenty colours before any repeats


def test_many_lines_in_a_panel_never_repeat_a_style(tmp_path, monkeypatch):
    figures = drawn_figures(monkeypatch)
    lines = [(f"line {i}", [0, 1], [0, i], "o-") for i in range(25)]
    lines += [("blue dashes", [0, 1], [1, 0], "C0o--"), ("blue dashes again", [0, 1], [2, 0], "C0o--")]
    plot_curves([{"ylabel": "y", "lines": lines}, {"ylabel": "z", "lines": lines[:3]}], tmp_path / "c.png", "x", "t")
    many, few = (series_styles(ax) for ax in figures[0].axes[:2])
    assert len(many) == 27 and len(set(many)) == 27
    assert [dashes for _, dashes, _, _ in few] == ["-", "-", "-"]  # lines that differ keep the style asked for
    assert many[:10] == [(colour, "-", "o", "full") for colour, *_ in many[:10]]
