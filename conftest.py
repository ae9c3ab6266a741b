"""Repository-wide pytest setup: only this repository's plugins are discovered in its tests."""

import os

import pytest

from pml_anchors.plugin.manager import BUILTIN_DISTRIBUTIONS
from pml_anchors.plugin.settings import ENV_LOAD, ENV_PLUGINS_DIR

# Stray plugins installed in the environment must not leak into our tests (llm/datasette do the same).
os.environ.setdefault(ENV_LOAD, ",".join(sorted(BUILTIN_DISTRIBUTIONS)))
os.environ.pop(ENV_PLUGINS_DIR, None)  # nor a developer's one-off plugins folder


@pytest.fixture(autouse=True)
def _pml_default_device_is_off_limits(monkeypatch):
    """On a machine with a GPU, PML's trainers, testers and AccuracyCalculator default to CUDA
    (``use_cuda_if_available``) while models stay where they were built; code that leaves the device to PML
    then fails there only. Without a GPU, make that default a device nothing can compute on, so CPU CI sees
    the same failures (41 tests failed on the first GPU run before this existed)."""
    import torch

    if torch.cuda.is_available():
        return
    from pytorch_metric_learning.utils import common_functions as c_f

    monkeypatch.setattr(c_f, "use_cuda_if_available", lambda: torch.device("meta"))
