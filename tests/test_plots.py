"""The benchmark's figures (pml_anchors.app.plots), checked through matplotlib's object model, not pixels."""

import sys

import numpy as np
import pytest
from training_toys import (
    single_thread,  # noqa: F401 - autouse fixture
)

import pml_anchors.app.bench as bench_module
from pml_anchors.app.bench import bench
from pml_anchors.app.plots import (
    PLOTS_HINT,
    plot_accuracy_per_epoch,
    plot_accuracy_vs_time,
    plot_embeddings,
    run_styles,
)
from pml_anchors.cli import main

TINY = dict(limit=64, test_limit=120, batch_size=32, device="cpu", backbone_kwargs={"width": 8})
FIGURES = ["accuracy_vs_time.png", "accuracy_per_epoch.png", "embeddings.png"]


def _capture_figures(monkeypatch) -> dict:
    """Make bench's plot functions also hand their Figure to the test."""
    figures = {}
    for name in ("plot_accuracy_vs_time", "plot_accuracy_per_epoch", "plot_embeddings"):

        def capture(*args, _draw=getattr(bench_module, name), _name=name, **kwargs):
            figures[_name] = _draw(*args, **kwargs)
            return figures[_name]

        monkeypatch.setattr(bench_module, name, capture)
    return figures


def _style(line) -> tuple:
    return (line.get_color(), line.get_marker(), line.get_linestyle(), line.get_markerfacecolor())


def _flat(text: str) -> str:
    """A title with its line breaks (wrapped to the figure's width) undone."""
    return " ".join(text.split())


def _legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def _outside(fig, legend, axes) -> bool:
    fig.draw_without_rendering()
    box = legend.get_window_extent()
    return all(not box.overlaps(ax.get_window_extent()) for ax in axes)


@pytest.fixture
def mpl():
    """The figure tests need matplotlib (the [plots] extra); the no-matplotlib test does not."""
    return pytest.importorskip("matplotlib")


@pytest.fixture
def tiny_bench(mpl, toys, tmp_path_factory):
    """Two toy methods and one PML baseline, two epochs, the figures captured."""
    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as monkeypatch:
        figures = _capture_figures(monkeypatch)
        summary = bench("digits", "toy_fixed,toy_learnable", "cross_entropy", epochs=2, output=out, **TINY)
    return summary, figures, out


def test_bench_writes_every_figure(tiny_bench):
    summary, figures, out = tiny_bench
    assert summary["figures"] == FIGURES
    for png in FIGURES:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(out / "accuracy_vs_time.png") as image:  # the title and caption travel with the file
        assert "digits, same_class protocol, seed 0" in image.text["Title"]
        assert "one marker per epoch (epochs 1–2)" in image.text["Description"]


def test_accuracy_vs_time_has_labelled_axes_a_marker_per_epoch_and_a_legend_outside(tiny_bench):
    summary, figures, _ = tiny_bench
    fig = figures["plot_accuracy_vs_time"]
    (ax,) = fig.axes
    assert ax.get_xlabel() == "cumulative training time (s), evaluation excluded"
    assert ax.get_ylabel() == "test precision@1 (P@1)"
    title = _flat(ax.get_title(loc="left"))
    assert "digits, same_class protocol, seed 0" in title and "one marker per epoch (epochs 1–2)" in title
    assert "training seconds on cpu" in title
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["toy_fixed", "toy_learnable", "cross_entropy"]
    for line, run in zip(lines, summary["runs"]):
        assert len(line.get_xdata()) == 2 == run["epochs"]  # one marker per epoch
        assert line.get_marker() not in (None, "None", "", " ")
        assert list(line.get_xdata()) == [h["seconds"] for h in run["history"]]
        assert list(line.get_ydata()) == [h["precision_at_1"] for h in run["history"]]
    assert len({_style(line) for line in lines}) == 3
    assert len({line.get_color() for line in lines}) == 3 and len({line.get_marker() for line in lines}) == 3
    assert [line.get_linestyle() for line in lines] == ["-", "-", "--"]  # PML's baselines dashed
    legend = ax.get_legend()
    texts = _legend_texts(legend)
    assert texts == ["pml-anchors methods", "toy_fixed", "toy_learnable", "PML baselines", "cross_entropy"]
    assert legend.get_title().get_text() == "marker = one epoch"
    assert _outside(fig, legend, [ax])


