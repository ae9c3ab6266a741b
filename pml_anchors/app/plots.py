"""The benchmark's figures: accuracy against training time and against epoch, and the test embeddings in 2-D.

* :func:`plot_accuracy_vs_time` (``accuracy_vs_time.png``): test P@1 after each epoch against cumulative training
  seconds (evaluation excluded), one line per run, a marker per epoch, in the style of Proxy Anchor's Figure 1;
* :func:`plot_accuracy_per_epoch` (``accuracy_per_epoch.png``): test P@1 and MAP@R against epoch;
* :func:`plot_embeddings` (``embeddings.png``): one panel per run, the test embeddings projected by
  :func:`project` (t-SNE of the space the kNN uses, the anchors embedded with the points), coloured by class;
* :func:`plot_intervals` (``intervals.png``, ``bench --tuned``): each tuned method's test MAP@R and P@1 as mean ± 95 %
  confidence interval over the seeds, with every seed's value.

With ``--select-epoch`` the per-epoch curves are the validation fold's (the test split is read once, at the end), and
the figures say so.

Every run keeps one style in both accuracy figures (:func:`run_styles`): a tab10 colour, a marker and a line style,
the pml-anchors methods solid with filled markers, PML's baselines dashed with open markers.

matplotlib is imported only when a figure is drawn (it is the ``[plots]`` extra; :func:`plots_unavailable` says
whether it is there). Figures are built as :class:`matplotlib.figure.Figure` objects without pyplot, so drawing
needs no display, leaves the caller's backend alone and keeps nothing open; each plot function returns its
Figure (for inspection) after saving it, with its title and caption in the PNG's metadata.
"""

from __future__ import annotations

import math
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evaluation.diagnostics import anchor_rows
from ..evaluation.tester import embed
from .baselines import PREFIX

__all__ = [
    "PLOTS_HINT",
    "plot_accuracy_per_epoch",
    "plot_accuracy_vs_time",
    "plot_embeddings",
    "plot_intervals",
    "plots_unavailable",
    "project",
    "run_styles",
]

#: how to get the plots when matplotlib is missing
PLOTS_HINT = 'pip install "pml-anchors[plots]"'
#: at most this many test points are projected (a seeded random subset beyond it, the same for every run)
MAX_POINTS = 2000
#: filled markers, one per run (with the tab10 colour, a (colour, marker) pair repeats only after 60 runs)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
DPI = 150


