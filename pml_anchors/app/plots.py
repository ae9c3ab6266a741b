"""The benchmark's figures: accuracy against training time, and the test embeddings with the anchors in 2-D.

matplotlib is imported only when a figure is drawn (it is the ``[plots]`` extra).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..evaluation.diagnostics import anchor_rows
from ..evaluation.tester import embed
from .baselines import PREFIX

__all__ = ["plot_accuracy_vs_time", "plot_embeddings", "project"]


def project(session: Any, max_points: int = 2000) -> dict[str, Any]:
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
