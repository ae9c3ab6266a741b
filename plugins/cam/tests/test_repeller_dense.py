"""The sync-free repeller (:func:`pml_anchors_cam.repeller.repeller_dense`), which CAM uses on an accelerator and
under ``torch.compile``: the blocked search's value and gradient, and a whole-graph compiled CAM equal to eager."""

import pytest
import torch
from pml_anchors_cam.repeller import repeller_blocked, repeller_dense

import pml_anchors


def _anchors(k: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(k, d, generator=g, dtype=torch.float64)
    anchors[1] = anchors[0]  # coincident: a zero gradient, not NaN
    if k > 3:
        anchors[3] = anchors[2] + 1e-9  # nearly coincident: where the Gram form cancels
    return anchors


def _value_and_grad(fn, anchors):
    a = anchors.clone().requires_grad_(True)
    value = fn(a)
    (grad,) = torch.autograd.grad(value, a)
    return value.detach(), grad


@pytest.mark.parametrize("k", [2, 5, 40])
def test_dense_repeller_equals_the_blocked_one(k):
    anchors = _anchors(k)
    dense = _value_and_grad(lambda a: repeller_dense(a, 2.0), anchors)
    blocked = _value_and_grad(lambda a: repeller_blocked(a, 2.0), anchors)
    assert dense[0] > 0
    torch.testing.assert_close(dense, blocked, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(dense[1]).all()


def test_dense_repeller_over_the_present_classes_equals_the_blocked_one_on_them():
    anchors = _anchors(12)
    present = torch.zeros(12, dtype=torch.bool)
    present[[0, 1, 4, 7, 11]] = True
    dense = _value_and_grad(lambda a: repeller_dense(a, 2.0, present), anchors)
    blocked = _value_and_grad(lambda a: repeller_blocked(a[present.nonzero().flatten()], 2.0), anchors)
    torch.testing.assert_close(dense, blocked, rtol=1e-10, atol=1e-12)
    assert torch.all(dense[1][~present] == 0)


@pytest.mark.parametrize("batch_classes_only", [False, True])
def test_cam_compiled_whole_equals_eager(batch_classes_only):
    torch._dynamo.reset()
    loss = pml_anchors.get_loss("cam", 6, 8, batch_classes_only=batch_classes_only)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 8, generator=g, requires_grad=True)
    y = torch.randint(0, 3, (10,), generator=g)  # classes 3-5 absent: batch_classes_only leaves them out
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (loss, compiled):
        loss.anchors.grad = None
        value = fn(x, y)
        results.append((value.detach(), *torch.autograd.grad(value, [x, loss.anchors])))
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
