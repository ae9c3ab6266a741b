"""Test kit for plugin authors (also a ``pytest11`` plugin, so the fixtures are always available).

* ``pml_registry`` fixture: an isolated registry with entry-point discovery blocked (and no
  ``PML_ANCHORS_PLUGINS_DIR``); add the plugin under test with ``pml_registry.add_plugin(module_or_object)``.
* :func:`check_method`: the conformance check every plugin runs in its own tests::

      from pml_anchors.testing import check_method

      def test_conformance():
          check_method("my_method")

Heavy imports happen inside functions so that loading this pytest plugin costs nothing.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytest


class IsolatedRegistry:
    """Handle returned by the ``pml_registry`` fixture."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add_plugin(self, plugin: Any, name: str | None = None) -> str:
        from .plugins import register_plugin

        name = register_plugin(plugin, name)
        self.names.append(name)
        return name

    def remove_plugin(self, name: str) -> None:
        from .plugins import unregister_plugin

        unregister_plugin(name)
        self.names.remove(name)


@pytest.fixture
def pml_registry(monkeypatch):
    """An empty registry (core geometries only): installed plugins and plugins-dir files are not loaded."""
    from . import plugins

    monkeypatch.setenv(plugins.ENV_LOAD, "")
    monkeypatch.delenv(plugins.ENV_DISABLE, raising=False)
    monkeypatch.delenv(plugins.ENV_STRICT, raising=False)
    monkeypatch.setenv(plugins.ENV_PLUGINS_DIR, "")  # set, not deleted: restored even if `--plugins-dir` sets it
    plugins.reset()
    handle = IsolatedRegistry()
    yield handle
    plugins.reset()


def _resolve_spec(name_or_spec: Any):
    from .registry import MethodSpec, get_method, validate_spec

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
) -> dict[str, Any]:
    """Conformance check for a registered method (name) or a :class:`MethodSpec`.

    Asserts, on CPU: the loss is a PML ``BaseMetricLossFunction``; forward/backward give a finite
    scalar and finite gradients; learnable anchors get gradients and are in ``parameters()``,
    fixed ones get none and are buffers; the initializer is deterministic under a seed; a
    ``state_dict`` round trip restores the anchors exactly; the method's trainer hooks run inside a
    real PML ``MetricLossOnly`` trainer (no miner) for ``train_epochs`` epochs of ``train_iterations``
    iterations, and its ``end_of_epoch_hook`` does not stop training (PML stops at a hook that returns
    ``False``), so a recipe that changes between epochs (a warm-up) runs both ways. Returns a small report.
    ``embedding_size=None`` lets methods with a forced width (polytopes) derive it.
    """
    import torch
    from pytorch_metric_learning.losses import BaseMetricLossFunction

    from .registry import build_loss, build_trainer_hooks

    spec = _resolve_spec(name_or_spec)
    kwargs = dict(loss_kwargs or {})
    where = f"method {spec.qualified_name!r}"

    def make(seed=0):
        return (
            build_loss(spec, num_classes, embedding_size, **{"seed": seed, **kwargs})
            if _takes_seed(spec)
            else build_loss(spec, num_classes, embedding_size, **kwargs)
        )

    loss = make()
    assert isinstance(loss, BaseMetricLossFunction), f"{where}: loss is not a PML BaseMetricLossFunction"
    width = getattr(loss, "embedding_size", embedding_size)
    assert isinstance(width, int) and width > 0, f"{where}: cannot tell the loss's embedding_size"

    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(batch_size, width, generator=generator, requires_grad=True)
    labels = torch.arange(batch_size) % num_classes
    value = loss(embeddings, labels)
    assert value.ndim == 0, f"{where}: loss is not a scalar (shape {tuple(value.shape)})"
    assert torch.isfinite(value), f"{where}: loss is not finite ({value})"
    value.backward()
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all(), f"{where}: bad embedding gradients"

    anchors = getattr(loss, "anchors", None)
    param_ids = {id(p) for p in loss.parameters()}
    if isinstance(anchors, torch.nn.Parameter):
        assert id(anchors) in param_ids, f"{where}: learnable anchors are not in parameters()"
        assert anchors.grad is not None, f"{where}: learnable anchors received no gradient"
        assert torch.isfinite(anchors.grad).all(), f"{where}: anchor gradients are not finite"
    elif anchors is not None:
        assert id(anchors) not in param_ids, f"{where}: fixed anchors must not be in parameters()"
        assert not anchors.requires_grad, f"{where}: fixed anchors must not require grad"
        assert "anchors" in loss.state_dict(), f"{where}: fixed anchors are not saved in state_dict"
    for name, param in loss.named_parameters():
        if param.requires_grad and param.grad is not None:
            assert torch.isfinite(param.grad).all(), f"{where}: gradient of {name} is not finite"

    if anchors is not None and _takes_seed(spec):
        again = make(seed=0)
        assert torch.equal(again.anchors, anchors.detach()), f"{where}: initializer is not deterministic under a seed"
        other = make(seed=1)
        other.load_state_dict(loss.state_dict())
        assert torch.equal(other.anchors, anchors.detach()), f"{where}: state_dict round trip changed the anchors"
        with torch.no_grad():
            assert torch.allclose(other(embeddings.detach(), labels), value.detach()), (
                f"{where}: loss differs after a state_dict round trip"
            )

    hooks = build_trainer_hooks(spec, **(hook_kwargs or {}))
    trained = _run_trainer(loss, hooks, num_classes, width, train_iterations, train_epochs, where)
    assert math.isfinite(trained), f"{where}: loss is not finite inside PML's trainer ({trained})"
    return {
        "method": spec.qualified_name,
        "loss": float(value.detach()),
        "trainer_loss": trained,
        "hooks": type(hooks).__name__,
    }


