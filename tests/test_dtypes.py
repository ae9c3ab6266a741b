"""Every method under float32, float64 and CPU bfloat16 autocast (fp16 CUDA autocast where CUDA exists).

Each gives a finite loss and finite gradients close to the float32 result, and the stored anchors keep
their dtype: unlike PML's ``cast_types``, a float64 or autocast forward never rewrites the anchor tensor
(same ``data_ptr`` and dtype before and after, for fixed buffers and learnable parameters alike).

Tolerances against float32 (relative): float64 inputs 1e-5 on the value and the gradients (the anchors may
still be float32); bf16/fp16 autocast 1e-2 on the value and 5e-2 (norm of the difference over the norm) on
the gradients: autocast runs the embeddings x anchors product in 16 bits (8 mantissa bits for bf16).
"""

import contextlib

import method_cases
import pytest
import torch

METHODS = method_cases.method_names()
IDS = [method_cases.method_id(n) for n in METHODS]
BATCH = 16

#: case -> (module dtype, input dtype, autocast dtype or None, value rtol, gradient rtol)
CASES = {
    "float32": (torch.float32, torch.float32, None, 0.0, 0.0),
    "float64_inputs": (torch.float32, torch.float64, None, 1e-5, 1e-5),
    "float64_module": (torch.float64, torch.float64, None, 1e-5, 1e-5),
    "float32_inputs_float64_module": (torch.float64, torch.float32, None, 1e-5, 1e-5),
    "cpu_bf16_autocast": (torch.float32, torch.float32, torch.bfloat16, 1e-2, 5e-2),
}


def run(name, module_dtype, input_dtype, autocast_dtype, device="cpu"):
    """One forward/backward; returns the value, the embedding and anchor gradients (float64) and the loss."""
    loss = method_cases.build(name).to(device=device, dtype=module_dtype)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(BATCH, loss.embedding_size, generator=g).to(device=device, dtype=input_dtype)
    emb.requires_grad_(True)
    labels = (torch.arange(BATCH) % method_cases.NUM_CLASSES).to(device)
    anchors = loss.anchors
    before = (anchors.data_ptr(), anchors.dtype, anchors.detach().clone())
    context = torch.autocast(device, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with context:
        value = loss(emb, labels)
    value.backward()
    assert loss.anchors is anchors, "the anchors object was replaced"
    assert (anchors.data_ptr(), anchors.dtype) == before[:2], "the stored anchors were rewritten (data/dtype)"
    assert torch.equal(anchors.detach(), before[2]), "a forward changed the anchor values"
    assert value.ndim == 0 and torch.isfinite(value), f"loss {value}"
    assert emb.grad is not None and emb.grad.dtype == input_dtype and torch.isfinite(emb.grad).all()
    anchor_grad = None
    if isinstance(anchors, torch.nn.Parameter):
        assert anchors.grad is not None and anchors.grad.dtype == anchors.dtype
        assert torch.isfinite(anchors.grad).all()
        anchor_grad = anchors.grad.double().cpu()
    else:
        assert not anchors.requires_grad and anchors.grad is None
    return float(value.detach()), emb.grad.double().cpu(), anchor_grad, loss


def assert_close_rel(got, expected, rtol, what):
    if rtol == 0:
        assert torch.equal(got, expected), what
        return
    err = float((got - expected).norm() / expected.norm().clamp_min(1e-12))
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol}"


@pytest.fixture(scope="module")
def float32_reference():
    return {}


def reference(cache, name):
    if name not in cache:
        cache[name] = run(name, torch.float32, torch.float32, None)
    return cache[name]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_dtype(name, case, float32_reference):
    module_dtype, input_dtype, autocast_dtype, rtol, grad_rtol = CASES[case]
    value, emb_grad, anchor_grad, loss = run(name, module_dtype, input_dtype, autocast_dtype)
    assert loss.anchors.dtype == module_dtype  # the module's dtype, whatever the inputs were
    ref_value, ref_emb_grad, ref_anchor_grad, _ = reference(float32_reference, name)
    assert value == pytest.approx(ref_value, rel=rtol, abs=0 if rtol == 0 else 1e-6), case
    assert_close_rel(emb_grad, ref_emb_grad, grad_rtol, "embedding gradient")
    if ref_anchor_grad is not None:
        assert_close_rel(anchor_grad, ref_anchor_grad, grad_rtol, "anchor gradient")


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_loss_dtype_float64_for_float64_and_float32_for_16_bit_inputs(name):
    loss = method_cases.build(name)
    emb = torch.randn(6, loss.embedding_size, dtype=torch.float64)
    labels = torch.arange(6) % method_cases.NUM_CLASSES
    assert loss(emb, labels).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(emb.float(), labels)
    assert value.dtype == torch.float32
    for half in (torch.float16, torch.bfloat16):  # 16-bit embeddings, no autocast: float32 loss, 16-bit gradient
        x = emb.to(half).requires_grad_()
        value = loss(x, labels)
        value.backward()
        assert value.dtype == torch.float32 and x.grad.dtype == half and torch.isfinite(x.grad).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast needs a CUDA GPU")
@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_cuda_fp16_autocast(name):
    value, emb_grad, anchor_grad, loss = run(name, torch.float32, torch.float32, torch.float16, device="cuda")
    assert loss.anchors.dtype == torch.float32 and loss.anchors.is_cuda
    ref_value, ref_emb_grad, ref_anchor_grad, _ = run(name, torch.float32, torch.float32, None, device="cuda")
    assert value == pytest.approx(ref_value, rel=1e-2, abs=1e-6)
    assert_close_rel(emb_grad, ref_emb_grad, 5e-2, "embedding gradient")
    if ref_anchor_grad is not None:
        assert_close_rel(anchor_grad, ref_anchor_grad, 5e-2, "anchor gradient")


def test_every_builtin_method_is_covered():
    assert method_cases.BUILTIN_METHODS <= set(IDS)
