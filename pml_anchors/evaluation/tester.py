"""Evaluate every method the same way: PML's tester and ``AccuracyCalculator`` plus diagnostics.

* Retrieval: PML's ``GlobalEmbeddingSpaceTester`` with
  ``AccuracyCalculator(k="max_bin_count", include=METRICS)`` (faiss kNN), the test split queried
  against itself (query = gallery, the query itself excluded), plus Recall@K (``recall_at_1``,
  ``recall_at_2``, ...; :mod:`pml_anchors.recall_at_k`, the calculator's subclass that adds them).
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

import math
from typing import Any

import torch
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester

from .recall_at_k import DEFAULT_RECALL_AT, RecallAtKCalculator, check_recall_at, recall_metric

#: the AccuracyCalculator metrics reported, under PML's names
METRICS = ("precision_at_1", "mean_average_precision_at_r", "r_precision", "mean_average_precision")


def resolve_device(device: Any = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else → ``torch.device(device)``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available (use --device cpu or auto)")
    return device


class RecordingTester(GlobalEmbeddingSpaceTester):
    """PML's ``GlobalEmbeddingSpaceTester`` that keeps each split's embeddings after ``test()``.

    ``raw_embeddings[split]`` holds ``(embeddings before normalisation, labels)`` and
    ``embeddings[split]`` what the kNN saw (PML deletes its own copy at the end of ``test``).
    """

    def maybe_normalize(self, embeddings):
        self._last_raw = embeddings
        return super().maybe_normalize(embeddings)

    def get_all_embeddings_for_all_splits(
        self, dataset_dict, trunk_model, embedder_model, splits_to_compute_embeddings, collate_fn
    ):
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
) -> RecordingTester:
    """The tester every method is evaluated with (faiss kNN, ``k="max_bin_count"``; :data:`METRICS` and
    ``recall_at_<K>`` for each K in ``recall_at``)."""
    device = resolve_device(device)
    ks = check_recall_at(recall_at)
    include = (*METRICS, *map(recall_metric, ks))
    calculator = RecallAtKCalculator(include=include, recall_at=ks, k="max_bin_count", device=device)
    return RecordingTester(
        normalize_embeddings=normalize_embeddings,
        batch_size=batch_size,
        dataloader_num_workers=num_workers,
        data_device=device,
        accuracy_calculator=calculator,
    )


def anchor_rows(loss: Any) -> torch.Tensor | None:
    """The loss's anchors/proxies as rows ``(N, d)`` (sub-centres flattened), or ``None``.

    Knows ``anchors`` (pml-anchors), ``proxies`` (PML ProxyAnchor/ProxyNCA, ``C x d``), ``W``
    (PML classifier losses, ``d x C``) and ``fc`` (PML SoftTriple, ``d x C*K``).
    """
    for attr, transpose in (("anchors", False), ("proxies", False), ("W", True), ("fc", True)):
        value = getattr(loss, attr, None)
        if torch.is_tensor(value) and value.ndim >= 2:
            value = value.detach()
            rows = value.T if transpose else value.reshape(-1, value.shape[-1])
            return rows.float()
    return None


def predict(loss: Any, embeddings: torch.Tensor) -> torch.Tensor | None:
    """Nearest-anchor labels: ``loss.predict`` or the argmax of ``loss.get_logits``; None if neither."""
    with torch.no_grad():
        if callable(getattr(loss, "predict", None)):
            return loss.predict(embeddings)
        if callable(getattr(loss, "get_logits", None)) and anchor_rows(loss) is not None:
            try:
                return loss.get_logits(embeddings).argmax(dim=1)
            except NotImplementedError:
                return None
    return None


def class_spread(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean distance to the own class mean, mean distance between class means, and their ratio."""
    x = embeddings.detach().double().cpu()
    y = labels.detach().reshape(-1).cpu()
    classes, inverse = torch.unique(y, return_inverse=True)
    means = torch.zeros(len(classes), x.shape[1], dtype=x.dtype).index_add_(0, inverse, x)
    means /= torch.bincount(inverse, minlength=len(classes)).unsqueeze(1).to(x.dtype)
    intra = float((x - means[inverse]).norm(dim=1).mean())
    if len(classes) < 2:
        return {"intra_class_distance": intra, "inter_class_distance": float("nan"), "intra_class_spread": float("nan")}
    d = torch.cdist(means, means)
    inter = float(d[torch.triu_indices(len(classes), len(classes), 1).unbind()].mean())
    return {
        "intra_class_distance": intra,
        "inter_class_distance": inter,
        "intra_class_spread": intra / inter if inter > 0 else float("inf"),
    }


def anchor_angles(loss: Any) -> dict[str, float | None]:
    """Smallest inter-anchor angle (degrees) and the method's target (``loss.target_min_angle()``)."""
    from .anchors import min_pairwise_angle

    rows = anchor_rows(loss)
    angle = math.degrees(min_pairwise_angle(rows)) if rows is not None and rows.shape[0] > 1 else None
    target = None
    if callable(getattr(loss, "target_min_angle", None)):
        value = loss.target_min_angle()  # radians, by the plugins' convention
        target = None if value is None else math.degrees(float(value))
    return {"min_anchor_angle_deg": angle, "target_min_anchor_angle_deg": target}


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
) -> dict[str, Any]:
    """Retrieval metrics, nearest-anchor accuracy and geometry on ``splits.test`` (query = gallery).

    :param splits: a :class:`~pml_anchors.data.DatasetSplits` (uses ``test``, ``protocol``,
        ``num_classes``).
    :param spec: the method's :class:`~pml_anchors.MethodSpec`; its ``normalize_embeddings``
        decides the kNN space unless ``normalize_embeddings`` is given.
    :param num_workers: the tester's DataLoader worker processes (0: the main process).
    :param recall_at: the Ks of the ``recall_at_<K>`` metrics (:mod:`pml_anchors.recall_at_k`).
    :returns: a JSON-friendly dict: the :data:`METRICS` under PML's names, ``recall_at_<K>``,
        ``nearest_anchor_accuracy`` (``None`` under ``open_set``), the geometry diagnostics,
        ``normalize_embeddings``, ``protocol`` and ``num_queries``.
    """
    device = resolve_device(device)
    if normalize_embeddings is None:
        normalize_embeddings = True if spec is None else bool(spec.normalize_embeddings)
    protocol = getattr(splits, "protocol", "same_class")
    tester = make_tester(normalize_embeddings, device, batch_size, num_workers, recall_at)
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
            pred = predict(loss, raw.to(_module_device(loss, raw.device)))
            if pred is not None:
                result["nearest_anchor_accuracy"] = float((pred.cpu() == labels.cpu()).double().mean())
    if geometry:
        result.update(class_spread(tester.embeddings["test"][0], labels))
        result.update(anchor_angles(loss))
    result.update(normalize_embeddings=normalize_embeddings, protocol=protocol, num_queries=len(labels))
    return result


def _module_device(module: Any, default: torch.device) -> torch.device:
    """Device of the module's first parameter or buffer (``default`` if it has none)."""
    if isinstance(module, torch.nn.Module):
        for tensor in (*module.parameters(), *module.buffers()):
            return tensor.device
    return default


def embed(
    trunk: torch.nn.Module, embedder: torch.nn.Module, dataset: Any, device: Any = "auto", batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (un-normalised) embeddings and labels of ``dataset``, computed by PML's tester."""
    tester = make_tester(False, device, batch_size)
    embeddings, labels = tester.get_all_embeddings(dataset, trunk, embedder)
    return embeddings, labels[:, 0]
