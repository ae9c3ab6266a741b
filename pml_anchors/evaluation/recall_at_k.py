"""Recall@K as a metric of PML's ``AccuracyCalculator``: the retrieval metric the metric-learning papers report.

Recall@K is the fraction of queries that have at least one item of their own class among their K nearest
neighbours (the query itself excluded when the gallery contains it). It is the metric of the deep-metric-learning
benchmarks (Song et al., CVPR 2016) and of the Proxy Anchor paper's Tables 1–3 (K = 1, 2, 4, 8 on CUB-200 and
Cars-196; K = 1, 10, 100, 1000 on SOP). Recall@1 equals PML's ``precision_at_1``.

:class:`RecallAtKCalculator` is PML's ``AccuracyCalculator`` plus one ``recall_at_<K>`` metric per K, added the way
PML documents custom metrics (a ``calculate_<name>`` method listed in ``requires_knn``), so it drops into any PML
tester:

>>> from pml_anchors.evaluation.recall_at_k import RecallAtKCalculator
>>> calculator = RecallAtKCalculator(k="max_bin_count", recall_at=(1, 2, 4, 8))  # doctest: +SKIP
>>> calculator.get_accuracy(query, query_labels)["recall_at_4"]  # doctest: +SKIP

The kNN search is widened to the largest K when ``k`` is smaller (e.g. ``k="max_bin_count"`` on SOP, whose classes
hold about 12 images, with K = 1000), and PML's own metrics are still computed on the first ``k`` neighbours only,
so they are the values plain ``AccuracyCalculator`` gives. K is capped at the number of gallery items a query can
retrieve.

Memory: ``get_accuracy`` is PML's with two of its steps in memory linear in N (the label counts and the check that
the gallery starts with the queries; :mod:`~pml_anchors.evaluation.linear_memory`), so with a bounded-memory
``knn_func`` (:class:`~pml_anchors.evaluation.knn.BlockedKNN`) a 200,000-item test set fits in 2 GB.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.accuracy_calculator import (
    AccuracyCalculator,
    get_label_match_counts,
    get_lone_query_labels,
    maybe_get_avg_of_avgs,
    nan_accuracy,
    try_getting_not_lone_labels,
)

from ..validators import check_int
from .linear_memory import label_match_counts, starts_with

#: the Ks reported by default: the CUB-200 / Cars-196 columns of the Proxy Anchor paper
DEFAULT_RECALL_AT = (1, 2, 4, 8)
PREFIX = "recall_at_"


def recall_metric(k: int) -> str:
    """The metric's name for ``k`` (PML style, like ``precision_at_1``): ``recall_at_<k>``."""
    return f"{PREFIX}{k}"


def recall_metrics_in(results: Mapping[str, Any]) -> list[tuple[int, str]]:
    """``(K, name)`` of the ``recall_at_<K>`` entries of a results dict, by K."""
    return sorted(
        (int(name[len(PREFIX) :]), name)
        for name in results
        if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit()
    )


def check_recall_at(ks: Any) -> tuple[int, ...]:
    """``ks`` as sorted, distinct positive ints; a clear ``TypeError``/``ValueError`` otherwise."""
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Iterable):
        raise TypeError(f"recall_at must be a sequence of positive ints such as (1, 2, 4, 8), got {ks!r}")
    given = list(ks)
    return tuple(sorted({check_int(k, f"each K of recall_at={given!r}", minimum=1) for k in given}))


