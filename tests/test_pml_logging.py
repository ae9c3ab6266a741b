"""PML's logging presets (record-keeper + TensorBoard) train every registered method, with ``MetricLossOnly`` and
``TrainWithClassifier`` beside PML's ``GlobalEmbeddingSpaceTester``, as in PML's own examples; and
``pml-anchors train/bench --tensorboard DIR`` writes the same records."""

from __future__ import annotations

import json

import method_cases
import pytest
import torch
from pytorch_metric_learning import testers, trainers
from pytorch_metric_learning.utils import logging_presets
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.datasets import load_digits
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import pml_anchors
from pml_anchors.cli import main

METHODS = method_cases.method_names()
IDS = [method_cases.method_id(n) for n in METHODS]
CPU = torch.device("cpu")  # PML's trainers and testers default to CUDA whenever one is present
#: a hyper-parameter each built-in method records through PML's ``_record_these``
HYPER_PARAMETER = {
    "c_ncm": "temperature",
    "e_ncm": "eps",
    "cam": "min_norm",
    "fsc": "beta",
    "proxy_anchor": "alpha",
    "reponet": "scale",
}


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    data = torch.utils.data.TensorDataset(torch.tensor(x / 16, dtype=torch.float32), torch.tensor(y))
    return torch.utils.data.Subset(data, range(0, 400)), torch.utils.data.Subset(data, range(400, 600))


def _scalar_tags(folder) -> set[str]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return set(events.Tags()["scalars"])


@pytest.mark.parametrize("kind", ["MetricLossOnly", "TrainWithClassifier"])
@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_pml_logging_presets_train_and_record_every_method(name, kind, digits, tmp_path):
    train, val = digits
    spec = pml_anchors.get_method(name)
    loss = method_cases.build(name, 10, 16)
    width = loss.embedding_size
    torch.manual_seed(0)
    models = {
        "trunk": torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU()),
        "embedder": torch.nn.Linear(32, width),
    }
    loss_funcs = {"metric_loss": loss}
    extra = {}
    if kind == "TrainWithClassifier":
        models["classifier"] = torch.nn.Linear(width, 10)
        loss_funcs["classifier_loss"] = torch.nn.CrossEntropyLoss()
        extra["loss_weights"] = {"metric_loss": 1.0, "classifier_loss": 0.5}
    optimizers = {f"{key}_optimizer": torch.optim.Adam(model.parameters(), lr=1e-3) for key, model in models.items()}
    optimizers.update(pml_anchors.loss_optimizers(loss, torch.optim.Adam, lr=1e-3, lr_multipliers=spec))

    record_keeper, _, writer = logging_presets.get_record_keeper(tmp_path / "records", tmp_path / "tb")
    hooks = logging_presets.get_hook_container(record_keeper, log_freq=2, primary_metric="precision_at_1")
    tester = testers.GlobalEmbeddingSpaceTester(
        end_of_testing_hook=hooks.end_of_testing_hook,
        dataloader_num_workers=0,
        data_device=CPU,
        accuracy_calculator=AccuracyCalculator(include=("precision_at_1",), k=1, device=CPU),
        **pml_anchors.tester_kwargs(spec),
    )
    end_of_epoch_hook = hooks.end_of_epoch_hook(tester, {"val": val}, str(tmp_path / "models"), test_interval=1)
    trainer = getattr(trainers, kind)(
        models,
        optimizers,
        64,
        loss_funcs,
        dataset=train,
        data_device=CPU,
        dataloader_num_workers=0,
        end_of_iteration_hook=hooks.end_of_iteration_hook,
        end_of_epoch_hook=end_of_epoch_hook,
        **extra,
    )
    trainer.train(num_epochs=1)
    writer.flush()

    tags = _scalar_tags(tmp_path / "tb")
    prefix = f"metric_loss_{type(loss).__name__}"
    short = method_cases.method_id(name)
    expected = {f"{prefix}/num_classes", f"{prefix}_anchor_geometry/mean_anchor_norm", "loss_histories/metric_loss"}
    if short in HYPER_PARAMETER:
        expected.add(f"{prefix}/{HYPER_PARAMETER[short]}")
    assert expected <= tags, sorted(tags)
    assert any("precision_at_1" in tag for tag in tags)  # the tester's accuracies, through the same record keeper
    assert (tmp_path / "models" / "metric_loss_best1.pth").is_file()  # PML saves the loss (and its anchors) too
    saved = torch.load(tmp_path / "models" / "metric_loss_best1.pth", weights_only=True)
    torch.testing.assert_close(saved["anchors"], loss.anchors.detach())


def test_train_and_bench_write_tensorboard_records(toys, tmp_path):
    argv = ["--dataset", "digits", "--epochs", "1", "--limit", "80", "--test-limit", "60", "--no-progress"]
    out, logs = tmp_path / "run", tmp_path / "tb"
    assert main(["train", "--method", "toy_learnable", *argv, "--output", str(out), "--tensorboard", str(logs)]) == 0
    tags = _scalar_tags(logs)
    assert {"test/precision_at_1", "epoch/loss", "loss_histories/total_loss"} <= tags
    assert any(tag.endswith("_anchor_geometry/mean_anchor_norm") for tag in tags)
    assert json.loads((out / "results.json").read_text())["config"]["tensorboard"] == str(logs)
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--no-progress"]) == 0  # eval logs nothing

    bench_logs = tmp_path / "bench_tb"
    bench = ["bench", "--methods", "toy_fixed", "--baselines", "cross_entropy", "--no-plots", "--tensorboard"]
    assert main([*bench, str(bench_logs), *argv, "--output", str(tmp_path / "bench")]) == 0
    assert {p.name for p in bench_logs.iterdir()} == {"toy_fixed", "baseline_cross_entropy"}  # one folder per run
    assert "test/precision_at_1" in _scalar_tags(bench_logs / "toy_fixed")
