"""What a user training on a CUDA GPU relies on: every method's loss gives the CPU's values and gradients there,
`train`/`bench` run every method and baseline on the GPU end to end (fp16 AMP too), and a GPU checkpoint evaluates
and resumes on the CPU. Skipped without a GPU; run them on one with ``pytest -m cuda`` (docs/gpu.md)."""

import copy
import math

import method_cases
import pytest
import torch

from pml_anchors.app.baselines import PREFIX
from pml_anchors.app.bench import bench, select_baselines
from pml_anchors.app.checkpoints import load_checkpoint
from pml_anchors.app.config import TrainConfig
from pml_anchors.app.reload import evaluate_checkpoint
from pml_anchors.app.session import build, run, train
from pml_anchors.devices import resolve_device

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

METHODS = method_cases.builtin_method_names()
IDS = [method_cases.method_id(n) for n in METHODS]
BASELINES = [PREFIX + b for b in select_baselines("all")]
#: digits, 2 epochs: the README's main job reaches P@1 0.97-0.99 on CPU with these settings
DIGITS = dict(dataset="digits", epochs=2, seed=0, device="cuda")
#: one epoch on 512 digits: for comparing two runs' loss curves
SHORT = {**DIGITS, "epochs": 1, "limit": 512, "test_limit": 64}


def _grads(module, x, y):
    x = x.detach().clone().requires_grad_(True)
    value = module(x, y)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(value, [x, *params])
    return value.detach().cpu(), [g.detach().cpu() for g in grads]


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_loss_on_cuda_equals_cpu_in_float64(name):
    cpu = method_cases.build(name, num_classes=10, embedding_size=16).double()
    gpu = copy.deepcopy(cpu).cuda()
    width = cpu.embedding_size
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, width, generator=g, dtype=torch.float64), torch.arange(48) % 10
    value_cpu, grads_cpu = _grads(cpu, x, y)
    value_gpu, grads_gpu = _grads(gpu, x.cuda(), y.cuda())
    assert all(t.is_cuda for t in gpu.state_dict().values() if torch.is_tensor(t))
    torch.testing.assert_close(value_gpu, value_cpu, rtol=1e-10, atol=1e-12)
    assert len(grads_gpu) == len(grads_cpu)
    for a, b in zip(grads_gpu, grads_cpu):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_auto_device_is_cuda_and_puts_models_and_loss_there():
    assert resolve_device("auto").type == "cuda"
    session = build(TrainConfig(method=METHODS[0], epochs=1, limit=64, test_limit=64, device="auto"))
    for module in (session.trunk, session.embedder, session.loss):
        assert all(t.is_cuda for t in module.state_dict().values() if torch.is_tensor(t))


@pytest.mark.parametrize("name", [*METHODS, *BASELINES], ids=[*IDS, *BASELINES])
def test_trains_on_cuda_and_the_checkpoint_evaluates_on_cpu(name, tmp_path):
    results = run(TrainConfig(method=name, output=str(tmp_path), **DIGITS))
    assert results["device"].startswith("cuda") and results["epochs"] == 2
    assert results["precision_at_1"] >= 0.9, results["precision_at_1"]
    assert all(math.isfinite(h["loss"]) for h in results["history"])
    saved = load_checkpoint(tmp_path / "checkpoint.pt")  # map_location="cpu": readable without a GPU
    assert all(t.device.type == "cpu" for t in saved["loss"].values() if torch.is_tensor(t))
    on_cpu = evaluate_checkpoint(tmp_path / "checkpoint.pt", device="cpu")
    assert on_cpu["device"] == "cpu"
    # the same weights embedded by another device's kernels: at most a few of the 360 test digits move
    assert on_cpu["precision_at_1"] == pytest.approx(results["precision_at_1"], abs=0.01)
    if results["nearest_anchor_accuracy"] is not None:
        assert on_cpu["nearest_anchor_accuracy"] == pytest.approx(results["nearest_anchor_accuracy"], abs=0.01)


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_fp16_amp_with_grad_scaler_trains_finite(name):
    session = train(build(TrainConfig(method=name, amp=True, batch_size=128, **DIGITS)))
    assert session.trainer.amp_dtype == torch.float16 and session.scaler is not None
    assert session.iteration_losses and all(math.isfinite(v) for v in session.iteration_losses)
    assert session.loss.anchors.dtype == torch.float32  # the anchors are never cast in place
    assert all(torch.isfinite(p).all() for p in session.trunk.parameters())
    assert session.iteration_losses[-1] < session.iteration_losses[0]


