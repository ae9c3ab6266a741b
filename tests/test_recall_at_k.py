"""pml_anchors.evaluation.recall_at_k: Recall@K as a PML AccuracyCalculator metric, checked against a brute-force kNN."""

import json

import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from training_toys import (
    single_thread,  # noqa: F401 - autouse fixture
    tiny,
)

from pml_anchors.app.config import TrainConfig
from pml_anchors.app.session import build, evaluate_session, run, train
from pml_anchors.cli import main
from pml_anchors.evaluation import embed
from pml_anchors.evaluation.recall_at_k import RecallAtKCalculator, check_recall_at, recall_metrics_in

CPU = torch.device("cpu")
PML_METRICS = ("precision_at_1", "mean_average_precision", "mean_average_precision_at_r", "r_precision")
PML_METRICS += ("mean_reciprocal_rank",)


def brute_force_recall(query, labels, k, reference=None, reference_labels=None, same=None):
    """Per-query hit (0/1): an item of the query's class among its k nearest (exact distances, self excluded)."""
    self_search = reference is None
    reference = query if self_search else reference
    reference_labels = labels if self_search else reference_labels
    d = torch.cdist(query.double(), reference.double())
    if self_search:
        d.fill_diagonal_(float("inf"))
    k = min(k, reference.shape[0] - int(self_search))
    nearest = reference_labels[d.argsort(dim=1)[:, :k]]
    same = same or (lambda a, b: a == b)
    return same(labels[:, None], nearest).any(dim=1).double()


def classes(num_classes, per_class):
    return torch.arange(num_classes).repeat_interleave(per_class)


def test_recall_at_k_equals_a_brute_force_knn_and_recall_at_1_is_precision_at_1():
    torch.manual_seed(0)
    labels = classes(20, 3)
    x = torch.randn(len(labels), 8) + 0.7 * torch.randn(20, 8)[labels]
    ks = (1, 2, 4, 8, 59, 1000)  # 59 = the whole gallery; 1000 is capped to it
    r = RecallAtKCalculator(k="max_bin_count", recall_at=ks, exclude=("NMI", "AMI"), device=CPU).get_accuracy(x, labels)
    for k in ks:
        assert r[f"recall_at_{k}"] == pytest.approx(brute_force_recall(x, labels, k).mean().item()), k
    assert r["recall_at_1"] == r["precision_at_1"]
    assert r["recall_at_59"] == r["recall_at_1000"] == 1.0
    assert 0.0 < r["recall_at_1"] < r["recall_at_8"] < 1.0  # the test is not vacuous


def test_widening_the_knn_leaves_pmls_own_metrics_unchanged():
    """K = 8 > max_bin_count - 1 = 2: the search is widened for recall, yet MAP, MRR, ... are PML's values."""
    torch.manual_seed(1)
    labels = classes(30, 3)
    x = torch.randn(len(labels), 4)
    ours = RecallAtKCalculator(k="max_bin_count", recall_at=(8,), include=(*PML_METRICS, "recall_at_8"), device=CPU)
    pml = AccuracyCalculator(k="max_bin_count", include=PML_METRICS, device=CPU)
    got, expected = ours.get_accuracy(x, labels), pml.get_accuracy(x, labels)
    assert {m: got[m] for m in PML_METRICS} == expected
    assert got["recall_at_8"] == pytest.approx(brute_force_recall(x, labels, 8).mean().item())
    assert ours.determine_k(torch.tensor([3]), len(labels), True) == 8  # widened from max_bin_count - 1 = 2


def test_separate_query_and_gallery_and_lone_queries_are_left_out():
    torch.manual_seed(2)
    gallery_labels = classes(5, 4)
    gallery = torch.randn(len(gallery_labels), 6)
    query_labels = torch.tensor([0, 1, 2, 3, 4, 7, 7])  # class 7 has nothing in the gallery
    query = torch.randn(len(query_labels), 6)
    calc = RecallAtKCalculator(k="max_bin_count", recall_at=(1, 3), include=("recall_at_1", "recall_at_3"), device=CPU)
    r = calc.get_accuracy(query, query_labels, gallery, gallery_labels, ref_includes_query=False)
    kept = query_labels != 7
    for k in (1, 3):
        hits = brute_force_recall(query[kept], query_labels[kept], k, gallery, gallery_labels)
        assert r[f"recall_at_{k}"] == pytest.approx(hits.mean().item())


