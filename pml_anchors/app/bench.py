"""Benchmark every registered method and PML's baselines with the same backbone, budget and seed.

:func:`bench` trains each run with :mod:`pml_anchors.training` (evaluating after every epoch) and
writes, under ``output``:

* ``results.md``: one row per run (P@1, Recall@K, MAP@R, R-precision, mAP, nearest-anchor accuracy, seconds);
* ``results.json``: the settings and every run's full results (including per-epoch history);
* ``accuracy_vs_time.png``: test P@1 after each epoch against training time (no evaluation time),
  in the style of Proxy Anchor's Figure 1;
* ``embeddings.png``: the test embeddings in 2-D (PCA when d > 2, in the space the kNN uses)
  coloured by class, with the anchors/proxies projected the same way and marked.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .baselines import BASELINES, PREFIX
from .evaluation import METRICS, anchor_rows, embed
from .recall_at_k import recall_metrics_in
from .results import results_dict, write_json
from .training import TrainConfig, build, evaluate_session, train


def select_methods(methods: str | Sequence[str]) -> list[str]:
    """``"all"`` → every registered method; ``"none"``/``""`` → none; else a comma list (checked)."""
    from .registry import get_method, list_methods

    if isinstance(methods, str):
        if methods.strip().lower() == "all":
            specs = list_methods()
            counts: dict[str, int] = {}
            for s in specs:
                counts[s.name] = counts.get(s.name, 0) + 1
            return [s.name if counts[s.name] == 1 else s.qualified_name for s in specs]
        if methods.strip().lower() in ("", "none"):
            return []
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    for m in methods:
        get_method(m)  # unknown → UnknownMethodError with suggestions
    return list(methods)


def select_baselines(baselines: str | Sequence[str]) -> list[str]:
    """``"all"``, ``"none"`` or a comma list of :data:`pml_anchors.baselines.BASELINES` names."""
    from .baselines import get_baseline

    if isinstance(baselines, str):
        if baselines.strip().lower() == "all":
            return list(BASELINES)
        if baselines.strip().lower() in ("", "none"):
            return []
        baselines = [b.strip() for b in baselines.split(",") if b.strip()]
    return [get_baseline(b).name for b in baselines]


def bench(
    dataset: str = "digits",
    methods: str | Sequence[str] = "all",
    baselines: str | Sequence[str] = "all",
    *,
    epochs: int = 2,
    output: str | Path = "bench",
    plots: bool = True,
    on_result: Any = None,
    **config: Any,
) -> dict[str, Any]:
    """Train and evaluate each method and baseline; write ``results.md/json`` and plots to ``output``.

    ``config`` holds further :class:`~pml_anchors.training.TrainConfig` fields shared by every run
    (``data_root``, ``protocol``, ``seed``, ``device``, ``limit``, ``batch_size``, ``lr``, ...).
    A run that raises is recorded with its error and the others go on. ``on_result(results)`` is
    called after each run (e.g. to print progress).
    """
    from .data import load_dataset

    names = [*select_methods(methods), *(PREFIX + b for b in select_baselines(baselines))]
    if not names:
        raise ValueError("nothing to benchmark: no methods and no baselines selected")
    output = Path(output)
    base = TrainConfig(method=names[0], dataset=dataset, epochs=epochs, eval_every_epoch=True, **config)
    splits = load_dataset(
        base.dataset,
        data_root=base.data_root,
        protocol=base.protocol,
        seed=base.seed,
        limit=base.limit,
        test_limit=base.test_limit,
        **base.dataset_kwargs,
    )
    runs, projections = [], {}
    for name in names:
        cfg = TrainConfig.from_dict({**base.to_dict(), "method": name, "output": None})
        started = time.perf_counter()
        try:
            session = train(build(cfg, splits=splits))
            result = results_dict(session, session.history[-1] if session.history else evaluate_session(session))
            if plots:
                projections[name] = _project(session)
        except Exception as exc:  # noqa: BLE001 - one failing method must not stop the benchmark
            result = {"method": name.removeprefix(PREFIX), "error": f"{type(exc).__name__}: {exc}"}
            warnings.warn(f"bench: {name} failed: {result['error']}", stacklevel=2)
        result["baseline"] = name.startswith(PREFIX)
        result["wall_seconds"] = time.perf_counter() - started
        runs.append(result)
        if on_result is not None:
            on_result(result)
    summary = {
        "dataset": dataset,
        "protocol": base.protocol,
        "epochs": epochs,
        "seed": base.seed,
        "device": runs[0].get("device") if runs else None,
        "settings": {k: v for k, v in base.to_dict().items() if k not in ("method", "output")},
        "runs": runs,
    }
    output.mkdir(parents=True, exist_ok=True)
    write_json(summary, output / "results.json")
    (output / "results.md").write_text(markdown_table(summary))
    if plots:
        plot_accuracy_vs_time(runs, output / "accuracy_vs_time.png", dataset)
        plot_embeddings(projections, output / "embeddings.png", dataset)
    return summary


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(summary: dict[str, Any]) -> str:
    """The ``results.md`` text: settings line and one row per run."""
    s = summary["settings"]
    lines = [
        f"# pml-anchors bench: {summary['dataset']} ({summary['protocol']})",
        "",
        f"{summary['epochs']} epoch{'' if summary['epochs'] == 1 else 's'}, batch {s['batch_size']}, "
        f"{s['optimizer']} lr {s['lr']}, seed {summary['seed']}, backbone {s['backbone'] or 'default'}, "
        f"device {summary['device']}. Retrieval metrics: PML AccuracyCalculator "
        "(test set against itself), R@K: Recall@K (P@1 is R@1); seconds: training time without evaluation.",
        "",
    ]
    recalls = sorted({kn for r in summary["runs"] for kn in recall_metrics_in(r) if kn[0] > 1})  # R@1 is P@1
    metrics = [METRICS[0], *(name for _, name in recalls), *METRICS[1:], "nearest_anchor_accuracy"]
    header = ["method", "d", "P@1", *(f"R@{k}" for k, _ in recalls), "MAP@R", "R-precision", "mAP"]
    header += ["nearest-anchor acc", "seconds"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in summary["runs"]:
        name = r["method"] + (" (PML baseline)" if r.get("baseline") else "")
        if "error" in r:
            lines.append(f"| {name} | | failed: {r['error'].splitlines()[0]} |" + " |" * (len(header) - 3))
            continue
        cells = [name, str(r.get("embedding_size", "")), *(_fmt(r.get(m)) for m in metrics), _fmt(r.get("seconds"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _project(session: Any, max_points: int = 2000) -> dict[str, Any]:
    """Test embeddings and anchors in 2-D (PCA fitted on the embeddings when d > 2)."""
    emb, labels = embed(session.trunk, session.embedder, session.splits.test, session.device)
    emb, labels = emb[:max_points].double().cpu(), labels[:max_points].cpu()
    anchors = anchor_rows(session.loss)
    anchors = None if anchors is None else anchors.double().cpu()
    if session.spec.normalize_embeddings:
        emb = torch.nn.functional.normalize(emb, dim=1)
        anchors = None if anchors is None else torch.nn.functional.normalize(anchors, dim=1)
    if anchors is not None and anchors.shape[1] != emb.shape[1]:
        anchors = None
    if emb.shape[1] > 2:
        mean = emb.mean(dim=0)
        _, _, v = torch.linalg.svd(emb - mean, full_matrices=False)
        basis = v[:2].T
        emb = (emb - mean) @ basis
        anchors = None if anchors is None else (anchors - mean) @ basis
        how = f"PCA of d={session.embedding_size}"
    else:
        how = f"d={emb.shape[1]}"
    return {
        "points": emb.numpy(),
        "labels": labels.numpy(),
        "anchors": None if anchors is None else anchors.numpy(),
        "how": how,
    }


def plot_accuracy_vs_time(runs: list[dict[str, Any]], path: Path, dataset: str = "") -> Path:
    """Test P@1 after each epoch against cumulative training seconds, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab20")
    for i, r in enumerate(runs):
        points = [
            (h["seconds"], h["precision_at_1"]) for h in r.get("history", []) if h.get("precision_at_1") is not None
        ]
        if not points:
            continue
        xs, ys = zip(*points)
        style = "--" if r.get("baseline") else "-"
        ax.plot(xs, ys, marker="o", linestyle=style, color=colors(i % 20), label=r["method"])
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("test precision@1")
    ax.set_title(f"P@1 vs training time{f' ({dataset})' if dataset else ''}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_embeddings(projections: dict[str, dict[str, Any]], path: Path, dataset: str = "") -> Path:
    """A grid of 2-D test-embedding scatter plots, anchors marked with black stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(projections))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, p) in zip(axes.flat, projections.items()):
        ax.axis("on")
        ax.scatter(p["points"][:, 0], p["points"][:, 1], c=p["labels"], cmap="tab10", s=4, alpha=0.7, linewidths=0)
        if p["anchors"] is not None:
            a = p["anchors"]
            ax.scatter(a[:, 0], a[:, 1], marker="*", s=90, c="black", edgecolors="white", linewidths=0.5)
        ax.set_title(f"{name.removeprefix(PREFIX)}\n({p['how']})", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"test embeddings{f' ({dataset})' if dataset else ''}; * = anchors", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