def _takes_seed(spec) -> bool:
    from .registry import _accepts

    return _accepts(spec.resolve_loss(), "seed")


def _run_trainer(loss, hooks, num_classes: int, width: int, iterations: int, epochs: int, where: str) -> float:
    """``epochs`` x ``iterations`` of PML's MetricLossOnly (no miner) on tiny separable data."""
    import logging

    import torch
    from pytorch_metric_learning import trainers
    from pytorch_metric_learning.utils import common_functions as c_f

    from .optim import param_groups
    from .trainer_hooks import chain_hooks
    from .training import attach_hooks

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

    def record(trainer):
        losses_seen.append(float(trainer.losses["total_loss"].detach()))

    def method_epoch_hook(trainer):
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
    attach_hooks(hooks, trainer)  # the same call pml_anchors.training makes (attach is optional)
    trainer.train(num_epochs=epochs)
    assert not stopped_after, (
        f"{where}: end_of_epoch_hook returned False after epoch {stopped_after[0]} of {epochs}, which stops "
        "PML's training; return True (or None) to go on"
    )
    expected = epochs * iterations
    assert len(losses_seen) == expected, f"{where}: trainer ran {len(losses_seen)} iterations, expected {expected}"
    return losses_seen[-1]


def make_plugin_env(path: Any, *project_dirs: Any) -> str:
    """Create a virtualenv at ``path`` that sees the current environment, pip-install the given
    plugin projects into it (``--no-deps``), and return its Python executable.

    The new environment reuses this environment's packages (torch is not reinstalled) through a
    ``.pth`` file, so installing a plugin there never touches the running environment. For
    end-to-end tests of entry-point discovery with real distributions.
    """
    import subprocess
    import sysconfig
    import venv
    from pathlib import Path

    path = Path(path)
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(path)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site_dir = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    parents = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in sorted(parents))
    Path(site_dir, "_pml_anchors_parent_env.pth").write_text(lines)
    if project_dirs:
        import shutil

        copies = []  # build from copies so the source trees get no build/ or .egg-info
        for d in project_dirs:
            copies.append(path / "src" / Path(d).name)
            shutil.copytree(d, copies[-1], ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                *[str(d) for d in copies],
            ],
            check=True,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    return str(python)