def test_avg_of_avgs_return_per_class_and_a_custom_label_comparison():
    torch.manual_seed(3)
    labels = torch.cat([classes(4, 2), torch.full((12,), 4)])  # one large class: the plain mean is dominated by it
    x = torch.randn(len(labels), 3)
    hits = brute_force_recall(x, labels, 2)
    per_class = [hits[labels == c].mean().item() for c in range(5)]
    kw = dict(k="max_bin_count", recall_at=(2,), include=("recall_at_2",), device=CPU)
    per = RecallAtKCalculator(return_per_class=True, **kw).get_accuracy(x, labels)["recall_at_2"]
    assert per == pytest.approx(per_class)
    assert RecallAtKCalculator(avg_of_avgs=True, **kw).get_accuracy(x, labels)["recall_at_2"] == pytest.approx(
        sum(per_class) / 5
    )

    def same_parity(a, b):
        return (a % 2) == (b % 2)

    calc = RecallAtKCalculator(label_comparison_fn=same_parity, **kw)
    expected = brute_force_recall(x, labels, 2, same=same_parity).mean().item()
    assert calc.get_accuracy(x, labels)["recall_at_2"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("ks", "error", "match"),
    [
        ((0, 1), ValueError, r"each K of recall_at=\[0, 1\] must be a positive int, got 0"),
        ((1.0,), TypeError, r"each K of recall_at=\[1.0\] must be a positive int, got float 1.0"),
        ((True,), TypeError, r"each K of recall_at=\[True\] must be a positive int, got bool True"),
        ("1,2", TypeError, "recall_at must be a sequence of positive ints"),
        (4, TypeError, "recall_at must be a sequence of positive ints"),
    ],
)
def test_bad_ks_are_clear_errors(ks, error, match):
    with pytest.raises(error, match=match):
        check_recall_at(ks)
    with pytest.raises(error, match=match):
        RecallAtKCalculator(recall_at=ks)
    with pytest.raises(error, match=match):
        TrainConfig(method="c_ncm", recall_at=ks)


def test_ks_are_sorted_and_deduplicated_and_found_back_in_results():
    assert check_recall_at([8, 1, 2, 2]) == (1, 2, 8)
    assert check_recall_at([]) == ()
    results = {"recall_at_10": 0.9, "recall_at_2": 0.8, "precision_at_1": 0.7, "recall_at_x": 1}
    assert recall_metrics_in(results) == [(2, "recall_at_2"), (10, "recall_at_10")]


def test_a_run_reports_the_configured_recall_at_k_from_its_own_embeddings(toys):
    session = train(build(tiny("toy_fixed", recall_at=[1, 3, 500])))  # 120 test items: 500 is capped
    r = evaluate_session(session)
    emb, labels = embed(session.trunk, session.embedder, session.splits.test, "cpu")
    emb = torch.nn.functional.normalize(emb)  # the kNN space of toy_fixed
    for k in (1, 3, 500):
        assert r[f"recall_at_{k}"] == pytest.approx(brute_force_recall(emb, labels, k).mean().item(), abs=1e-6)
    assert r["recall_at_1"] == r["precision_at_1"] and r["recall_at_500"] == 1.0
    assert "recall_at_2" not in r
    assert "recall_at_4" in evaluate_session(session, recall_at=(4,))