def plots_unavailable() -> str | None:
    """``None`` when matplotlib imports; else a one-line note saying that the plots are skipped and how to get them."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return (
            f"pml-anchors bench: plots skipped, matplotlib is not available ({exc}); results.md and results.json are "
            f"still written; for the plots: {PLOTS_HINT}"
        )
    return None


# ---------------------------------------------------------------------------------------------------- projection


def _anchor_classes(n_rows: int, num_classes: int) -> np.ndarray | None:
    """The training class of each anchor row (sub-centres are stored class-major: row // K), or None if unknown."""
    if num_classes <= 0 or n_rows % num_classes:
        return None
    return np.arange(n_rows) // (n_rows // num_classes)


def _tsne(x: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """scikit-learn's t-SNE of ``x`` on as many threads as torch uses (``--threads``): more OpenMP threads than
    free cores make its gradient loop many times slower (40 s instead of 1 s for 450 points on a busy 2-core box)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # a scikit-learn dependency

    perplexity = float(min(30.0, (len(x) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    with threadpool_limits(limits=max(1, torch.get_num_threads())):
        return tsne.fit_transform(x), perplexity


def _pca(points: np.ndarray, anchors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, list[float]]:
    mean = points.mean(axis=0)
    _, s, vt = np.linalg.svd(points - mean, full_matrices=False)
    basis = vt[:2].T
    explained = (s**2 / max(float((s**2).sum()), 1e-300))[:2].tolist()
    return (points - mean) @ basis, None if anchors is None else (anchors - mean) @ basis, explained


def project(session: Any, max_points: int = MAX_POINTS, *, method: str = "tsne", seed: int = 0) -> dict[str, Any]:
    """The test embeddings of a trained session, and its anchors, in 2-D, in the space the kNN uses.

    The embeddings are L2-normalised first for a method evaluated with cosine similarity
    (``spec.normalize_embeddings``), as are its anchors; beyond ``max_points`` test items a random subset
    (seeded by ``seed``, so the same items for every run of a benchmark) is kept. ``method="tsne"``
    (default): scikit-learn's :class:`~sklearn.manifold.TSNE` (``init="pca"``, ``random_state=seed``, perplexity
    ``min(30, (n - 1) / 3)``) of the points and the anchors together, so that each anchor lands among the
    points nearest to it (t-SNE keeps neighbourhoods, not distances); ``method="pca"``: the first two principal
    components of the points, the anchors projected on them. d ≤ 2 is drawn as it is. Returns ``points``,
    ``labels``, ``anchors`` (2-D or ``None``: no anchors, or not in the embedding space), ``anchor_labels`` (the
    training class of each anchor, or ``None``), ``class_names``, ``axes`` (the two axis labels), ``how`` (a
    short description), ``method``, ``cosine``, ``embedding_size``, ``test_size`` (the test items before the
    subset) and ``seconds`` (the projection's time).
    """
    if method not in ("tsne", "pca"):
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    emb, labels = embed(session.trunk, session.embedder, session.splits.test, session.device)
    emb, labels = emb.double().cpu(), labels.cpu()
    test_size = len(emb)
    if len(emb) > max_points:
        keep = torch.randperm(len(emb), generator=torch.Generator().manual_seed(seed))[:max_points].sort().values
        emb, labels = emb[keep], labels[keep]
    anchors = anchor_rows(session.loss)
    anchors = None if anchors is None else anchors.double().cpu()
    cosine = bool(session.spec.normalize_embeddings)
    if cosine:
        emb = torch.nn.functional.normalize(emb, dim=1)
        anchors = None if anchors is None else torch.nn.functional.normalize(anchors, dim=1)
    if anchors is not None and anchors.shape[1] != emb.shape[1]:
        anchors = None
    points, anchors_np = emb.numpy(), None if anchors is None else anchors.numpy()
    space = f"d={emb.shape[1]}, {'L2-normalised' if cosine else 'raw'}"
    started = time.perf_counter()
    if emb.shape[1] <= 2 or len(points) < 4:
        how, axes = f"as is ({space})", ("dimension 1", "dimension 2")
        if emb.shape[1] == 1:
            points = np.hstack([points, np.zeros_like(points)])
            anchors_np = None if anchors_np is None else np.hstack([anchors_np, np.zeros_like(anchors_np)])
    elif method == "pca":
        points, anchors_np, explained = _pca(points, anchors_np)
        how = f"PCA ({space})"
        axes = (f"PC 1 ({explained[0]:.0%} of variance)", f"PC 2 ({explained[1]:.0%} of variance)")
    else:
        together = points if anchors_np is None else np.vstack([points, anchors_np])
        flat, perplexity = _tsne(together, seed)
        points, anchors_np = flat[: len(points)], None if anchors_np is None else flat[len(points) :]
        how, axes = f"t-SNE ({space}, perplexity {perplexity:.0f})", ("t-SNE 1", "t-SNE 2")
    splits = session.splits
    same_classes = getattr(splits, "protocol", "same_class") == "same_class"
    anchor_labels = None
    if anchors_np is not None and same_classes:
        anchor_labels = _anchor_classes(len(anchors_np), int(session.num_classes))
    return {
        "points": points,
        "labels": labels.numpy(),
        "anchors": anchors_np,
        "anchor_labels": anchor_labels,
        "class_names": tuple(getattr(splits, "class_names", ()) or ()),
        "axes": axes,
        "how": how,
        "method": method,
        "cosine": cosine,
        "embedding_size": int(emb.shape[1]),
        "test_size": test_size,
        "seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------------------------------------- styles


def _is_baseline(run: Mapping[str, Any]) -> bool:
    return bool(run.get("baseline"))


def run_label(run: Mapping[str, Any]) -> str:
    return str(run["method"]).removeprefix(PREFIX)


def run_styles(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One matplotlib line style per run, in order: the pml-anchors methods first (solid lines, filled markers),
    then PML's baselines (dashed, open markers), each with its own tab10 colour and marker."""
    import matplotlib

    tab10 = matplotlib.colormaps["tab10"]
    colors = [tab10(k) for k in range(tab10.N)]
    order = sorted(range(len(runs)), key=lambda i: _is_baseline(runs[i]))  # stable: methods, then baselines
    styles: list[dict[str, Any]] = [{} for _ in runs]
    for position, i in enumerate(order):
        color = colors[position % len(colors)]
        baseline = _is_baseline(runs[i])
        styles[i] = {
            "color": color,
            "marker": MARKERS[position % len(MARKERS)],
            "linestyle": "--" if baseline else "-",
            "markerfacecolor": "white" if baseline else color,
            "markeredgecolor": color,
            "markeredgewidth": 1.3,
            "markersize": 6,
            "linewidth": 1.4,
        }
    return styles


def _history(run: Mapping[str, Any], key: str) -> list[tuple[int, float, float]]:
    """``(epoch, seconds, value)`` of every evaluated epoch of ``run`` that has ``key``."""
    return [
        (int(h["epoch"]), float(h["seconds"]), float(h[key]))
        for h in run.get("history") or []
        if h.get(key) is not None and h.get("seconds") is not None and math.isfinite(float(h[key]))
    ]


def _evaluated_on(runs: Sequence[Mapping[str, Any]]) -> str:
    """``"validation"`` when the runs' epochs were evaluated on a validation fold (``--select-epoch``), else ``"test"``."""
    on_validation = any(h.get("evaluated_on") == "validation" for r in runs for h in r.get("history") or [])
    return "validation" if on_validation else "test"


def _setting(summary: Mapping[str, Any]) -> str:
    """``digits, same_class protocol, seed 0``."""
    return f"{summary.get('dataset', '?')}, {summary.get('protocol', '?')} protocol, seed {summary.get('seed', '?')}"


def _epochs_text(runs: Sequence[Mapping[str, Any]]) -> str:
    epochs = sorted({e for r in runs for e, _, _ in _history(r, "precision_at_1")})
    if not epochs:
        return "one marker per evaluated epoch"
    span = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}–{epochs[-1]}"
    return f"one marker per epoch ({span})"


def _legend(ax: Any, runs: Sequence[Mapping[str, Any]], lines: Mapping[int, Any], title: str) -> Any:
    """One legend outside the axes, right: 'pml-anchors methods' then 'PML baselines', bold group headers."""
    from matplotlib.lines import Line2D

    handles: list[Any] = []
    labels: list[str] = []
    headers: set[int] = set()
    for group, header in ((False, "pml-anchors methods"), (True, "PML baselines")):
        members = [i for i in lines if _is_baseline(runs[i]) == group]
        if not members:
            continue
        headers.add(len(labels))
        handles.append(Line2D([], [], linestyle="none", marker="none"))
        labels.append(header)
        for i in members:
            handles.append(lines[i])
            labels.append(run_label(runs[i]))
    legend = ax.legend(
        handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
        fontsize="small", title_fontsize="small", frameon=False, handlelength=2.6,
    )  # fmt: skip
    legend._legend_box.align = "left"  # the title too
    for k, text in enumerate(legend.get_texts()):
        if k in headers:
            text.set_fontweight("bold")
            text.set_horizontalalignment("left")
    return legend


def _wrap(text: str, width_inches: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width_inches`` at ``fontsize`` points (about 0.5 em per character)."""
    chars = max(40, int(width_inches * 72 / (0.52 * fontsize)))
    return "\n".join(textwrap.fill(part, chars) for part in text.split("\n"))


def _save(fig: Any, path: Path, title: str, caption: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Title": title, "Description": caption})


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


# ---------------------------------------------------------------------------------------------------- figures


def plot_accuracy_vs_time(summary: Mapping[str, Any], path: Path) -> Any:
    """Test P@1 after each epoch against cumulative training seconds (evaluation excluded), one line per run,
    one marker per epoch; returns the saved :class:`matplotlib.figure.Figure`.

    ``summary`` is what :func:`pml_anchors.app.bench.bench` returns (``dataset``, ``protocol``, ``seed``,
    ``device``, ``runs`` with their ``history``).
    """
    runs = summary.get("runs") or []
    styles = run_styles(runs)
    fig = _figure(7.8, 4.6)
    ax = fig.add_subplot()
    lines: dict[int, Any] = {}
    for i, r in enumerate(runs):
        points = _history(r, "precision_at_1")
        if points:
            _, xs, ys = zip(*points)
            (lines[i],) = ax.plot(xs, ys, label=run_label(r), **styles[i])
    ax.set_xlabel("cumulative training time (s), evaluation excluded")
    split = _evaluated_on(runs)
    ax.set_ylabel(f"{split} precision@1 (P@1)")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=9)
    title = f"{split.capitalize()} P@1 against training time: {_setting(summary)}"
    caption = (
        f"{_epochs_text(runs)}; x: training seconds on {summary.get('device') or 'the device'} up to each epoch "
        "(one run, timed once per epoch)"
    )
    ax.set_title(_wrap(f"{title}\n{caption}", 9.0, 9.5), fontsize=9.5, loc="left")  # may reach over the legend
    _legend(ax, runs, lines, "marker = one epoch")
    _save(fig, path, title, caption)
    return fig


def plot_accuracy_per_epoch(summary: Mapping[str, Any], path: Path) -> Any:
    """Test P@1 (left) and MAP@R (right) against epoch, one line per run (runs evaluated every epoch, as ``bench``
    does); returns the saved :class:`matplotlib.figure.Figure`."""
    from matplotlib.ticker import MaxNLocator

    runs = summary.get("runs") or []
    styles = run_styles(runs)
    split = _evaluated_on(runs)
    fig = _figure(10.5, 4.2)
    axes = fig.subplots(1, 2, sharex=True)
    lines: dict[int, Any] = {}
    for ax, key, name in ((axes[0], "precision_at_1", "P@1"), (axes[1], "mean_average_precision_at_r", "MAP@R")):
        for i, r in enumerate(runs):
            points = _history(r, key)
            if points:
                epochs, _, ys = zip(*points)
                (line,) = ax.plot(epochs, ys, label=run_label(r), **styles[i])
                lines.setdefault(i, line)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{split} {name}")
        ax.set_title(f"{split} {name} after each epoch", fontsize=9.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9)
    title = f"{split.capitalize()} accuracy per epoch: {_setting(summary)}"
    caption = f"P@1 and MAP@R of PML's AccuracyCalculator ({split} set against itself), evaluated after every epoch"
    if split == "validation":
        caption += "; the test split was evaluated once, after training, with the selected epoch's weights"
    fig.suptitle(_wrap(f"{title}\n{caption}", 10.5, 9.5), fontsize=9.5, x=0.0, horizontalalignment="left")
    _legend(axes[1], runs, lines, "")
    _save(fig, path, title, caption)
    return fig


def _class_colors(n: int) -> tuple[Any, bool]:
    """A colour per class: tab10 up to 10 classes, tab20 up to 20, else turbo (no legend then)."""
    import matplotlib

    if n <= 10:
        return matplotlib.colormaps["tab10"], True
    if n <= 20:
        return matplotlib.colormaps["tab20"], True
    return matplotlib.colormaps["turbo"].resampled(n), False


def _embeddings_caption(projections: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    hows = {p["method"] for p in projections.values() if not str(p["how"]).startswith("as is")}
    shown = max((len(p["points"]) for p in projections.values()), default=0)
    total = max((int(p.get("test_size", len(p["points"]))) for p in projections.values()), default=0)
    points = f"the {shown} test points" if shown >= total else f"a random {shown} of the {total} test points"
    space = "in the space the kNN uses (L2-normalised for cosine methods)"
    if "tsne" in hows:
        caption = (
            f"t-SNE (scikit-learn, PCA init, random_state {summary.get('seed', 0)}) of {points} {space}, the anchors "
            "embedded with the points;\nt-SNE keeps neighbourhoods, not distances: compare how well the classes "
            "separate, not cluster sizes, gaps or positions; an anchor lands next to its nearest points, anchors far "
            "from all points land together"
        )
    elif hows:
        caption = f"first two principal components of {points} {space}, the anchors projected on them"
    else:
        caption = f"{points} {space}, as they are (d ≤ 2)"
    if summary.get("protocol") == "open_set":
        caption += "; open set: the anchors are the training classes', the test classes are unseen"
    return caption


def plot_embeddings(projections: Mapping[str, Mapping[str, Any]], path: Path, summary: Mapping[str, Any]) -> Any:
    """A grid of 2-D test embeddings (:func:`project`), one panel per run, coloured by class (a legend of the class
    names), anchors as stars with a black edge, filled with their class's colour where it is known; returns the
    saved :class:`matplotlib.figure.Figure`."""
    from matplotlib.lines import Line2D

    runs = {str(r["method"]): r for r in summary.get("runs") or []}
    all_labels = sorted({int(c) for p in projections.values() for c in np.unique(p["labels"])})
    names = next((p["class_names"] for p in projections.values() if p.get("class_names")), ())
    index = {c: k for k, c in enumerate(all_labels)}
    cmap, legend = _class_colors(len(all_labels))
    title = f"Test embeddings after training: {_setting(summary)}"
    caption = _embeddings_caption(projections, summary)
    if not legend:
        caption += f"; colour = class ({len(all_labels)} classes)"
    n = max(1, len(projections))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    heading = _wrap(f"{title}\n{caption}", 3.3 * cols - 0.2, 9.5)  # above the panels, clear of the legend
    fig = _figure(3.3 * cols + 1.6, 3.35 * rows + 0.3 + 0.17 * (heading.count("\n") + 1))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(projections) :]:
        ax.set_axis_off()
    anchor_classes = False
    for ax, (name, p) in zip(axes.flat, projections.items()):
        colors = cmap([index[int(c)] for c in p["labels"]])
        ax.scatter(p["points"][:, 0], p["points"][:, 1], c=colors, s=5, alpha=0.75, linewidths=0, rasterized=True)
        a = p.get("anchors")
        if a is not None:
            al = p.get("anchor_labels")
            anchor_classes |= al is not None
            fill = "white" if al is None else [cmap(index[int(c)]) if int(c) in index else "white" for c in al]
            ax.scatter(a[:, 0], a[:, 1], marker="*", s=110, c=fill, edgecolors="black", linewidths=0.7, zorder=3)
        run = runs.get(name.removeprefix(PREFIX), {})
        p1 = run.get("precision_at_1")
        label = name.removeprefix(PREFIX) + (" (PML baseline)" if name.startswith(PREFIX) else "")
        stats = [f"P@1 {p1:.3f}" if isinstance(p1, float) else None, f"d={p['embedding_size']}"]
        stats.append("cosine" if p.get("cosine") else "Euclidean")
        ax.set_title(f"{label}\n{', '.join(s for s in stats if s)}", fontsize=9)
        ax.set_xlabel(p["axes"][0], fontsize=8.5)
        ax.set_ylabel(p["axes"][1], fontsize=8.5)
        ax.tick_params(labelsize=8)
    handles = []
    if legend:
        for c in all_labels:
            handles.append(
                Line2D([], [], linestyle="none", marker="o", markersize=6, color=cmap(index[c]),
                       label=names[c] if c < len(names) else str(c))
            )  # fmt: skip
    if any(p.get("anchors") is not None for p in projections.values()):
        handles.append(
            Line2D([], [], linestyle="none", marker="*", markersize=11, markerfacecolor="lightgrey",
                   markeredgecolor="black", label="anchor / proxy" + ("\n(fill: its class)" if anchor_classes else ""))
        )  # fmt: skip
    if handles:
        fig.legend(handles=handles, title="class" if legend else None, loc="outside right upper", fontsize="small",
                   title_fontsize="small", frameon=False)  # fmt: skip
    fig.suptitle(heading, fontsize=9.5, x=0.0, horizontalalignment="left")
    _save(fig, path, title, caption)
    return fig


def plot_intervals(summary: Mapping[str, Any], path: Path) -> Any:
    """Each tuned method's test MAP@R (left) and P@1 (right): mean ± 95 % confidence interval over the seeds (bar)
    and every seed's value (dots), methods then PML baselines; returns the saved :class:`matplotlib.figure.Figure`.

    ``summary`` is what :func:`pml_anchors.app.tuned_bench.bench_tuned` returns (``methods`` with ``stats`` and
    ``per_seed``, ``seeds``, ``test_size``, ``dataset``, ``data_protocol``).
    """
    rows = sorted(summary.get("methods") or [], key=_is_baseline)  # stable: methods, then baselines
    styles = run_styles(rows)
    fig = _figure(10.5, 1.2 + 0.42 * max(len(rows), 1))
    axes = fig.subplots(1, 2, sharey=True)
    positions = list(range(len(rows)))[::-1]  # the first row at the top
    for ax, key, name in ((axes[0], "mean_average_precision_at_r", "MAP@R"), (axes[1], "precision_at_1", "P@1")):
        for y, row, style in zip(positions, rows, styles):
            stats = row["stats"][key]
            half = stats["ci"] if stats.get("ci") is not None else 0.0
            ax.errorbar(
                stats["mean"], y, xerr=half, fmt=style["marker"], color=style["color"], capsize=4,
                markerfacecolor=style["markerfacecolor"], markeredgecolor=style["markeredgecolor"], markersize=7,
            )  # fmt: skip
            seeds = [v for v in row["per_seed"][key] if v is not None]
            ax.plot(seeds, [y] * len(seeds), linestyle="none", marker=".", color=style["color"], alpha=0.6)
        ax.set_xlabel(f"test {name}")
        ax.grid(alpha=0.3, axis="x")
        ax.tick_params(labelsize=9)
    axes[0].set_yticks(positions, [run_label(r) + (" (PML)" if _is_baseline(r) else "") for r in rows])
    seed_list = ", ".join(str(s) for s in summary.get("seeds") or [])
    title = (
        f"Tuned methods on {summary.get('dataset', '?')} ({summary.get('data_protocol', '?')}): test accuracy over "
        f"seeds {seed_list}"
    )
    caption = (
        f"each method with the hyper-parameters tuned on {summary.get('folds', '?')} validation folds, trained once per "
        f"seed and tested once on the {summary.get('test_size', '?')} test items; marker and bar: mean ± 95 % "
        "Student-t interval over the seeds; dots: one seed each"
    )
    fig.suptitle(_wrap(f"{title}\n{caption}", 10.5, 9.5), fontsize=9.5, x=0.0, horizontalalignment="left")
    _save(fig, path, title, caption)
    return fig
