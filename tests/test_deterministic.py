"""``TrainConfig(deterministic=True)`` / ``train --deterministic``: PyTorch's deterministic mode for the run.

On the CPU every run already repeats bit for bit from its seed (tests/test_training.py); what these tests check is
that the mode is really turned on, and that every method and PML baseline trains and evaluates under it (an op
without a deterministic kernel would raise). The GPU, where it matters, is covered by tests/test_cuda.py.
"""

import os

import method_cases
import pytest
import torch
from training_toys import (
    single_thread,  # noqa: F401 - autouse fixture
    tiny,
)

from pml_anchors.app.baselines import PREFIX
from pml_anchors.app.bench import select_baselines
from pml_anchors.app.config import TrainConfig
from pml_anchors.app.session import run
from pml_anchors.cli import main

METHODS = method_cases.builtin_method_names()
BASELINES = [PREFIX + b for b in select_baselines("all")]


@pytest.fixture(autouse=True)
def _restore_pytorch_modes(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.benchmark = before[1]


@pytest.mark.parametrize("name", [*METHODS, *BASELINES], ids=[*map(method_cases.method_id, METHODS), *BASELINES])
def test_every_method_and_baseline_trains_under_deterministic_mode_and_repeats(name):
    torch.use_deterministic_algorithms(False)
    first = run(tiny(name, limit=96, deterministic=True))
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    again = run(tiny(name, limit=96, deterministic=True))
    assert [h["loss"] for h in again["history"]] == [h["loss"] for h in first["history"]]
    assert again["precision_at_1"] == first["precision_at_1"] and first["config"]["deterministic"] is True


def test_the_flag_is_checked_and_the_cli_sets_it(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="deterministic must be True or False, got 'yes'"):
        TrainConfig(method="c_ncm", deterministic="yes")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own setting is kept
    torch.use_deterministic_algorithms(False)
    argv = ["train", "--method", "c_ncm", "--epochs", "1", "--limit", "64", "--test-limit", "60", "--device", "cpu"]
    assert main([*argv, "--deterministic", "--output", str(tmp_path)]) == 0
    assert torch.are_deterministic_algorithms_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