def test_accuracy_per_epoch_plots_p_at_1_and_map_at_r_against_epoch(tiny_bench):
    summary, figures, _ = tiny_bench
    fig = figures["plot_accuracy_per_epoch"]
    left, right = fig.axes
    assert (left.get_xlabel(), left.get_ylabel()) == ("epoch", "test P@1")
    assert (right.get_xlabel(), right.get_ylabel()) == ("epoch", "test MAP@R")
    for ax, key in ((left, "precision_at_1"), (right, "mean_average_precision_at_r")):
        lines = ax.get_lines()
        assert len(lines) == 3
        for line, run in zip(lines, summary["runs"]):
            assert list(line.get_xdata()) == [1, 2]
            assert list(line.get_ydata()) == [h[key] for h in run["history"]]
    assert [_style(a) for a in left.get_lines()] == [_style(a) for a in right.get_lines()]
    vs_time = figures["plot_accuracy_vs_time"].axes[0].get_lines()
    assert [_style(a) for a in left.get_lines()] == [_style(a) for a in vs_time]  # one style per run everywhere
    assert "digits, same_class protocol, seed 0" in _flat(fig.get_suptitle())
    assert _outside(fig, right.get_legend(), [left, right])


def test_embeddings_show_classes_anchors_labels_and_readable_ticks(tiny_bench):
    summary, figures, _ = tiny_bench
    fig = figures["plot_embeddings"]
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title().splitlines()[0] for ax in panels] == [
        "toy_fixed",
        "toy_learnable",
        "cross_entropy (PML baseline)",
    ]
    for ax, run in zip(panels, summary["runs"]):
        assert f"P@1 {run['precision_at_1']:.3f}" in ax.get_title() and "cosine" in ax.get_title()
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("t-SNE 1", "t-SNE 2")
        points, anchors = ax.collections
        assert len(points.get_offsets()) == run["test_size"] == 120
        assert len(anchors.get_offsets()) == 10  # one anchor (one-hot, learnable, W column) per class
        assert anchors.get_paths() and all(size >= 100 for size in anchors.get_sizes())
        assert min(t.label1.get_fontsize() for t in ax.xaxis.get_major_ticks()) >= 8
    (legend,) = fig.legends
    assert legend.get_title().get_text() == "class"
    assert _legend_texts(legend) == [*(str(d) for d in range(10)), "anchor / proxy\n(fill: its class)"]
    suptitle = _flat(fig.get_suptitle())
    assert "digits, same_class protocol, seed 0" in suptitle and "t-SNE" in suptitle
    assert "anchors embedded with the points" in suptitle
    assert _outside(fig, legend, panels)


def test_run_styles_tell_twelve_runs_apart_and_group_the_baselines(mpl):
    runs = [{"method": f"m{i}"} for i in range(6)] + [{"method": f"b{i}", "baseline": True} for i in range(6)]
    styles = run_styles(runs)
    assert len({(s["color"], s["marker"]) for s in styles}) == 12
    assert len({s["color"] for s in styles[:6]}) == 6  # the methods alone never share a colour
    assert {s["linestyle"] for s in styles[:6]} == {"-"} and {s["linestyle"] for s in styles[6:]} == {"--"}
    assert all(s["markerfacecolor"] == s["color"] for s in styles[:6])  # filled
    assert all(s["markerfacecolor"] == "white" for s in styles[6:])  # open
    # methods first in colour order even when the baselines come first in the list
    assert run_styles(runs[6:] + runs[:6]) == styles[6:] + styles[:6]


