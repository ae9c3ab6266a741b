"""CAM's step on an accelerator and under ``torch.compile`` reads nothing back to the host, at any K.

Where a host read costs nothing (eager, CPU) the loss searches and indexes with data-dependent sizes; elsewhere it
runs forms of fixed shape (:meth:`ClassAnchorMarginLoss._device_terms`): the B x B distances of the batch's anchors
(``batch_classes_only``), the dense K x K form (K <= 4096), and above, the neighbour list padded to a fixed length,
checked between optimizer steps by ``refresh_neighbors`` (CAM's trainer hooks call it). On the CPU these tests force
that device form (``_on_host`` patched to ``False``) and check that it

* gives the host form's values and gradients over several optimizer steps (float64), refreshed or not;
* issues no host read in forward and backward (a dispatch mode that records the reading ops);
* compiles whole above 4096 anchors (0 graph breaks, eager's values), and refuses a missing or stale list.
"""

from __future__ import annotations

import pytest
import torch
from pml_anchors_cam import cam_loss
from pml_anchors_cam.hooks import CamTrainerHooks
from torch.utils._python_dispatch import TorchDispatchMode

import pml_anchors
from pml_anchors.plugin.trainer_hooks import attach_hooks, pml_progress_warning_hidden

F64 = torch.float64
#: above 4096 anchors (K^2 > DENSE_ENTRIES): the neighbour list, at the real threshold
LARGE_K = 4200


class HostReads(TorchDispatchMode):
    """Records the ops that read a value back to the host or size a result by the data (each a sync on a GPU)."""

    READS = {"_local_scalar_dense", "nonzero", "unique", "_unique", "_unique2", "unique_dim", "masked_select"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        bool_index = name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ())
        )
        if name in self.READS or bool_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def _loss(k: int, d: int, **kwargs) -> cam_loss.ClassAnchorMarginLoss:
    # margin 0.4 for standard normal anchors: many close pairs, most far ones outside 2m
    return pml_anchors.get_loss("cam", k, d, margin=0.4, seed=0, **kwargs).to(F64)


def _batch(k: int, d: int, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (size,), generator=g)
    labels[1] = labels[0]  # a class twice: counted once by batch_classes_only
    return torch.randn(size, d, generator=g, dtype=F64), labels


CASES = {
    "dense": (40, 6, {}),
    "batch_classes_only": (LARGE_K, 6, {"batch_classes_only": True}),
    "neighbour_list": (LARGE_K, 6, {}),
}


@pytest.fixture
def on_device(monkeypatch):
    """Run CAM's device form on the CPU."""
    monkeypatch.setattr(cam_loss, "_on_host", lambda anchors: False)


def _train(loss, steps: int, refresh: bool, device_form: bool, monkeypatch) -> list[tuple[torch.Tensor, ...]]:
    """(loss, embedding gradient, anchor gradient) of ``steps`` SGD steps on one batch per step."""
    if device_form:
        monkeypatch.setattr(cam_loss, "_on_host", lambda anchors: False)
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.05)
    out = []
    if refresh:
        loss.refresh_neighbors()
    for step in range(steps):
        x, y = _batch(*loss.anchors.shape, seed=step)
        x.requires_grad_(True)
        optimizer.zero_grad()
        value = loss(x, y)
        value.backward()
        out.append((value.detach(), x.grad, loss.anchors.grad.clone()))
        optimizer.step()
        if refresh:
            loss.refresh_neighbors()
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("refresh", [True, False], ids=["refreshed", "checked_in_step"])
@pytest.mark.parametrize("case", CASES)
def test_the_device_form_gives_the_host_forms_values_and_gradients(case, refresh, monkeypatch):
    k, d, kwargs = CASES[case]
    host = _train(_loss(k, d, **kwargs), 4, refresh, False, monkeypatch)
    device = _train(_loss(k, d, **kwargs), 4, refresh, True, monkeypatch)
    assert all(step[0] > 0 for step in host)
    torch.testing.assert_close(device, host, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_the_device_form_reads_nothing_back(case, on_device):
    k, d, kwargs = CASES[case]
    loss = _loss(k, d, **kwargs)
    loss.refresh_neighbors()
    x, y = _batch(k, d)
    with HostReads() as reads:
        loss(x.requires_grad_(True), y).backward()
    assert reads.seen == []
    if case == "neighbour_list":
        assert loss._neighbors.padded[0].shape[1] >= loss._neighbors.list.shape[1] > 0


def test_the_host_form_reads_and_the_detector_sees_it():
    """The CPU's own form (eager) searches with data-dependent sizes: what the device form avoids."""
    loss = _loss(LARGE_K, 6)
    x, y = _batch(LARGE_K, 6)
    with HostReads() as reads:
        loss(x, y)
    assert reads.seen


def test_above_4096_anchors_a_refreshed_step_compiles_whole_and_equals_eager():
    torch._dynamo.reset()
    loss = _loss(LARGE_K, 6)
    loss.refresh_neighbors()
    x, y = _batch(LARGE_K, 6)
    explained = torch._dynamo.explain(loss)(x, y)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.05)
    for step in range(3):
        x, y = _batch(LARGE_K, 6, seed=step)
        x.requires_grad_(True)
        results = []
        for fn in (loss, compiled):
            value = fn(x, y)
            results.append((value.detach(), *torch.autograd.grad(value, [x, loss.anchors])))
        torch.testing.assert_close(results[1], results[0], rtol=1e-10, atol=1e-12)
        loss.anchors.grad = results[0][2]
        optimizer.step()
        loss.refresh_neighbors()
    torch._dynamo.reset()