def test_a_cuda_run_resumes_on_the_cpu(tmp_path):
    name = next(n for n in METHODS if n.endswith(":proxy_anchor"))  # learnable proxies and their optimizer
    config = dict(method=name, epochs=1, limit=256, test_limit=120, batch_size=32, seed=0)
    first = train(build(TrainConfig(**config, device="cuda", output=str(tmp_path))))
    resumed = build(TrainConfig(**{**config, "epochs": 2}, device="cpu"), resume=tmp_path / "checkpoint.pt")
    assert resumed.start_epoch == 2 and resumed.loss.proxies.device.type == "cpu"
    torch.testing.assert_close(resumed.loss.proxies, first.loss.proxies.cpu())
    state = resumed.optimizers["metric_loss_optimizer"].state
    assert state and all(t.device.type == "cpu" for s in state.values() for t in s.values() if torch.is_tensor(t))
    train(resumed)
    assert resumed.epoch == 2 and all(math.isfinite(v) for v in resumed.iteration_losses)


def test_bench_runs_every_method_and_baseline_on_cuda(tmp_path):
    summary = bench(epochs=1, output=tmp_path, plots=False, limit=300, test_limit=120, device="cuda")
    assert [r.get("error") for r in summary["runs"]] == [None] * len(summary["runs"])
    assert len(summary["runs"]) == len(METHODS) + len(BASELINES)
    assert all(r["device"].startswith("cuda") for r in summary["runs"]) and summary["device"].startswith("cuda")


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_compiled_models_train_every_method_on_cuda_like_eager_ones(name):
    """``--compile`` on CUDA (inductor, Triton kernels): the same loss curve as the eager models, within float
    rounding of the reordered kernels, and every loss's value and gradients under a compiled loss too."""
    torch._dynamo.reset()
    curves = {}
    for compiled in (False, True):
        config = TrainConfig(method=name, compile=compiled, **SHORT)
        curves[compiled] = train(build(config)).iteration_losses
    assert len(curves[True]) == len(curves[False])
    torch.testing.assert_close(torch.tensor(curves[True]), torch.tensor(curves[False]), rtol=2e-2, atol=1e-3)
    loss = method_cases.build(name).cuda()
    x = torch.randn(16, loss.embedding_size, device="cuda", requires_grad=True)
    y = torch.arange(16, device="cuda") % method_cases.NUM_CLASSES
    (expected,) = torch.autograd.grad(loss(x, y), x)
    (got,) = torch.autograd.grad(torch.compile(loss)(x, y), x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_deterministic_cuda_runs_repeat_bit_for_bit(name):
    """``deterministic=True`` on CUDA: two seeded runs give identical loss curves and weights (without it the
    GPU's kernels add up in varying order). The mode stays on for the process, so it is switched off after."""
    try:
        sessions = [train(build(TrainConfig(method=name, deterministic=True, **SHORT))) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert sessions[0].iteration_losses == sessions[1].iteration_losses
    for a, b in zip(sessions[0].trunk.state_dict().values(), sessions[1].trunk.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(sessions[0].loss.anchors, sessions[1].loss.anchors)


@pytest.mark.parametrize("pooling", ["max", "avg+max"])
def test_resnet_pooling_trains_under_deterministic_cuda(pooling):
    """GMP / GAP + GMP (Proxy Anchor's embedding network) is allowed by PyTorch's deterministic mode on CUDA, unlike
    nn.AdaptiveMaxPool2d, and repeats bit for bit."""
    config = TrainConfig(
        method="proxy_anchor", backbone="resnet18", backbone_kwargs={"pooling": pooling}, deterministic=True, **SHORT
    )
    try:
        sessions = [train(build(config)) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert sessions[0].iteration_losses == sessions[1].iteration_losses
    assert all(math.isfinite(v) for v in sessions[0].iteration_losses)
