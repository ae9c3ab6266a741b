"""The bounded-memory kNN search (pml_anchors.evaluation.knn): the same neighbours and metrics as faiss's exact
search, in blocks, on the evaluation device."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning.utils.inference import FaissKNN

from pml_anchors.app.config import TrainConfig
from pml_anchors.cli.options import KNN_CHOICES
from pml_anchors.evaluation import METRICS, RecallAtKCalculator
from pml_anchors.evaluation.knn import KNN_BACKENDS, BlockedKNN, make_knn_func


def clustered(n: int, d: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings around one centre per class (overlapping classes, so the metrics are neither 0 nor 1)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, d, generator=g)
    return centres[labels] + 1.5 * torch.randn(n, d, generator=g), labels


@pytest.mark.parametrize("ref_includes_query", [True, False])
@pytest.mark.parametrize("block_bytes", [1, 4096, 2**28])  # one query per block, a few, all at once
def test_blocked_equals_faiss_exact_search(ref_includes_query, block_bytes):
    x, _ = clustered(700, 24, 7)
    reference = x if ref_includes_query else x[:500]
    query = x if ref_includes_query else x[500:]
    d_b, i_b = BlockedKNN(block_bytes)(query, 12, reference, ref_includes_query)
    d_f, i_f = FaissKNN()(query, 12, reference, ref_includes_query)
    assert i_b.shape == i_f.shape == (len(query), 12)
    assert torch.equal(i_b, i_f)
    torch.testing.assert_close(d_b, d_f, rtol=1e-5, atol=1e-4)  # squared L2, as faiss returns
    if ref_includes_query:  # PML's self-match removal: a query is never its own neighbour
        assert not (i_b == torch.arange(len(query))[:, None]).any()


def float64_ranking(query: torch.Tensor, reference: torch.Tensor, k: int) -> torch.Tensor:
    exact = torch.cdist(query.double(), reference.double()).pow(2)
    return torch.sort(exact, dim=1, stable=True).indices[:, :k]


def test_near_ties_follow_the_float64_ranking_not_the_float32_rounding():
    g = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(4, 256, generator=g), dim=1)
    # 300 gallery items within 1e-3 of the first query: |q|^2 + |r|^2 - 2 q.r cancels to ~1e-6 in float32
    reference = torch.cat([q[0] + 1e-3 * torch.randn(300, 256, generator=g), torch.randn(50, 256, generator=g)])
    truth = float64_ranking(q, reference, 20)
    plain = torch.topk(
        (q.pow(2).sum(1, keepdim=True) + reference.pow(2).sum(1) - 2 * q @ reference.T), 20, largest=False
    ).indices
    assert not torch.equal(plain[0], truth[0])  # float32 alone gets this ranking wrong...
    knn = BlockedKNN(2**16)
    _, indices = knn(q, 20, reference)
    assert torch.equal(indices, truth)  # ...the float64 confirmation gets it right


def test_equal_distances_are_ranked_by_index_after_a_wider_search():
    g = torch.Generator().manual_seed(2)
    reference = torch.cat([torch.randn(10, 8, generator=g), torch.ones(100, 8), torch.randn(10, 8, generator=g)])
    knn = BlockedKNN()
    distances, indices = knn(torch.ones(1, 8), 3, reference)
    assert indices.tolist() == [[10, 11, 12]] and distances.abs().max() == 0
    assert knn.last_retried_rows == 1  # 2k + 16 candidates could not rule the other 80 copies out


def test_random_embeddings_equal_the_float64_brute_force():
    x, _ = clustered(1500, 48, 15, seed=4)
    x = torch.nn.functional.normalize(x, dim=1)
    _, indices = BlockedKNN(2**18)(x, 10, x, True)
    truth = float64_ranking(x, x, 11)
    assert torch.equal(indices, truth[:, 1:])  # the query itself (distance 0) first, then PML drops it


def test_block_rows_keep_the_distances_within_the_budget():
    knn = BlockedKNN(64 * 2**20)
    rows = knn.block_rows(200_000, 4)
    assert rows >= 1 and 3 * rows * 200_000 * 4 <= 64 * 2**20
    assert BlockedKNN(1).block_rows(10**6, 4) == 1  # never zero rows


@pytest.mark.parametrize("normalize", [True, False])
def test_every_metric_equals_faiss_through_pml_accuracy_calculator(normalize):
    x, labels = clustered(2000, 32, 20, seed=3)
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
    include = (*METRICS, "recall_at_1", "recall_at_4")
    kwargs = dict(include=include, recall_at=(1, 4), k="max_bin_count", device=torch.device("cpu"))
    faiss = RecallAtKCalculator(**kwargs).get_accuracy(x, labels)
    blocked = RecallAtKCalculator(**kwargs, knn_func=BlockedKNN(2**20)).get_accuracy(x, labels)
    assert set(faiss) == set(blocked) == set(include)
    for name in include:
        assert blocked[name] == pytest.approx(faiss[name], abs=1e-6), name
    assert 0.05 < blocked["mean_average_precision_at_r"] < 0.95


def test_float64_embeddings_stay_float64():
    x, _ = clustered(300, 8, 3)
    distances, indices = BlockedKNN(4096)(x.double(), 5, x.double(), True)
    assert distances.dtype == torch.float64
    assert torch.equal(indices, BlockedKNN(4096)(x, 5, x, True)[1])


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda k: k(torch.randn(5, 3), 2, torch.randn(5, 4)), ValueError, "d = 3 but reference has d = 4"),
        (lambda k: k(torch.randn(5, 3), 0, torch.randn(5, 3)), ValueError, "k must be a positive int"),
        (lambda k: k(torch.randn(5, 3), 5, torch.randn(5, 3), True), ValueError, "k = 6 neighbours"),
        (lambda k: k(torch.arange(6).view(2, 3), 1, None), TypeError, "query must be a 2-D floating-point"),
        (lambda k: k(torch.randn(5, 3), 1, [[0.0] * 3]), TypeError, "reference must be a 2-D floating-point"),
    ],
)
def test_bad_input_is_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call(BlockedKNN())


def test_choice_of_search():
    assert isinstance(make_knn_func("auto", "cpu"), FaissKNN)  # faiss is the faster one on the CPU
    assert isinstance(make_knn_func("auto", torch.device("cuda")), BlockedKNN)  # no copy to the host
    assert isinstance(make_knn_func("blocked", "cpu"), BlockedKNN)
    assert isinstance(make_knn_func("faiss", "cuda:0"), FaissKNN)
    with pytest.raises(ValueError, match="knn must be one of auto, blocked, faiss"):
        make_knn_func("annoy")
    with pytest.raises(ValueError, match="block_bytes must be a positive int"):
        BlockedKNN(0)
    with pytest.raises(ValueError, match="knn must be one of"):
        TrainConfig(method="c_ncm", knn="exact")
    assert KNN_CHOICES == KNN_BACKENDS  # the CLI's choices (kept torch-free) are the library's


def test_a_run_evaluates_with_its_configured_search(monkeypatch):
    from training_toys import tiny

    from pml_anchors.app.session import build, evaluate_session, train
    from pml_anchors.evaluation import knn as knn_module

    calls = []
    monkeypatch.setattr(BlockedKNN, "block_rows", lambda self, n, size: calls.append(n) or 7)
    session = train(build(tiny("c_ncm", knn="blocked")))
    blocked = evaluate_session(session)
    assert calls == [120]  # the configured search ran, 7 queries at a time, on the 120 test items
    faiss = evaluate_session(session, knn="faiss")
    for name in (*METRICS, "recall_at_1", "recall_at_8"):
        assert blocked[name] == pytest.approx(faiss[name], abs=1e-6), name
    assert knn_module.make_knn_func("auto", session.device).__class__ is FaissKNN  # the CPU default


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_blocked_on_cuda_equals_faiss_on_the_cpu():
    x, labels = clustered(3000, 64, 30)
    d_g, i_g = BlockedKNN(2**20)(x.cuda(), 10, x.cuda(), True)
    assert i_g.is_cuda
    _, i_f = FaissKNN()(x, 10, x, True)
    assert (i_g.cpu() == i_f).float().mean() > 0.999  # TF32-free fp32 GEMM; near-ties may swap
