"""Loss factories of the 2-process gloo tests (tests/test_distributed.py), in a module the spawned children import
by its name: pytest's importlib mode names a test module ``tests.test_distributed``, which a child cannot import, so
a factory defined there does not unpickle in the child."""

import torch
from pytorch_metric_learning.losses import ProxyAnchorLoss
from toy_loss import LearnableToyLoss


def pml_proxy_anchor():
    torch.manual_seed(123)
    return ProxyAnchorLoss(4, 8)


def toy_learnable():
    return LearnableToyLoss(4, 8, seed=3)
