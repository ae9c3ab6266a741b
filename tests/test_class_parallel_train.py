"""``pml-anchors train --class-parallel``: the anchors sharded over the processes of ``--nproc`` (or torchrun), the
checkpoint holding all of them (pml_anchors/app/launch.py, docs/class_parallel.md)."""

import json

import pytest
import torch

from pml_anchors.app.checkpoints import load_checkpoint
from pml_anchors.cli import main

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

TINY = ["--dataset", "digits", "--limit", "128", "--test-limit", "100", "--device", "cpu", "--no-progress"]
RUN = ["train", "--method", "proxy_anchor", *TINY, "--backbone", "lenetpp", "--epochs", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Proxy Anchor (learnable proxies, Adam) trained for two steps by 2 processes, without and with
    --class-parallel."""
    root = tmp_path_factory.mktemp("class_parallel")
    for name, extra in (("plain", []), ("sharded", ["--class-parallel"])):
        assert main([*RUN, "--nproc", "2", *extra, "--output", str(root / name)]) == 0
    return root


def test_class_parallel_trains_as_data_parallel_and_writes_every_anchor(runs):
    plain, sharded = (load_checkpoint(runs / name / "checkpoint.pt") for name in ("plain", "sharded"))
    assert sharded["config"]["class_parallel"] is True
    anchors = sharded["loss"]["anchors"]
    assert anchors.shape == plain["loss"]["anchors"].shape == (10, 64)  # gathered from both processes
    assert torch.allclose(anchors, plain["loss"]["anchors"], atol=1e-5)  # float32: the same two steps
    for name in ("trunk", "embedder"):
        assert all(torch.allclose(sharded[name][k], plain[name][k], atol=1e-4) for k in plain[name])
    state, plain_state = (c["optimizers"]["metric_loss_optimizer"]["state"][0] for c in (sharded, plain))
    assert state["exp_avg"].shape == (10, 64) and torch.allclose(state["exp_avg"], plain_state["exp_avg"], atol=1e-6)
    a, b = (json.loads((runs / name / "results.json").read_text()) for name in ("plain", "sharded"))
    assert b["world_size"] == 2 and b["replica_max_abs_diff"] == 0.0  # trunk and embedder: the same on both
    assert b["nearest_anchor_accuracy"] == pytest.approx(a["nearest_anchor_accuracy"], abs=0.02)  # all 10 anchors
    # the hooks' anchor geometry: of all 10 proxies (rank 0's block alone, 5 proxies, has other angles and norms)
    (geometry,), (plain_geometry,) = b["hook_history"], a["hook_history"]
    assert geometry["epoch"] == plain_geometry["epoch"] == 1
    for key in ("min_anchor_angle_deg", "mean_anchor_norm"):
        assert geometry[key] == pytest.approx(plain_geometry[key], rel=1e-5)


def test_its_checkpoint_evaluates_and_resumes_in_one_process(runs, tmp_path, capsys):
    checkpoint = runs / "sharded" / "checkpoint.pt"
    results = json.loads((runs / "sharded" / "results.json").read_text())
    assert main(["eval", "--checkpoint", str(checkpoint), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision_at_1"] == pytest.approx(results["precision_at_1"])
    copy = tmp_path / "resumed"
    copy.mkdir()
    (copy / "checkpoint.pt").write_bytes(checkpoint.read_bytes())
    (copy / "results.json").write_text(json.dumps(results))
    assert main(["train", "--resume", str(copy / "checkpoint.pt"), "--epochs", "2", "--no-progress"]) == 0
    assert "resuming a --class-parallel run in one process" in capsys.readouterr().err
    assert load_checkpoint(copy / "checkpoint.pt")["epoch"] == 2


def test_class_parallel_needs_several_processes_and_a_supported_method(capsys):
    assert main([*RUN, "--class-parallel", "--no-output"]) == 2
    assert "run with --nproc N (N > 1) or under torchrun" in capsys.readouterr().err
    assert main(["train", "--method", "cam", *TINY, "--nproc", "2", "--class-parallel", "--no-output"]) == 2
    assert "class_parallel is not supported by 'cam'" in capsys.readouterr().err