def test_a_compiled_step_refuses_a_missing_or_stale_list():
    torch._dynamo.reset()
    loss = _loss(LARGE_K, 6)
    x, y = _batch(LARGE_K, 6)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match=r"refresh_neighbors\(\)"):  # dynamo wraps the RuntimeError it traced
        compiled(x, y)
    torch._dynamo.reset()
    loss.refresh_neighbors()
    compiled(x, y)
    with torch.no_grad():
        loss.anchors[5] += 0.45 * loss.margin  # skin = m: one anchor moved past 0.45 skin, not refreshed
    with pytest.raises(RuntimeError, match="neighbour list is stale"):
        compiled(x, y)
    loss.refresh_neighbors()
    compiled(x, y)
    torch._dynamo.reset()


def test_refresh_is_a_no_op_where_the_step_needs_no_list():
    for loss in (_loss(40, 6), _loss(LARGE_K, 6, batch_classes_only=True), _loss(LARGE_K, 6, neighbor_list=False)):
        loss.refresh_neighbors()
        assert loss._neighbors is None


def test_cams_trainer_hooks_check_the_list_after_every_optimizer_step():
    """A PML trainer with CAM's hooks: after training, the list was checked against the last step's anchors."""
    from pytorch_metric_learning.trainers import MetricLossOnly

    k, d = LARGE_K, 6
    loss = _loss(k, d).float()
    g = torch.Generator().manual_seed(0)
    data = list(zip(torch.randn(96, d, generator=g), torch.randint(0, k, (96,), generator=g).tolist()))
    trunk = torch.nn.Linear(d, d)
    hooks = pml_anchors.get_trainer_hooks("cam")
    assert isinstance(hooks, CamTrainerHooks)
    trainer = MetricLossOnly(
        models={"trunk": trunk, "embedder": torch.nn.Identity()},
        optimizers={
            "trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.01),
            "metric_loss_optimizer": torch.optim.SGD(loss.parameters(), lr=0.5),
        },
        batch_size=32,
        loss_funcs={"metric_loss": loss},
        dataset=data,
        data_device=torch.device("cpu"),
        end_of_iteration_hook=hooks.end_of_iteration_hook,
        end_of_epoch_hook=hooks.end_of_epoch_hook,
        dataloader_num_workers=0,
    )
    attach_hooks(hooks, trainer)
    assert loss._neighbors is not None and loss._neighbors.answers(loss.anchors)  # attach searched it
    before = loss.anchors.detach().clone()
    with pml_progress_warning_hidden():
        trainer.train(num_epochs=1)
    assert not torch.equal(loss.anchors.detach(), before)  # the anchors moved ...
    assert loss._neighbors.answers(loss.anchors)  # ... and the list was checked after the last step
    assert loss._neighbors.stats["calls"] >= 1 + 3  # attach + one per iteration
