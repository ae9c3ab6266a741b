"""Evaluate every method the same way: PML's ``GlobalEmbeddingSpaceTester`` and ``AccuracyCalculator`` (faiss
kNN), Recall@K, and diagnostics (nearest-anchor accuracy, class spread, anchor angles).

* :mod:`~pml_anchors.evaluation.tester`: :func:`evaluate`, :func:`make_tester`, :func:`embed`;
* :mod:`~pml_anchors.evaluation.recall_at_k`: :class:`RecallAtKCalculator`, a PML ``AccuracyCalculator``;
* :mod:`~pml_anchors.evaluation.diagnostics`: anchors as rows, predictions, spread, angles.
"""

from .diagnostics import anchor_angles, anchor_rows, class_spread, predict
from .recall_at_k import DEFAULT_RECALL_AT, RecallAtKCalculator, check_recall_at, recall_metric, recall_metrics_in
from .tester import METRICS, RecordingTester, embed, evaluate, make_tester

__all__ = [
    "DEFAULT_RECALL_AT",
    "METRICS",
    "RecallAtKCalculator",
    "RecordingTester",
    "anchor_angles",
    "anchor_rows",
    "check_recall_at",
    "class_spread",
    "embed",
    "evaluate",
    "make_tester",
    "predict",
    "recall_metric",
    "recall_metrics_in",
]
