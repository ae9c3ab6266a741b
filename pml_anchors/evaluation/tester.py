"""Evaluate every method the same way: PML's tester and ``AccuracyCalculator`` plus diagnostics.

* Retrieval: PML's ``GlobalEmbeddingSpaceTester`` with
  ``AccuracyCalculator(k="max_bin_count", include=METRICS)`` (exact kNN: faiss on the CPU, the blocked search of
  :mod:`~pml_anchors.evaluation.knn` on CUDA), the test split queried
  against itself (query = gallery, the query itself excluded), plus Recall@K (``recall_at_1``,
  ``recall_at_2``, ...; :mod:`pml_anchors.evaluation.recall_at_k`, the calculator's subclass that adds them).
  Embeddings are L2-normalised before the kNN iff ``spec.normalize_embeddings`` (CAM and E-NCM are
  evaluated on raw Euclidean distances). Results use PML's metric names (``precision_at_1``, ...).
* ``nearest_anchor_accuracy``: the loss used as a classifier (``loss.predict``, else the argmax of
  ``loss.get_logits``) on the raw test embeddings; ``None`` under ``open_set`` (the test classes
  have no anchors) or for losses without anchors.
* Geometry, measured in the space the kNN sees: ``intra_class_spread`` = mean distance of a test
  embedding to its class mean divided by the mean distance between class means (smaller is
  tighter); ``min_anchor_angle_deg`` = smallest angle between two anchor rows, next to
  ``target_min_anchor_angle_deg`` (``loss.target_min_angle()`` in radians, converted; when the
  method defines one).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester

from ..devices import resolve_device
from .diagnostics import anchor_angles, class_spread, module_device, predict
from .knn import make_knn_func
from .recall_at_k import DEFAULT_RECALL_AT, RecallAtKCalculator, check_recall_at, recall_metric

__all__ = ["METRICS", "RecordingTester", "embed", "evaluate", "make_tester"]

#: the AccuracyCalculator metrics reported, under PML's names
METRICS = ("precision_at_1", "mean_average_precision_at_r", "r_precision", "mean_average_precision")


class RecordingTester(GlobalEmbeddingSpaceTester):
    """PML's ``GlobalEmbeddingSpaceTester`` that keeps each split's embeddings after ``test()``.

    ``raw_embeddings[split]`` holds ``(embeddings before normalisation, labels)`` and
    ``embeddings[split]`` what the kNN saw (PML deletes its own copy at the end of ``test``).
    """

    def maybe_normalize(self, embeddings: torch.Tensor) -> torch.Tensor:
        self._last_raw = embeddings
        return super().maybe_normalize(embeddings)

    def get_all_embeddings_for_all_splits(
        self,
        dataset_dict: dict[str, Any],
        trunk_model: torch.nn.Module,
        embedder_model: torch.nn.Module,
        splits_to_compute_embeddings: list[str],
        collate_fn: Any,
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        self.embeddings, self.raw_embeddings = {}, {}
        for split in splits_to_compute_embeddings:
            emb, labels = self.get_all_embeddings(dataset_dict[split], trunk_model, embedder_model, collate_fn)
            self.embeddings[split] = (emb, labels)
            self.raw_embeddings[split] = (self._last_raw, labels)
        return dict(self.embeddings)


def make_tester(
    normalize_embeddings: bool = True,
    device: Any = "auto",
    batch_size: int = 256,
    num_workers: int = 0,
    recall_at: Any = DEFAULT_RECALL_AT,
    knn: str = "auto",
) -> RecordingTester:
    """The tester every method is evaluated with (``k="max_bin_count"``; :data:`METRICS` and ``recall_at_<K>`` for
    each K in ``recall_at``; the kNN search chosen by ``knn``, see :func:`~pml_anchors.evaluation.knn.make_knn_func`)."""
    device = resolve_device(device)
    ks = check_recall_at(recall_at)
    include = (*METRICS, *map(recall_metric, ks))
    knn_func = make_knn_func(knn, device)
    calculator = RecallAtKCalculator(include=include, recall_at=ks, k="max_bin_count", device=device, knn_func=knn_func)
    return RecordingTester(
        normalize_embeddings=normalize_embeddings,
        batch_size=batch_size,
        dataloader_num_workers=num_workers,
        data_device=device,
        accuracy_calculator=calculator,
    )


def evaluate(
    trunk: torch.nn.Module,
    embedder: torch.nn.Module,
    loss: Any,
    splits: Any,
    spec: Any = None,
    device: Any = "auto",
    *,
    epoch: int = 0,
    batch_size: int = 256,
    normalize_embeddings: bool | None = None,
    geometry: bool = True,
    num_workers: int = 0,
    recall_at: Any = DEFAULT_RECALL_AT,
    knn: str = "auto",
) -> dict[str, Any]:
    """Retrieval metrics, nearest-anchor accuracy and geometry on ``splits.test`` (query = gallery).

    :param splits: a :class:`~pml_anchors.app.data.DatasetSplits` (uses ``test``, ``protocol``,
        ``num_classes``).
    :param spec: the method's :class:`~pml_anchors.MethodSpec`; its ``normalize_embeddings``
        decides the kNN space unless ``normalize_embeddings`` is given.
    :param num_workers: the tester's DataLoader worker processes (0: the main process).
    :param recall_at: the Ks of the ``recall_at_<K>`` metrics (:mod:`pml_anchors.evaluation.recall_at_k`).
    :param knn: the kNN search (:func:`~pml_anchors.evaluation.knn.make_knn_func`): ``"auto"`` (faiss on the CPU,
        the bounded-memory blocked search on CUDA), ``"faiss"`` or ``"blocked"``.
    :returns: a JSON-friendly dict: the :data:`METRICS` under PML's names, ``recall_at_<K>``,
        ``nearest_anchor_accuracy`` (``None`` under ``open_set``), the geometry diagnostics,
        ``normalize_embeddings``, ``protocol`` and ``num_queries``.
    """
    device = resolve_device(device)
    if normalize_embeddings is None:
        normalize_embeddings = True if spec is None else bool(spec.normalize_embeddings)
    protocol = getattr(splits, "protocol", "same_class")
    tester = make_tester(normalize_embeddings, device, batch_size, num_workers, recall_at, knn)
    accuracies = tester.test({"test": splits.test}, epoch, trunk, embedder)["test"]
    names = (*METRICS, *tester.accuracy_calculator.recall_metrics)
    result: dict[str, Any] = {m: float(accuracies[f"{m}_level0"]) for m in names}
    raw, labels = tester.raw_embeddings["test"]
    labels = labels[:, 0]
    result["nearest_anchor_accuracy"] = None
    if protocol == "same_class" and loss is not None:
        num_classes = getattr(splits, "num_classes", None)
        loss_classes = getattr(loss, "num_classes", None)  # PML's NormalizedSoftmax/SoftTriple leave it 0
        if isinstance(loss_classes, int) and loss_classes > 0:
            num_classes = loss_classes if num_classes is None else min(num_classes, loss_classes)
        if num_classes is None or int(labels.max()) < num_classes:
            pred = predict(loss, raw.to(module_device(loss, raw.device)))
            if pred is not None:
                result["nearest_anchor_accuracy"] = float((pred.cpu() == labels.cpu()).double().mean())
    if geometry:
        result.update(class_spread(tester.embeddings["test"][0], labels))
        result.update(anchor_angles(loss))
    result.update(normalize_embeddings=normalize_embeddings, protocol=protocol, num_queries=len(labels))
    return result


def embed(
    trunk: torch.nn.Module, embedder: torch.nn.Module, dataset: Any, device: Any = "auto", batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (un-normalised) embeddings and labels of ``dataset``, computed by PML's tester."""
    tester = make_tester(False, device, batch_size)
    embeddings, labels = tester.get_all_embeddings(dataset, trunk, embedder)
    return embeddings, labels[:, 0]
