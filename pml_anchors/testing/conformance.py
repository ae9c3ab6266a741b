"""The conformance check every method plugin passes: :func:`check_method` (also ``pml-anchors validate --run``).

It builds the method's loss through the registry and checks, on the CPU, what PML's trainers and the rest of
pml-anchors rely on (see :func:`check_method`). A failed check raises :class:`ConformanceError`, an
``AssertionError`` (so pytest reports it as a failed assertion) that names the method and what is wrong; it does not
use ``assert`` statements, so it also checks under ``python -O``. Nothing here imports pytest:
:mod:`pml_anchors.testing` (the pytest plugin) re-exports :func:`check_method` beside its fixtures.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ..plugin.api import build_loss, build_trainer_hooks, get_method
from ..plugin.lazy import accepts_keyword
from ..plugin.spec import MethodSpec, validate_spec
from ..plugin.trainer_hooks import attach_hooks, chain_hooks, pml_progress_warning_hidden
from .compile_check import compile_report

__all__ = ["ConformanceError", "check_method"]


class ConformanceError(AssertionError):
    """A method failed :func:`check_method`; the message names the method and the failed check."""


def _resolve_spec(name_or_spec: Any) -> MethodSpec:
    if isinstance(name_or_spec, MethodSpec):
        return validate_spec(name_or_spec, name_or_spec.plugin or "<check_method>")
    return get_method(name_or_spec)


def check_method(
    name_or_spec: Any,
    *,
    num_classes: int = 6,
    embedding_size: int | None = 8,
    batch_size: int = 24,
    loss_kwargs: dict[str, Any] | None = None,
    hook_kwargs: dict[str, Any] | None = None,
    train_iterations: int = 3,
    train_epochs: int = 2,
    compile_check: bool = True,
) -> dict[str, Any]:
    """Conformance check for a registered method (name) or a :class:`MethodSpec`.

    Checks, on CPU (a :class:`ConformanceError` otherwise): the loss is a PML ``BaseMetricLossFunction``;
    forward/backward give a finite scalar and finite gradients; learnable anchors get gradients and are in
    ``parameters()``, fixed ones get none and are buffers; the initializer is deterministic under a seed; a
    ``state_dict`` round trip restores the anchors exactly; the method's trainer hooks run inside a
    real PML ``MetricLossOnly`` trainer (no miner) for ``train_epochs`` epochs of ``train_iterations``
    iterations, and its ``end_of_epoch_hook`` does not stop training (PML stops at a hook that returns
    ``False``), so a recipe that changes between epochs (a warm-up) runs both ways. Returns a small report.
    ``embedding_size=None`` lets methods with a forced width (polytopes) derive it.

    With ``compile_check`` the report's ``"compile"`` entry says whether the loss compiles whole and whether its
    step waits for the device (:func:`~pml_anchors.testing.compile_check.compile_report`: graph breaks and their
    reasons under ``torch._dynamo.explain``, how many of them read a value back to the host, and with a CUDA GPU
    the synchronisations of one step there). It is reported, not checked: such a method works, only slower on
    an accelerator, and ``torch.compile(loss, fullgraph=True)`` fails on it.
    """
    import torch
    from pytorch_metric_learning.losses import BaseMetricLossFunction

    spec = _resolve_spec(name_or_spec)
    kwargs = dict(loss_kwargs or {})
    where = f"method {spec.qualified_name!r}"

    def make(seed: int = 0) -> Any:
        return (
            build_loss(spec, num_classes, embedding_size, **{"seed": seed, **kwargs})
            if _takes_seed(spec)
            else build_loss(spec, num_classes, embedding_size, **kwargs)
        )

    loss = make()
    if not isinstance(loss, BaseMetricLossFunction):
        raise ConformanceError(f"{where}: loss is not a PML BaseMetricLossFunction")
    width = getattr(loss, "embedding_size", embedding_size)
    if not (isinstance(width, int) and width > 0):
        raise ConformanceError(f"{where}: cannot tell the loss's embedding_size")

    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(batch_size, width, generator=generator, requires_grad=True)
    labels = torch.arange(batch_size) % num_classes
    value = loss(embeddings, labels)
    if value.ndim != 0:
        raise ConformanceError(f"{where}: loss is not a scalar (shape {tuple(value.shape)})")
    if not torch.isfinite(value):
        raise ConformanceError(f"{where}: loss is not finite ({value})")
    value.backward()
    if embeddings.grad is None or not torch.isfinite(embeddings.grad).all():
        raise ConformanceError(f"{where}: bad embedding gradients")

    anchors = getattr(loss, "anchors", None)
    param_ids = {id(p) for p in loss.parameters()}
    if isinstance(anchors, torch.nn.Parameter):
        if id(anchors) not in param_ids:
            raise ConformanceError(f"{where}: learnable anchors are not in parameters()")
        if anchors.grad is None:
            raise ConformanceError(f"{where}: learnable anchors received no gradient")
        if not torch.isfinite(anchors.grad).all():
            raise ConformanceError(f"{where}: anchor gradients are not finite")
    elif anchors is not None:
        if id(anchors) in param_ids:
            raise ConformanceError(f"{where}: fixed anchors must not be in parameters()")
        if anchors.requires_grad:
            raise ConformanceError(f"{where}: fixed anchors must not require grad")
        if "anchors" not in loss.state_dict():
            raise ConformanceError(f"{where}: fixed anchors are not saved in state_dict")
    for name, param in loss.named_parameters():
        if param.requires_grad and param.grad is not None:
            if not torch.isfinite(param.grad).all():
                raise ConformanceError(f"{where}: gradient of {name} is not finite")

    if anchors is not None and _takes_seed(spec):
        again = make(seed=0)
        if not torch.equal(again.anchors, anchors.detach()):
            raise ConformanceError(f"{where}: initializer is not deterministic under a seed")
        other = make(seed=1)
        other.load_state_dict(loss.state_dict())
        if not torch.equal(other.anchors, anchors.detach()):
            raise ConformanceError(f"{where}: state_dict round trip changed the anchors")
        with torch.no_grad():
            if not torch.allclose(other(embeddings.detach(), labels), value.detach()):
                raise ConformanceError(f"{where}: loss differs after a state_dict round trip")

    hooks = build_trainer_hooks(spec, **(hook_kwargs or {}))
    trained = _run_trainer(loss, hooks, num_classes, width, train_iterations, train_epochs, where)
    if not math.isfinite(trained):
        raise ConformanceError(f"{where}: loss is not finite inside PML's trainer ({trained})")
    report: dict[str, Any] = {
        "method": spec.qualified_name,
        "loss": float(value.detach()),
        "trainer_loss": trained,
        "hooks": type(hooks).__name__,
    }
    if compile_check:
        report["compile"] = compile_report(make(), embeddings, labels)
    return report


def _takes_seed(spec: MethodSpec) -> bool:
    return accepts_keyword(spec.resolve_loss(), "seed")


def _run_trainer(
    loss: Any, hooks: Any, num_classes: int, width: int, iterations: int, epochs: int, where: str
) -> float:
    """``epochs`` x ``iterations`` of PML's MetricLossOnly (no miner) on tiny separable data, from seed 0 (the
    report repeats; the caller's random state is left as it was); the last iteration's loss."""
    import torch  # torch, PML and the losses layer only when a check runs: pytest loads this module every session

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        losses_seen, stopped_after = _train_tiny(loss, hooks, num_classes, width, iterations, epochs)
    if stopped_after:
        raise ConformanceError(
            f"{where}: end_of_epoch_hook returned False after epoch {stopped_after[0]} of {epochs}, which stops "
            "PML's training; return True (or None) to go on"
        )
    expected = epochs * iterations
    if len(losses_seen) != expected:
        raise ConformanceError(f"{where}: trainer ran {len(losses_seen)} iterations, expected {expected}")
    return losses_seen[-1]


def _train_tiny(
    loss: Any, hooks: Any, num_classes: int, width: int, iterations: int, epochs: int
) -> tuple[list[float], list[int]]:
    """Train a tiny trunk + embedder with ``loss`` and ``hooks``: (every iteration's loss, epochs after which the
    epoch hook asked to stop)."""
    import torch
    from pytorch_metric_learning import trainers
    from pytorch_metric_learning.utils import common_functions as c_f

    from ..losses.lr_multipliers import param_groups

    generator = torch.Generator().manual_seed(1)
    n = 16 * num_classes
    labels = torch.arange(n) % num_classes
    centres = torch.randn(num_classes, 12, generator=generator) * 3
    data = centres[labels] + 0.3 * torch.randn(n, 12, generator=generator)
    dataset = torch.utils.data.TensorDataset(data, labels)
    trunk = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.BatchNorm1d(32))
    embedder = torch.nn.Linear(32, width)
    optimizers = {
        "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-3),
        "embedder_optimizer": torch.optim.Adam(embedder.parameters(), lr=1e-3),
    }
    groups = param_groups(loss, 1e-3)
    if groups:
        optimizers["metric_loss_optimizer"] = torch.optim.Adam(groups)
    losses_seen: list[float] = []
    stopped_after: list[int] = []

    def record(trainer: Any) -> None:
        losses_seen.append(float(trainer.losses["total_loss"].detach()))

    def method_epoch_hook(trainer: Any) -> Any:
        keep_going = hooks.end_of_epoch_hook(trainer)
        if keep_going is False and trainer.epoch < epochs:  # after the last epoch it changes nothing
            stopped_after.append(trainer.epoch)
        return keep_going

    c_f.LOGGER.setLevel(logging.WARNING)
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers=optimizers,
        batch_size=min(32, n),
        loss_funcs={"metric_loss": loss},
        dataset=dataset,
        iterations_per_epoch=iterations,
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),  # the tiny models stay on the CPU; PML's default is CUDA when present
        end_of_iteration_hook=chain_hooks(hooks.end_of_iteration_hook, record),
        end_of_epoch_hook=method_epoch_hook,
    )
    attach_hooks(hooks, trainer)  # the same call pml_anchors.app makes (attach is optional)
    with pml_progress_warning_hidden():
        trainer.train(num_epochs=epochs)
    return losses_seen, stopped_after