def test_accuracy_figures_skip_failed_runs(mpl, tmp_path):
    history = [{"epoch": e, "seconds": 0.5 * e, "precision_at_1": 0.5 + 0.1 * e} for e in (1, 2, 3)]
    for h in history:
        h["mean_average_precision_at_r"] = h["precision_at_1"] - 0.2
    summary = {
        "dataset": "toy",
        "protocol": "open_set",
        "seed": 3,
        "device": "cpu",
        "runs": [
            {"method": "a", "history": history, "baseline": False},
            {"method": "b", "error": "RuntimeError: boom", "baseline": False},
        ],
    }
    fig = plot_accuracy_vs_time(summary, tmp_path / "t.png")
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [0.5, 1.0, 1.5]
    assert "toy, open_set protocol, seed 3" in _flat(fig.axes[0].get_title(loc="left"))
    assert "epochs 1–3" in _flat(fig.axes[0].get_title(loc="left"))
    fig = plot_accuracy_per_epoch(summary, tmp_path / "e.png")
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 1]
    assert (tmp_path / "t.png").exists() and (tmp_path / "e.png").exists()


def test_embeddings_legend_names_the_classes(mpl, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 5)
    projection = {
        "points": rng.normal(size=(15, 2)),
        "labels": labels,
        "anchors": rng.normal(size=(6, 2)),
        "anchor_labels": np.array([0, 0, 1, 1, 2, 2]),  # two sub-centres per class
        "class_names": ("cat", "dog", "eel"),
        "axes": ("PC 1 (40% of variance)", "PC 2 (20% of variance)"),
        "how": "PCA",
        "method": "pca",
        "cosine": False,
        "embedding_size": 8,
        "seconds": 0.0,
    }
    summary = {"dataset": "pets", "protocol": "same_class", "seed": 0, "runs": [{"method": "x", "precision_at_1": 0.5}]}
    fig = plot_embeddings({"x": projection}, tmp_path / "emb.png", summary)
    (legend,) = fig.legends
    assert _legend_texts(legend)[:3] == ["cat", "dog", "eel"]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "PC 1 (40% of variance)" and "Euclidean" in ax.get_title()
    points, anchors = ax.collections
    # each sub-centre is filled with its class's colour, the same as its class's points
    assert np.allclose(anchors.get_facecolors()[0, :3], points.get_facecolors()[0, :3])
    assert np.allclose(anchors.get_facecolors()[5, :3], points.get_facecolors()[14, :3])
    assert "principal components" in _flat(fig.get_suptitle())


def test_without_matplotlib_bench_says_so_once_and_writes_the_results(toys, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError

    def no_projection(*args, **kwargs):
        raise AssertionError("nothing is projected when no figure can be drawn")

    monkeypatch.setattr(bench_module, "project", no_projection)
    summary = bench("digits", "toy_fixed", "none", epochs=1, output=tmp_path / "api", **TINY)
    assert summary["figures"] == [] and "error" not in summary["runs"][0]
    assert (tmp_path / "api" / "results.md").exists() and (tmp_path / "api" / "results.json").exists()
    assert not list((tmp_path / "api").glob("*.png"))
    err = capsys.readouterr().err.strip().splitlines()
    notes = [line for line in err if "matplotlib" in line]
    assert len(notes) == 1 and "plots skipped" in notes[0] and PLOTS_HINT in notes[0]

    argv = ["bench", "--methods", "toy_fixed", "--baselines", "none", "--epochs", "1", "--limit", "64"]
    argv += ["--test-limit", "120", "--batch-size", "32", "--device", "cpu", "--output", str(tmp_path / "cli")]
    assert main(argv) == 0
    assert (tmp_path / "cli" / "results.md").exists() and not list((tmp_path / "cli").glob("*.png"))
    assert sum(PLOTS_HINT in line for line in capsys.readouterr().err.splitlines()) == 1


def test_a_projection_that_fails_costs_only_its_figure(mpl, toys, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no projection today")

    monkeypatch.setattr(bench_module, "project", broken)
    with pytest.warns(UserWarning, match="toy_fixed: embeddings not projected: RuntimeError: no projection today"):
        summary = bench("digits", "toy_fixed", "none", epochs=1, output=tmp_path, **TINY)
    assert "error" not in summary["runs"][0]
    assert summary["figures"] == ["accuracy_vs_time.png", "accuracy_per_epoch.png"]
    assert not (tmp_path / "embeddings.png").exists()
