"""``pml-anchors train --nproc N`` (pml_anchors/launch.py): N gloo processes on CPU, rank 0 writes the results."""

import json

import pytest
import torch

from pml_anchors.app.checkpoints import load_checkpoint
from pml_anchors.cli import main

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

TINY = ["--dataset", "digits", "--limit", "160", "--test-limit", "100", "--device", "cpu", "--no-progress"]


def test_train_nproc_2(tmp_path, capsys):
    """Proxy Anchor: its warm-up freezes the trunk for epoch 1, so DDP must take the trunk on from epoch 2."""
    out = tmp_path / "run"
    argv = ["train", "--method", "proxy_anchor", *TINY, "--epochs", "2", "--batch-size", "32", "--nproc", "2"]
    assert main([*argv, "--output", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    results = json.loads((out / "results.json").read_text())
    assert printed == results
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "results.json"]  # rank 0 only
    assert results["method"] == "proxy_anchor" and results["epochs"] == 2 and len(results["history"]) == 2
    assert results["world_size"] == 2 and results["batch_size"] == 32 and results["batch_size_per_process"] == 16
    assert results["global_batch_size"] == 32  # what each step trained on
    assert results["replica_max_abs_diff"] <= 1e-6  # every process ends with the same weights and anchors
    assert 0.0 <= results["precision_at_1"] <= 1.0 and all(h["loss"] > 0 for h in results["history"])
    checkpoint = load_checkpoint(out / "checkpoint.pt")  # torch.load(weights_only=True)
    assert checkpoint["epoch"] == 2 and "anchors" in checkpoint["loss"]
    assert not any(k.startswith("module.") for k in (*checkpoint["trunk"], *checkpoint["embedder"]))
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["precision_at_1"] == pytest.approx(results["precision_at_1"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "proxy_anchor", "--nproc", "0"], "nproc must be a positive int, got 0"),
        (["--method", "proxy_anchor", "--nproc", "2", "--batch-size", "3"], "must be at least 2 x nproc = 4, got 3"),
        (["--method", "baseline:pml_contrastive", "--nproc", "2"], "it uses a miner"),
        (
            ["--method", "proxy_anchor", "--nproc", "3", "--batch-size", "64"],
            "--batch-size 64 does not divide among 3 processes (it is the global batch); use a multiple of 3, "
            "e.g. 63 or 66",
        ),
        (["--method", "proxy_anchor", "--nproc", "2", "--timeout", "0"], "timeout_s must be a finite number > 0"),
        (["--method", "proxy_anchr", "--nproc", "2"], "unknown method 'proxy_anchr'"),
        (
            ["--method", "proxy_anchor", "--nproc", "2", "--max-restarts", "-1"],
            "max_restarts must be an int >= 0, got -1",
        ),
    ],
)
def test_nproc_errors_before_spawning(capsys, extra, message):
    assert main(["train", *TINY, "--epochs", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pml-anchors train: error:") and message in err


def test_nproc_under_torchrun_is_refused(monkeypatch, capsys):
    """Under torchrun every process runs the command: one that also started processes would multiply them."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    assert main(["train", *TINY, "--method", "proxy_anchor", "--nproc", "2"]) == 2
    assert "under torchrun use its --nproc-per-node and --max-restarts" in capsys.readouterr().err


def test_batch_size_that_does_not_divide_is_refused_before_any_process_starts(monkeypatch):
    """``--nproc 3 --batch-size 64`` trained on 63 per step while results.json said 64: now refused up front."""
    from pml_anchors.app import launch as launch_module
    from pml_anchors.app.config import TrainConfig

    def no_spawn(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(launch_module, "run_workers", no_spawn)
    config = TrainConfig(method="proxy_anchor", batch_size=64, device="cpu")
    with pytest.raises(ValueError, match=r"^--batch-size 64 does not divide among 3 processes .* e\.g\. 63 or 66$"):
        launch_module.launch(config, 3)
    with pytest.raises(ValueError, match="e.g. 64 or 68"):
        launch_module.launch(TrainConfig(method="proxy_anchor", batch_size=66, device="cpu"), 4)


def test_train_nproc_2_plateau_schedule_lowers_every_processs_lr_at_the_same_epoch(tmp_path, capsys):
    """Every process steps its plateau schedulers on the same global-batch loss; ``replica_max_abs_diff``
    fingerprints the lrs too, so a process that lowered its lr alone would show a difference >= 0.5 here."""
    argv = ["train", "--method", "proxy_anchor", *TINY, "--limit", "64", "--epochs", "6", "--batch-size", "32"]
    argv += ["--optimizer", "sgd", "--lr", "1000", "--lr-schedule", "plateau", "--lr-gamma", "0.5"]
    argv += ["--lr-patience", "0"]  # lr 1000: the loss stops falling after 2 epochs (8 kept falling for 6)
    assert main([*argv, "--nproc", "2", "--json", "--no-output"]) == 0
    results = json.loads(capsys.readouterr().out)
    lrs = [h["lr"] for h in results["history"]]
    assert lrs[0] == 1000.0 and lrs[-1] < 1000.0  # the schedule lowered the lr during the run
    assert results["replica_max_abs_diff"] <= 1e-6