class RecallAtKCalculator(AccuracyCalculator):
    """PML's ``AccuracyCalculator`` with ``recall_at_<K>`` metrics for every K in ``recall_at``.

    All of ``AccuracyCalculator``'s arguments keep their meaning (``include``, ``exclude``, ``k``,
    ``avg_of_avgs``, ``return_per_class``, ``label_comparison_fn``, ``knn_func``, ...); ``include`` may name the
    recall metrics. Queries whose class has no other item in the gallery are left out, as in PML's metrics.
    :meth:`get_accuracy` is PML's, in memory linear in N (:mod:`~pml_anchors.evaluation.linear_memory`).
    """

    def __init__(self, *args: Any, recall_at: Iterable[int] = DEFAULT_RECALL_AT, **kwargs: Any) -> None:
        self.recall_at = check_recall_at(recall_at)
        self.recall_metrics = tuple(recall_metric(k) for k in self.recall_at)
        # PML collects the metrics from the calculate_* attributes of the instance when it is built
        for k, name in zip(self.recall_at, self.recall_metrics):
            setattr(self, f"calculate_{name}", functools.partial(self._recall_at, k))
        self._metrics_k: int | None = None
        super().__init__(*args, **kwargs)

    def get_accuracy(
        self,
        query: Any,
        query_labels: Any,
        reference: Any = None,
        reference_labels: Any = None,
        ref_includes_query: bool = False,
        include: Any = (),
        exclude: Any = (),
    ) -> dict[str, Any]:
        """PML's ``AccuracyCalculator.get_accuracy`` (2.9), the same steps and values, with the label counts
        (default equality) and the query-prefix check in memory linear in N."""
        if reference is None:
            reference, reference_labels, ref_includes_query = query, query_labels, True
        same = reference is query
        query, query_labels, reference_labels = (
            c_f.numpy_to_torch(x).to(self.device).type(torch.float) for x in (query, query_labels, reference_labels)
        )
        reference = query if same else c_f.numpy_to_torch(reference).to(self.device).type(torch.float)
        if len(query) != len(query_labels) or len(reference) != len(reference_labels):
            raise ValueError("embeddings and labels must have the same length")
        if ref_includes_query and not (starts_with(reference, query) and starts_with(reference_labels, query_labels)):
            raise ValueError(
                "When ref_includes_query is True, the first len(query) elements of reference must be equal to query, "
                "and the first len(query_labels) elements of reference_labels equal to query_labels"
            )
        self.curr_function_dict = self.get_function_dict(include, exclude)
        kwargs: dict[str, Any] = {
            "query": query,
            "reference": reference,
            "query_labels": query_labels,
            "reference_labels": reference_labels,
            "ref_includes_query": ref_includes_query,
            "label_comparison_fn": self.label_comparison_fn,
        }
        if any(x in self.requires_knn() for x in self.get_curr_metrics()):
            if self.label_comparison_fn is torch.eq:  # PML's default comparison
                label_counts = label_match_counts(query_labels, reference_labels)
            else:
                label_counts = get_label_match_counts(query_labels, reference_labels, self.label_comparison_fn)
            lone_labels, not_lone = get_lone_query_labels(
                query_labels, label_counts, ref_includes_query, self.label_comparison_fn
            )
            num_k = self.determine_k(label_counts[1], len(reference), ref_includes_query)
            knn_distances, knn_indices = self.knn_func(query, num_k, reference, ref_includes_query)
            if not any(not_lone):
                c_f.LOGGER.warning("None of the query labels are in the reference set.")
            kwargs.update(
                label_counts=label_counts,
                knn_labels=reference_labels[knn_indices],
                knn_distances=knn_distances,
                lone_query_labels=lone_labels,
                not_lone_query_mask=not_lone,
            )
        if any(x in self.requires_clustering() for x in self.get_curr_metrics()):
            kwargs["cluster_labels"] = self.get_cluster_labels(**kwargs)
        return self._get_accuracy(self.curr_function_dict, **kwargs)

    def requires_knn(self) -> list[str]:
        return [*super().requires_knn(), *self.recall_metrics]

    def determine_k(self, bin_counts: torch.Tensor, num_reference_embeddings: int, ref_includes_query: bool) -> int:
        """PML's k, widened to the largest requested K (at most the gallery a query can retrieve)."""
        self._metrics_k = super().determine_k(bin_counts, num_reference_embeddings, ref_includes_query)
        wanted = max(
            (k for k, m in zip(self.recall_at, self.recall_metrics) if m in self.get_curr_metrics()), default=0
        )
        available = num_reference_embeddings - int(ref_includes_query)
        return max(self._metrics_k, min(wanted, available))

    def _get_accuracy(self, function_dict: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # PML's metrics see the first k neighbours, as without the recall metrics; recall sees them all
        knn = kwargs.get("knn_labels")
        narrow = kwargs
        if knn is not None and self._metrics_k is not None and knn.shape[1] > self._metrics_k:
            narrow = dict(kwargs, knn_labels=knn[:, : self._metrics_k])
            if kwargs.get("knn_distances") is not None:
                narrow["knn_distances"] = kwargs["knn_distances"][:, : self._metrics_k]
        return {name: fn(**(kwargs if name in self.recall_metrics else narrow)) for name, fn in function_dict.items()}

    def _recall_at(
        self,
        k: int,
        knn_labels: torch.Tensor,
        query_labels: torch.Tensor,
        not_lone_query_mask: torch.Tensor,
        label_counts: Any,
        **kwargs: Any,
    ) -> Any:
        knn_labels, query_labels = try_getting_not_lone_labels(knn_labels, query_labels, not_lone_query_mask)
        if knn_labels is None:
            return nan_accuracy(label_counts[0], self.return_per_class)
        gt = query_labels[:, None]
        hit = self.label_comparison_fn(gt, knn_labels[:, :k]).any(dim=1)
        return maybe_get_avg_of_avgs(hit.to(torch.float64), gt, self.avg_of_avgs, self.return_per_class)
