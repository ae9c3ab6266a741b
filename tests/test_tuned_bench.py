"""pml-anchors bench --tuned (pml_anchors.app.tuned_bench): tuned configurations over seeds, mean ± CI, paired t."""

from __future__ import annotations

import json

import pytest
from training_toys import (
    single_thread,  # noqa: F401 - autouse fixture
    tiny,
)

from pml_anchors.app.stats import mean_ci, paired_t
from pml_anchors.app.tune import tune
from pml_anchors.app.tuned_bench import bench_tuned, find_studies
from pml_anchors.cli import main

pytest.importorskip("optuna")
pytestmark = pytest.mark.slow  # the module's studies take about 8 s to tune on a busy CPU

SHARED = {
    k: v
    for k, v in tiny().to_dict().items()
    if k in ("epochs", "limit", "test_limit", "batch_size", "device", "backbone_kwargs")
}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """c_ncm and its PML counterpart (NormalizedSoftmaxLoss), each tuned with one trial on two folds."""
    root = tmp_path_factory.mktemp("studies")
    for method in ("c_ncm", "baseline:pml_normalized_softmax"):
        tune(
            method, output=root / method.removeprefix("baseline:"), trials=1, folds=2, on_trial=lambda _: None, **SHARED
        )
    return root


def test_tuned_bench_reports_mean_ci_and_the_paired_test(studies, tmp_path):
    summary = bench_tuned([studies], seeds=[0, 1], output=tmp_path / "b")
    rows = {r["method"]: r for r in summary["methods"]}
    assert set(rows) == {"c_ncm", "baseline:pml_normalized_softmax"}
    c_ncm, pml = rows["c_ncm"], rows["baseline:pml_normalized_softmax"]
    best = json.loads((studies / "c_ncm" / "best.json").read_text())
    assert c_ncm["params"] == best["params"] and c_ncm["budget"] == 1 and c_ncm["tuned"] == ["lr", "temperature"]
    runs = [r for r in summary["runs"] if r["method"] == "c_ncm"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert runs[0]["config"]["lr"] == best["params"]["lr"]
    assert runs[0]["config"]["loss_kwargs"]["temperature"] == best["params"]["temperature"]
    scores = c_ncm["per_seed"]["mean_average_precision_at_r"]
    assert c_ncm["stats"]["mean_average_precision_at_r"] == mean_ci(scores).as_dict()
    assert "recall_at_2" in c_ncm["stats"] and "precision_at_1" in c_ncm["stats"]
    assert c_ncm["pml_counterpart"] == "baseline:pml_normalized_softmax"
    other = pml["per_seed"]["mean_average_precision_at_r"]
    assert c_ncm["vs_pml_counterpart"] == paired_t(scores, other).as_dict()
    assert summary["test_size"] == 120 and summary["seeds"] == [0, 1]  # tiny(): test_limit 120
    assert runs[0]["test_size"] == 120  # the real test split, read once per run at the end
    text = (tmp_path / "b" / "results.md").read_text()
    assert "| c_ncm | " in text and " ± " in text and "vs pml_normalized_softmax, p " in text
    assert "120 test items" in text and "seed (0, 1)" in text and "1 trials × 2 folds" in text
    assert json.loads((tmp_path / "b" / "results.json").read_text())["methods"][0]["method"] == "c_ncm"
    assert summary["figures"] == ["intervals.png"] and (tmp_path / "b" / "intervals.png").stat().st_size > 0


def test_the_interval_plot_shows_every_method_and_seed(studies, tmp_path):
    pytest.importorskip("matplotlib")
    from pml_anchors.app.plots import plot_intervals

    summary = bench_tuned([studies], seeds=[0, 1], output=tmp_path / "b", plots=False)
    assert summary["figures"] == [] and not (tmp_path / "b" / "intervals.png").exists()
    fig = plot_intervals(summary, tmp_path / "i.png")
    left, right = fig.axes
    labels = [t.get_text() for t in left.get_yticklabels()]
    assert labels == ["c_ncm", "pml_normalized_softmax (PML)"]
    c_ncm = next(r for r in summary["methods"] if r["method"] == "c_ncm")
    bars = left.containers[0]  # the first errorbar: c_ncm's MAP@R mean ± CI
    x, _ = bars.lines[0].get_data()
    assert x[0] == pytest.approx(c_ncm["stats"]["mean_average_precision_at_r"]["mean"])
    seed_dots = [line for line in left.lines if line.get_marker() == "."][0]
    assert list(seed_dots.get_xdata()) == c_ncm["per_seed"]["mean_average_precision_at_r"]


def test_the_same_seed_trains_the_same_run_and_the_split_stays_the_studys(studies, tmp_path):
    a = bench_tuned([studies / "c_ncm"], seeds=[1], output=tmp_path / "a")
    b = bench_tuned([studies / "c_ncm"], seeds=[3, 1], output=tmp_path / "b")
    assert a["runs"][0]["mean_average_precision_at_r"] == b["runs"][1]["mean_average_precision_at_r"]
    assert a["data_seed"] == b["data_seed"] == 0 and a["test_size"] == b["test_size"]


def test_find_studies_and_bad_requests(studies, tmp_path):
    assert [p.parent.name for p in find_studies([studies])] == ["c_ncm", "pml_normalized_softmax"]
    assert find_studies([studies / "c_ncm"]) == [studies / "c_ncm" / "best.json"]
    with pytest.raises(ValueError, match="neither a study folder"):
        find_studies([tmp_path])
    with pytest.raises(ValueError, match="no such folder"):
        find_studies([tmp_path / "missing"])
    with pytest.raises(ValueError, match="distinct"):
        bench_tuned([studies], seeds=[0, 0], output=tmp_path / "x")
    with pytest.raises(ValueError, match=r"takes \['epochs'\] from the studies"):
        bench_tuned([studies], seeds=[0], output=tmp_path / "x", epochs=3)


def test_studies_tuned_with_other_settings_are_refused(studies, tmp_path):
    tune("c_ncm", output=tmp_path / "wide", trials=1, folds=2, on_trial=lambda _: None, **{**SHARED, "batch_size": 16})
    with pytest.raises(ValueError, match="different batch_size"):
        bench_tuned([studies / "pml_normalized_softmax", tmp_path / "wide"], seeds=[0], output=tmp_path / "x")


def test_cli_bench_tuned(studies, tmp_path, capsys):
    assert main(["bench", "--tuned", str(studies), "--seeds", "0,1", "--output", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "c_ncm seed 1: MAP@R" in out and "wrote results.md" in out
    assert main(["bench", "--seeds", "0,1", "--output", str(tmp_path / "c")]) == 2
    assert "--seeds goes with --tuned" in capsys.readouterr().err


def test_tuning_never_raised_the_seal(studies):
    for name in ("c_ncm", "pml_normalized_softmax"):
        assert json.loads((studies / name / "best.json").read_text())["test_split"] == "sealed, never read"


def test_studies_that_selected_their_epoch_train_for_it(tmp_path):
    """Tuned with select_epoch, each method trains for the epoch its study selected on validation (the budget
    shared); a mix of selected and unselected studies is refused."""
    root, budget = tmp_path / "selected", {**SHARED, "epochs": 3}
    for method in ("c_ncm", "baseline:pml_normalized_softmax"):
        study = root / method.removeprefix("baseline:")
        tune(method, output=study, trials=2, folds=2, on_trial=lambda _: None, select_epoch=True, **budget)
    chosen = {
        m: json.loads((root / m / "best.json").read_text())["selected_epoch"]
        for m in ("c_ncm", "pml_normalized_softmax")
    }
    summary = bench_tuned([root], seeds=[0], output=tmp_path / "b")
    assert summary["epoch_selected_on_validation"] is True
    for row in summary["methods"]:
        assert row["epochs"] == chosen[row["method"].removeprefix("baseline:")]
    assert sorted(r["epochs"] for r in summary["runs"]) == sorted(chosen.values())  # trained for exactly those
    assert summary["epochs"] == 3  # the shared budget
    assert "the epoch its study selected on validation" in (tmp_path / "b" / "results.md").read_text()
    with pytest.raises(ValueError, match="these studies selected their epoch on validation"):
        bench_tuned([root], seeds=[0], output=tmp_path / "again", select_epoch={})  # would select a second time
    mixed = tmp_path / "mixed"
    tune("c_ncm", output=mixed / "c_ncm", trials=1, folds=2, on_trial=lambda _: None, **budget)
    (mixed / "nsm").mkdir()
    (mixed / "nsm" / "best.json").write_bytes((root / "pml_normalized_softmax" / "best.json").read_bytes())
    with pytest.raises(ValueError, match=r"some not \(pml_normalized_softmax selected their epoch; c_ncm did not\)"):
        bench_tuned([mixed], seeds=[0], output=tmp_path / "x")
