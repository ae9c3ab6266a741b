"""A run's ``results.json``: identity, budget, metrics, diagnostics, history and versions, as strict JSON."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..evaluation.recall_at_k import PREFIX as RECALL_PREFIX
from ..evaluation.tester import METRICS
from ..plugin.api import get_plugins
from ..version import __version__
from .checkpoints import plain
from .data.containers import get_labels
from .output_folder import write_atomically


def results_dict(session: Any, metrics: Mapping[str, Any], wall_seconds: float | None = None) -> dict[str, Any]:
    """The JSON results of a :class:`pml_anchors.app.session.Session` evaluated to ``metrics``: identity, budget,
    metrics, diagnostics, history, versions."""
    import pytorch_metric_learning

    config = session.config
    keep = (*METRICS, *(k for k in metrics if k.startswith(RECALL_PREFIX)), "nearest_anchor_accuracy")
    keep += ("intra_class_spread", "intra_class_distance", "inter_class_distance")
    keep += ("min_anchor_angle_deg", "target_min_anchor_angle_deg", "normalize_embeddings", "num_queries")
    if "min_anchor_angle_rows_searched" in metrics:  # large K: the angle was searched from a sample of rows
        keep += ("min_anchor_angle_rows_searched",)
    return {
        "method": session.spec.name,
        "qualified_method": session.spec.qualified_name,
        "dataset": config.dataset,
        "protocol": config.protocol,
        "epochs": session.epoch,
        "seconds": session.train_seconds,  # training only, no evaluation: one measurement, not an average
        "seconds_per_epoch": session.train_seconds / session.epoch if session.epoch else None,
        "wall_seconds": wall_seconds,
        "threads": getattr(session, "threads", None) or torch.get_num_threads(),
        "threads_from": getattr(session, "threads_from", None) or "torch's default",
        "device": str(session.device),
        "amp": config.amp,
        "seed": config.seed,
        "backbone": session.backbone,
        "embedding_size": session.embedding_size,
        "num_classes": session.num_classes,
        "train_size": len(session.splits.train),
        "train_per_class": config.train_per_class,  # few-shot: items of every class kept (None: all)
        "dataset_plugin": session.splits.info.get("dataset_plugin"),  # None: a built-in dataset
        # the validation fold (fold, folds, seed, sizes, classes) evaluated instead of the test split, or with
        # select_epoch the one the epoch was selected on ("selection"); None: no validation fold
        "validation": session.splits.info.get("validation"),
        "test_size": len(session.splits.test),
        **test_classes(session.splits.test),
        "batch_size": config.batch_size,
        "lr": config.lr,
        "optimizer": config.optimizer,
        "lr_multipliers": lr_multipliers(session),
        **{k: metrics.get(k) for k in keep},
        "history": session.history,
        # with select_epoch: what was selected on the validation fold, and when the test split was read
        **(
            {"selection": session.selection.record(session.splits.info.get("validation"), session.epoch)}
            if getattr(session, "selection", None) is not None
            else {}
        ),
        "hook_history": plain(getattr(session.hooks, "history", [])),
        "hook_recipe": plain(getattr(session.hooks, "recipe", {})),
        "config": plain(config.to_dict()),
        "plugins": [
            {k: p[k] for k in ("name", "version", "status", "methods", "datasets")} for p in get_plugins(all=True)
        ],
        "versions": {
            "pml_anchors": __version__,
            "pytorch_metric_learning": pytorch_metric_learning.__version__,
            "torch": torch.__version__,
        },
    }


def lr_multipliers(session: Any) -> dict[str, float]:
    """The lr multipliers the loss's parameters trained with: ``loss_lr_multiplier`` for each trainable one when the
    config sets it (``pml-anchors tune`` searches it), else the method's."""
    multiplier = session.config.loss_lr_multiplier
    if multiplier is None:
        return dict(session.spec.lr_multipliers)
    return {name: multiplier for name, p in session.loss.named_parameters() if p.requires_grad}


def test_classes(dataset: Any) -> dict[str, int | None]:
    """``test_classes`` (how many) and ``smallest_test_class`` (its number of items) of a test split: with the test
    set's size they say how fine a metric can be (P@1 moves by 1/N) and which Recall@K are trivially high."""
    try:
        counts = torch.bincount(get_labels(dataset))
    except (TypeError, ValueError, RuntimeError, IndexError):  # no labels to count (an empty or unusual dataset)
        return {"test_classes": None, "smallest_test_class": None}
    counts = counts[counts > 0]
    if not len(counts):
        return {"test_classes": 0, "smallest_test_class": None}
    return {"test_classes": len(counts), "smallest_test_class": int(counts.min())}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if torch.is_tensor(value):
        return _json_safe(value.tolist())
    return value


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """``data`` as strict JSON (NaN/Inf → null) at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n"
    return write_atomically(path, lambda tmp: tmp.write_text(text))
