"""Use a trained checkpoint: embed new inputs and classify them by the nearest anchor, without the training data.

>>> from pml_anchors.app.inference import load_trained
>>> model = load_trained("runs/c_ncm/checkpoint.pt")  # doctest: +SKIP
>>> embeddings = model(images)       # trunk + embedder, (N, d)                  # doctest: +SKIP
>>> labels = model.predict(images)   # nearest anchor / classifier argmax, (N,)  # doctest: +SKIP

The checkpoint written by ``pml-anchors train`` holds the run's config, the inputs' shape and the trunk's,
embedder's and loss's state dicts; :func:`load_trained` rebuilds the three modules from the method's registered
loss (the method's plugin must be installed) and the backbone, loads the weights and returns them in eval mode.
Nothing is read from the dataset and no backbone weights file is needed (the checkpoint has the weights).

``images`` must be preprocessed as the training data was: ``digits`` (values 0..16 divided by 16) and ``mnist``
(0..255 divided by 255) normalised with the ``mean`` and ``std`` in ``model.data_info``, an image folder with the
evaluation transform (shorter side resized to ``data_info["resize_size"]``, centre crop ``data_info["image_size"]``,
ImageNet normalisation). ``model.class_names[label]`` names a label.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import torch

from ..devices import resolve_device
from ..evaluation.diagnostics import predict
from ..plugin.api import registered_names_only
from .checkpoints import CheckpointError, load_checkpoint, trained_epoch, trained_weights
from .config import TrainConfig
from .resume import checkpoint_source, config_for_checkpoint
from .session import build_models, checkpoint_method, resolve_method

__all__ = ["TrainedModel", "load_trained"]


class TrainedModel(torch.nn.Module):
    """A trained run's ``trunk``, ``embedder`` and ``loss`` (with its anchors); ``model(x)`` gives embeddings.

    :ivar method: the method's name; :ivar config: the run's :class:`~pml_anchors.app.config.TrainConfig`;
    :ivar epoch: the epoch the checkpoint was written after; :ivar class_names: the name of each label
    :meth:`predict` returns (e.g. an image folder's class folders); :ivar data_info: the training data's
    ``DatasetSplits.info`` (for ``digits``/``mnist`` the ``mean`` and ``std`` the inputs were normalised with).
    Both are empty for checkpoints written before they were saved. :ivar input_shape: the shape of one input,
    e.g. ``(1, 8, 8)`` for ``digits``: :meth:`embed` and :meth:`predict` take ``(N, *input_shape)``.
    """

    def __init__(
        self,
        trunk: torch.nn.Module,
        embedder: torch.nn.Module,
        loss: torch.nn.Module,
        *,
        method: str,
        config: TrainConfig,
        epoch: int,
        class_names: tuple[str, ...] = (),
        data_info: dict[str, Any] | None = None,
        input_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.trunk, self.embedder, self.loss = trunk, embedder, loss
        self.method, self.config, self.epoch = method, config, epoch
        self.class_names, self.data_info = tuple(class_names), dict(data_info or {})
        self.input_shape = None if input_shape is None else tuple(int(n) for n in input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``embedder(trunk(x))``, (N, d)."""
        return self.embedder(self.trunk(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Embeddings of ``x`` in eval mode without gradients, ``batch_size`` inputs at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not torch.is_tensor(x):
            raise TypeError(f"inputs must be a torch.Tensor of shape (N, *input_shape), got {type(x).__name__}")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            shape = ", ".join(map(str, self.input_shape))
            raise ValueError(
                f"inputs must have shape (N, {shape}) like the training data, got {tuple(x.shape)}"
                + (" (reshape flat digits with x.view(-1, 1, 8, 8))" if self.input_shape == (1, 8, 8) else "")
            )
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            parts = [self(x[i : i + batch_size].to(device)) for i in range(0, x.shape[0], batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(parts) if parts else x.new_empty(0, self.config.embedding_size or 0)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class labels by the nearest anchor: the loss's ``predict`` (or its logits' argmax, for PML baselines with
        a classifier), exactly what the run's ``nearest_anchor_accuracy`` measured."""
        labels = predict(self.loss, self.embed(x, batch_size))
        if labels is None:
            raise TypeError(
                f"{self.method!r} has no anchors or classifier to predict with ({type(self.loss).__name__}); "
                "use the embeddings, e.g. with a nearest-neighbour search"
            )
        return labels

    def extra_repr(self) -> str:
        return f"method={self.method!r}, epoch={self.epoch}"


def load_trained(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedModel:
    """The trunk, embedder and loss of a ``pml-anchors train`` checkpoint, in eval mode, on ``device``.

    Raises ``FileNotFoundError`` / ``ValueError`` for a missing file or one that is not a pml-anchors checkpoint,
    and the registry's ``UnknownMethodError`` when the method's plugin is not installed.
    """
    checkpoint = load_checkpoint(path)
    config = config_for_checkpoint(checkpoint, device=str(device))
    spec, _ = resolve_method(checkpoint_method(config, checkpoint))
    # normal tensors even under the caller's torch.inference_mode(); names from the file resolve to plugins only
    with _random_state_kept(), torch.inference_mode(False), registered_names_only(checkpoint_source(checkpoint)):
        trunk, embedder, loss, _, _ = build_models(
            config,
            spec,
            int(checkpoint["num_classes"]),
            tuple(checkpoint["input_shape"]),
            resolve_device(config.device),
        )
        for name, module in (("trunk", trunk), ("embedder", embedder), ("loss", loss)):
            try:
                module.load_state_dict(trained_weights(checkpoint, name))
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(f"{checkpoint_source(checkpoint)}: its {name} weights do not fit: {exc}") from exc
    model = TrainedModel(
        trunk,
        embedder,
        loss,
        method=spec.name,
        config=config,
        epoch=trained_epoch(checkpoint),  # of its weights: with --select-epoch the selected one
        class_names=tuple(checkpoint.get("class_names", ())),
        data_info=checkpoint.get("data_info"),
        input_shape=tuple(checkpoint["input_shape"]),
    )
    return model.eval()


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    """Restore the caller's random states (Python, numpy, torch CPU and CUDA, PML's) afterwards."""
    import numpy as np
    from pytorch_metric_learning.utils import common_functions as c_f

    saved = random.getstate(), np.random.get_state(), c_f.NUMPY_RANDOM
    with torch.random.fork_rng():
        try:
            yield
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            c_f.NUMPY_RANDOM = saved[2]
