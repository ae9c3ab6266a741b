"""In-process methods for the training/evaluation/CLI tests (no installed plugin needed)."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning.losses import ProxyAnchorLoss
from toy_loss import LearnableToyLoss, ToyCosineLoss

from pml_anchors import MethodSpec, TrainerHooks, hookimpl


class RecordingHooks(TrainerHooks):
    """Trainer hooks that record what PML's trainer called."""

    def __init__(self, stop_after: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.stop_after = stop_after
        self.calls: list[tuple] = []

    def attach(self, trainer):
        self.calls.append(("attach", type(trainer).__name__))

    def end_of_iteration_hook(self, trainer):
        self.calls.append(("iteration", trainer.epoch, trainer.iteration))

    def end_of_epoch_hook(self, trainer):
        self.calls.append(("epoch", trainer.epoch))
        super().end_of_epoch_hook(trainer)
        return self.stop_after is None or trainer.epoch < self.stop_after


class ToyPlugin:
    @hookimpl
    def register_methods(self, register):
        register(MethodSpec(name="toy_fixed", loss=ToyCosineLoss, initializer="one_hot", defaults={"scale": 10.0}))
        register(
            MethodSpec(
                name="toy_learnable",
                loss=LearnableToyLoss,
                defaults={"scale": 10.0},
                lr_multipliers={"anchors": 10.0},
                trainer_hooks=RecordingHooks,
            )
        )
        register(MethodSpec(name="toy_raw", loss=ToyCosineLoss, defaults={"scale": 10.0}, normalize_embeddings=False))
        register(MethodSpec(name="pml_proxy", loss=ProxyAnchorLoss, lr_multipliers={"proxies": 100.0}))


def add_toys(pml_registry) -> None:
    pml_registry.add_plugin(ToyPlugin(), name="toys")


def tiny(method: str = "toy_fixed", **kw):
    """A TrainConfig that trains in about a second on CPU (digits, 64 items, batch 32, narrow CNN)."""
    from pml_anchors.app.config import TrainConfig

    values = dict(method=method, epochs=1, limit=64, test_limit=120, batch_size=32, device="cpu")
    values["backbone_kwargs"] = {"width": 8}
    values.update(kw)
    return TrainConfig(**values)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models train much faster on one thread (no OpenMP spinning on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
