"""Every method under ``torch.compile``: the same values and gradients as eager, and no stale anchors.

Users compile their training step (model *and* loss) or the loss itself. Every loss compiles whole (no graph
break: tests/test_fullgraph.py); its fused log-sum-exp runs as a custom operator inside the graph. These tests
check what a user relies on:

* a compiled loss gives the eager loss's value and gradients (embeddings and learnable anchors), batch after
  batch, with a different batch size too (a recompile);
* anchors changed after the first compiled call (an optimizer step, ``load_state_dict``, an in-place copy into a
  fixed buffer) are seen by the next compiled call: nothing is baked into the graph as a constant;
* a whole compiled training step (model, loss, backward, optimizer step) follows the eager one step for step.

Backends: ``aot_eager`` (dynamo + AOT autograd, no code generation) and ``inductor`` (the default, which
generates C++ on CPU and needs a C++ compiler).
"""

from __future__ import annotations

import shutil

import method_cases
import pytest
import torch

METHODS = method_cases.method_names()
IDS = [method_cases.method_id(n) for n in METHODS]
#: float32 values and gradients: compiled code may reassociate sums (inductor fuses reductions)
RTOL, ATOL = method_cases.RTOL, method_cases.ATOL
BACKENDS = [
    "aot_eager",
    pytest.param(
        "inductor",
        marks=pytest.mark.skipif(
            shutil.which("cc") is None and shutil.which("g++") is None, reason="inductor on CPU needs a C++ compiler"
        ),
    ),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_compiled_loss_gives_the_eager_values_and_gradients(name, backend):
    loss = method_cases.build(name)
    compiled = torch.compile(loss, backend=backend)
    for i, size in enumerate((16, 16, 12)):  # the third batch size forces a recompile
        emb, labels = method_cases.batch(loss, size, seed=i)
        expected = method_cases.step(loss, loss, emb, labels)
        method_cases.assert_same(
            method_cases.step(compiled, loss, emb, labels), expected, f"batch {i} ({size} samples)"
        )


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_compiled_loss_sees_anchors_changed_after_it_was_compiled(name):
    loss = method_cases.build(name)
    compiled = torch.compile(loss, backend="aot_eager")
    emb, labels = method_cases.batch(loss, 16, seed=0)
    first = method_cases.step(compiled, loss, emb, labels)
    g = torch.Generator().manual_seed(1)
    new = torch.randn(loss.anchors.shape, generator=g)
    new = new / new.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        loss.anchors.copy_(new)  # what an optimizer step does to a parameter; a buffer's in-place update
    expected = method_cases.step(loss, loss, emb, labels)
    assert not torch.allclose(first[0], expected[0]), "the new anchors do not change the loss: test is void"
    method_cases.assert_same(
        method_cases.step(compiled, loss, emb, labels), expected, "after an in-place anchor update"
    )
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in loss.state_dict().items()}
    state["anchors"] = torch.randn(loss.anchors.shape, generator=g)
    loss.load_state_dict(state)
    method_cases.assert_same(
        method_cases.step(compiled, loss, emb, labels),
        method_cases.step(loss, loss, emb, labels),
        "after load_state_dict",
    )


def _train(name: str, compile_step: bool, steps: int = 3):
    torch.manual_seed(0)
    loss = method_cases.build(name)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, loss.embedding_size))
    params = list(model.parameters()) + [p for p in loss.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)

    def step(x, y):
        optimizer.zero_grad()
        value = loss(model(x), y)
        value.backward()
        return value.detach()

    if compile_step:
        step = torch.compile(step, backend="aot_eager")
    g = torch.Generator().manual_seed(0)
    values = []
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g)
        y = torch.randint(0, method_cases.NUM_CLASSES, (16,), generator=g)
        values.append(step(x, y))
        optimizer.step()
    return torch.stack(values), [p.detach().clone() for p in params]


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_a_compiled_training_step_follows_the_eager_one(name):
    eager_values, eager_params = _train(name, compile_step=False)
    values, params = _train(name, compile_step=True)
    torch.testing.assert_close(values, eager_values, rtol=RTOL, atol=ATOL)
    for got, expected in zip(params, eager_params, strict=True):
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


def test_a_loss_used_without_compile_never_imports_dynamo_and_one_first_called_compiled_runs():
    """Importing ``torch._dynamo`` costs about a second: eager use must not pay it. And when the very first call
    of a loss in a process happens inside a compiled function, it still runs (eagerly) and gives the eager value."""
    import subprocess
    import sys

    code = (
        "import sys, torch, pml_anchors\n"
        "loss = pml_anchors.get_loss('proxy_anchor', 4, 8)\n"
        "x = torch.randn(16, 8, requires_grad=True); y = torch.arange(16) % 4\n"
        "loss(x, y).backward()\n"
        "print('dynamo imported:', 'torch._dynamo' in sys.modules)\n"
        "fresh = pml_anchors.get_loss('c_ncm', 4, 8)\n"
        "value = torch.compile(fresh, backend='aot_eager')(x, y)\n"
        "torch.testing.assert_close(value, fresh(x, y))\n"
        "print('compiled first call ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dynamo imported: False" in proc.stdout and "compiled first call ok" in proc.stdout