def test_results_json_cli_summary_and_eval_carry_recall_at_k(toys, tmp_path, capsys):
    out = tmp_path / "run"
    results = run(tiny("toy_fixed", output=str(out), eval_every_epoch=True))
    assert [k for k in results if k.startswith("recall_at_")] == [f"recall_at_{k}" for k in (1, 2, 4, 8)]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["recall_at_4"] == results["recall_at_4"]
    assert on_disk["history"][-1]["recall_at_8"] == results["recall_at_8"]

    argv = ["eval", "--checkpoint", str(out / "checkpoint.pt"), "--device", "cpu", "--no-progress"]
    assert main([*argv, "--recall-at", "1,10", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert "recall_at_10" in again and "recall_at_4" not in again
    assert again["recall_at_1"] == pytest.approx(results["recall_at_1"])
    assert main(argv) == 0  # the checkpoint's own Ks
    assert "R@8 " in capsys.readouterr().out  # printed as train prints it


def test_cli_rejects_a_bad_recall_at_with_the_expected_form(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--method", "c_ncm", "--recall-at", "1,x"])
    assert "expected comma-separated whole numbers such as 1,2,4,8, got '1,x'" in capsys.readouterr().err


def test_drops_into_a_plain_pml_tester_under_pmls_key_names():
    """docs/evaluation.md: RecallAtKCalculator in place of AccuracyCalculator in PML's own tester."""
    from pytorch_metric_learning import testers

    import pml_anchors

    torch.manual_seed(4)
    labels = classes(6, 10)
    x = torch.randn(len(labels), 5) + 2 * torch.randn(6, 5)[labels]
    calculator = pml_anchors.RecallAtKCalculator(k="max_bin_count", recall_at=(1, 2, 4, 8), device=CPU)
    tester = testers.GlobalEmbeddingSpaceTester(
        accuracy_calculator=calculator, data_device=CPU, dataloader_num_workers=0
    )
    dataset = torch.utils.data.TensorDataset(x, labels)
    got = tester.test({"val": dataset}, 0, torch.nn.Identity())["val"]
    expected = brute_force_recall(torch.nn.functional.normalize(x), labels, 4).mean().item()  # the tester normalises
    assert got["recall_at_4_level0"] == pytest.approx(expected)
    assert got["recall_at_1_level0"] == got["precision_at_1_level0"]


def test_label_counts_by_sorting_equal_pmls_comparison_matrix():
    from pytorch_metric_learning.utils.accuracy_calculator import get_label_match_counts

    from pml_anchors.evaluation.linear_memory import label_match_counts

    g = torch.Generator().manual_seed(0)
    query = torch.randint(0, 40, (300,), generator=g).float()
    reference = torch.randint(10, 60, (500,), generator=g).float()  # query labels 0-9 are not in the gallery
    for q, r in ((query, reference), (query, query), (query.view(-1, 2), reference.view(-1, 2))):  # (N, L) labels
        ours, pml = label_match_counts(q, r), get_label_match_counts(q, r, torch.eq)
        assert torch.equal(ours[0], pml[0]) and torch.equal(ours[1], pml[1])
    assert label_match_counts(query, reference)[1][:10].tolist() == [0] * 10


@pytest.mark.parametrize("ref_includes_query", [True, False])
def test_get_accuracy_equals_pmls_own(ref_includes_query):
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 12, (400,), generator=g)
    x = torch.randn(400, 16, generator=g) + 2 * torch.nn.functional.one_hot(labels, 16).float()
    query, query_labels = x[:150], labels[:150]
    reference, reference_labels = (x, labels) if ref_includes_query else (x[150:], labels[150:])
    include = ("precision_at_1", "mean_average_precision_at_r", "r_precision", "mean_average_precision")
    cpu = torch.device("cpu")
    ours = RecallAtKCalculator(include=include, k="max_bin_count", device=cpu).get_accuracy(
        query, query_labels, reference, reference_labels, ref_includes_query
    )
    pml = AccuracyCalculator(include=include, k="max_bin_count", device=cpu).get_accuracy(
        query, query_labels, reference, reference_labels, ref_includes_query
    )
    assert ours == pytest.approx(pml, abs=1e-12)
    if ref_includes_query:
        with pytest.raises(ValueError, match="first len\\(query\\) elements of reference must be equal to query"):
            RecallAtKCalculator(include=include, device=cpu).get_accuracy(query + 1, query_labels, x, labels, True)


def test_prefix_check_in_blocks_is_allclose(monkeypatch):
    from pml_anchors.evaluation import linear_memory

    monkeypatch.setattr(linear_memory, "BLOCK_ELEMENTS", 64)  # 8 rows of 8 at a time
    x = torch.randn(50, 8)
    assert linear_memory.starts_with(x, x[:37].clone()) and linear_memory.starts_with(x, x)
    y = x.clone()
    y[36, 5] += 1e-3  # the last row of the prefix, in the fifth block
    assert not linear_memory.starts_with(x, y[:37]) and torch.allclose(x[:36], y[:36])
    assert not linear_memory.starts_with(x[:10], x[:20]) and not linear_memory.starts_with(x, x[:5, :4])
