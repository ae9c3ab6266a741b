"""Torch's path of the log-sum-exp against the hand-written kernel: the same results wherever either may run.

Small problems (B x R up to ``NATIVE_MAX_ENTRIES``, a linear or cosine map along the classes, unchunked) run as
``F.cross_entropy`` / ``torch.logsumexp`` over the map's differentiable logits instead of the kernel. A user must not
be able to tell which one ran beyond float rounding: values, gradients wrt the samples and the rows, dtypes, shapes,
whether ``own`` is differentiable, errors. Each test below forces both paths (``NATIVE_MAX_ENTRIES``) and checks
which one ran (a spy on ``_native_lse``).
"""

from __future__ import annotations

import datetime
import math
import os
import socket
from functools import partial

import pytest
import torch

import pml_anchors
from pml_anchors.losses import logsumexp
from pml_anchors.losses.logsumexp import CosineRowsLogits, LinearLogits, class_cross_entropy, class_logsumexp

F64 = torch.float64
#: the two computations, by the limit that forces each (-1: even an empty batch takes the kernel)
PATHS = {"kernel": -1, "torch": 1 << 40}


_NATIVE = logsumexp._native_lse


def _force(monkeypatch, path: str, limit: int | None = None) -> list[int]:
    """Force ``path`` (or set ``limit`` on the CPU) and return a list that grows by one for every call of torch's
    path."""
    limit = PATHS[path] if limit is None else limit
    monkeypatch.setattr(logsumexp, "NATIVE_MAX_ENTRIES", {"cpu": limit, "accelerator": limit})
    calls: list[int] = []

    def spy(*args):
        calls.append(1)
        return _NATIVE(*args)

    monkeypatch.setattr(logsumexp, "_native_lse", spy)
    return calls


def _both(monkeypatch, fn, torch_applies: bool = True) -> tuple[dict, dict]:
    """``fn()`` on the kernel and on torch's path, each checked to have run where it should."""
    out = {}
    for path in PATHS:
        calls = _force(monkeypatch, path)
        out[path] = fn()
        assert bool(calls) == (path == "torch" and torch_applies), f"{path}: torch's path ran {len(calls)} times"
    return out["kernel"], out["torch"]


def _lse(x, rows, y, make_map, *, group=1, ce=False, chunk=None, weight_own=0.3):
    """``(out, own)`` and the gradients of a weighted sum of them wrt whichever of ``x``, ``rows`` require grad."""

    def run():
        xx, rr = x, rows  # as given (strides too); torch.autograd.grad accumulates nothing into them
        if ce:
            out, own = class_cross_entropy(xx, rr, make_map(), y, group=group, chunk_size=chunk)
            total = (out * torch.linspace(0.5, 1.5, out.shape[0])).sum()
        else:
            out, own = class_logsumexp(xx, rr, make_map(), exclude=y, group=group, chunk_size=chunk)
            total = (out * torch.linspace(0.5, 1.5, out.shape[0])).sum() + weight_own * own.sum()
        res = {"out": out, "own": own, "out_grad": out.requires_grad, "own_grad": own.requires_grad}
        needs = [t for t in (xx, rr) if t.requires_grad]
        grads = torch.autograd.grad(total, needs) if needs else ()
        res.update(zip([n for n, t in (("dx", xx), ("drows", rr)) if t.requires_grad], grads))
        return res

    return run


def _same(kernel: dict, native: dict, rtol: float, atol: float, skip=()) -> None:
    assert kernel.keys() == native.keys()
    for key, a in kernel.items():
        b = native[key]
        if key in skip:
            assert a.dtype == b.dtype and a.shape == b.shape, key
        elif torch.is_tensor(a):
            torch.testing.assert_close(b.detach(), a.detach(), rtol=rtol, atol=atol, msg=lambda m, k=key: f"{k}: {m}")
        else:
            assert a == b, f"{key}: kernel {a}, torch's path {b}"


def _problem(b, k, d, dtype, group=1, seed=0, rows_grad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g).to(dtype).requires_grad_()
    rows = torch.randn(k * group, d, generator=g).to(dtype).requires_grad_(rows_grad)
    y = torch.randint(0, k, (b,), generator=g)
    return x, rows, y, g


MAPS = {"linear": LinearLogits, "cosine": CosineRowsLogits}
FORMS = [(1, False), (1, True), (3, False), (3, True)]  # (group, ce): exclusion or cross-entropy, sub-centres


@pytest.mark.parametrize("map_name", list(MAPS))
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_paths_agree_in_value_gradient_dtype_and_grad_flags(map_name, dtype, monkeypatch):
    """Every (group, ce) form, scale 1 and 16, with and without a bias, rows learnable and fixed."""
    rtol, atol = (1e-12, 1e-12) if dtype == F64 else (2e-5, 2e-5)
    for (group, ce), scale, with_bias, rows_grad in (
        (f, s, b, r) for f in FORMS for s in (1.0, 16.0) for b in (False, True) for r in (True, False)
    ):
        x, rows, y, g = _problem(6, 5, 4, dtype, group, seed=group + int(scale), rows_grad=rows_grad)
        bias = torch.randn(6, generator=g, dtype=dtype) if with_bias else None
        kernel, native = _both(monkeypatch, _lse(x, rows, y, partial(MAPS[map_name], scale, bias), group=group, ce=ce))
        _same(kernel, native, rtol, atol)
        assert kernel["out"].dtype == dtype and kernel["own"].shape == (6, group)
        assert kernel["own_grad"] is not ce  # cross-entropy's own logits are constants, the exclusion's not


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("map_name", list(MAPS))
def test_paths_agree_on_16_bit_inputs(dtype, map_name, monkeypatch):
    """16-bit inputs, 16-bit bias: outputs in float32 equal to float32 rounding (a bias rounded to 16 bits after its
    base-2 scaling, as the kernel once did, differs by ~1e-3); the 16-bit gradients are as close to the float64 ones
    on both paths (the cosine's row gradient cancels, the same on both: a few 16-bit units)."""
    eps = torch.finfo(dtype).eps
    for group, ce in FORMS:
        x, rows, y, g = _problem(6, 5, 4, dtype, group, seed=group)
        bias = torch.randn(6, generator=g).to(dtype)
        kernel, native = _both(monkeypatch, _lse(x, rows, y, partial(MAPS[map_name], 16.0, bias), group=group, ce=ce))
        _same(kernel, native, 1e-5, 1e-5, skip=("dx", "drows"))
        assert kernel["out"].dtype == torch.float32 and kernel["dx"].dtype == dtype
        x64, rows64 = x.detach().double().requires_grad_(), rows.detach().double().requires_grad_()
        _force(monkeypatch, "torch")
        exact = _lse(x64, rows64, y, partial(MAPS[map_name], 16.0, bias.double()), group=group, ce=ce)()
        for key in ("dx", "drows"):
            scale = exact[key].abs().max()
            for path, got in (("kernel", kernel), ("torch", native)):
                err = float((got[key].double() - exact[key]).abs().max() / scale)
                assert err < 8 * eps, f"{path} {key} (group {group}, ce {ce}): {err:.2e} from float64"


def test_a_bias_is_a_constant_in_the_logits_dtype_on_both_paths(monkeypatch):
    """``bias`` is documented as a constant: a float64 bias on float32 inputs gives float32 results and a bias that
    requires grad gets none, on either path (torch's path once returned float64 and back-propagated into it)."""
    x, rows, y, g = _problem(5, 4, 3, torch.float32)
    for bias in (torch.randn(5, generator=g, dtype=F64), torch.randn(5, generator=g, requires_grad=True)):
        for make in MAPS.values():
            for ce in (False, True):
                kernel, native = _both(monkeypatch, _lse(x, rows, y, partial(make, 2.0, bias), ce=ce))
                _same(kernel, native, 2e-5, 2e-5)
                assert native["out"].dtype == torch.float32
                if bias.requires_grad:
                    assert torch.autograd.grad(native["out"].sum(), bias, allow_unused=True)[0] is None


@pytest.mark.parametrize("group", [1, 3])
def test_an_empty_batch_and_one_sample(group, monkeypatch):
    """B = 0 gives empty results and zero row gradients on both paths (torch's path once failed reshaping an empty
    batch); B = 1 agrees as any batch."""
    for b in (0, 1):
        for ce in (False, True):
            x, rows, y, _ = _problem(b, 5, 4, F64, group)
            kernel, native = _both(monkeypatch, _lse(x, rows, y, lambda: CosineRowsLogits(3.0), group=group, ce=ce))
            _same(kernel, native, 1e-12, 1e-12)
            assert native["out"].shape == (b,) and native["own"].shape == (b, group)
            if b == 0:
                assert native["dx"].shape == (0, 4) and not native["drows"].any()


def test_bad_labels_are_a_clear_error_on_both_paths(monkeypatch):
    """Labels of another length or shape once excluded the wrong entries silently (gather/scatter on the first rows
    only); float labels were truncated."""
    x, rows, _, _ = _problem(5, 5, 4, torch.float32)
    for path in PATHS:
        _force(monkeypatch, path)
        for labels in (torch.tensor([0, 1, 2]), torch.arange(5).view(5, 1), torch.arange(7) % 5):
            with pytest.raises(ValueError, match=r"exclude must have shape \(5,\), one class per row of x, got"):
                class_logsumexp(x, rows, LinearLogits(), exclude=labels)
            with pytest.raises(ValueError, match=r"labels must have shape \(5,\), one class per row of x, got"):
                class_cross_entropy(x, rows, LinearLogits(), labels, group=1)
        with pytest.raises(TypeError, match="labels must be an integer tensor of class indices, got torch.float32"):
            class_cross_entropy(x, rows, LinearLogits(), torch.zeros(5))


def test_integer_labels_of_any_width_non_contiguous_inputs_and_zero_rows(monkeypatch):
    """int32/uint8 labels, a strided x and column-major rows, and cosine rows shorter than eps (the norm clamped as
    ``F.normalize``: no NaN, the same gradients)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 8, generator=g, dtype=F64)[:, ::2].requires_grad_()
    rows = torch.randn(4, 10, generator=g, dtype=F64).t().requires_grad_()  # (10, 4), column-major
    with torch.no_grad():
        rows[3].zero_()
        rows[6].fill_(1e-14)
    y = torch.tensor([0, 3, 4, 1, 3, 2])
    assert not x.is_contiguous() and not rows.is_contiguous()
    for labels in (y.int(), y.to(torch.uint8), y):
        for group, ce in ((1, False), (1, True), (2, False), (2, True)):
            kernel, native = _both(
                monkeypatch, _lse(x, rows, labels, lambda: CosineRowsLogits(2.0), group=group, ce=ce)
            )
            _same(kernel, native, 1e-10, 1e-10)
            assert all(torch.isfinite(native[k]).all() for k in ("out", "dx", "drows"))


def test_one_and_two_classes(monkeypatch):
    """K = 1: excluding the only class leaves nothing (the kernel runs: lse = -inf, zero gradient, no NaN); its
    cross-entropy is 0 with a zero gradient on both paths. K = 2 (one class left) and rows == group agree."""
    x, rows, y, _ = _problem(5, 1, 4, F64)
    kernel, native = _both(monkeypatch, _lse(x, rows, y, lambda: LinearLogits(2.0), weight_own=0.0), False)
    assert torch.equal(native["out"], torch.full((5,), -math.inf, dtype=F64)) and not native["dx"].any()
    for group in (1, 2):
        x, rows, y, _ = _problem(5, 1, 4, F64, group)
        kernel, native = _both(monkeypatch, _lse(x, rows, y, lambda: LinearLogits(2.0), group=group, ce=True))
        _same(kernel, native, 0, 1e-12)
        assert native["out"].abs().max() < 1e-12 and native["dx"].abs().max() < 1e-12
        x, rows, y, _ = _problem(5, 2, 4, F64, group)
        for ce in (False, True):
            kernel, native = _both(monkeypatch, _lse(x, rows, y, lambda: LinearLogits(2.0), group=group, ce=ce))
            _same(kernel, native, 1e-12, 1e-12)


def test_a_chunk_size_of_all_rows_still_takes_torch_path(monkeypatch):
    x, rows, y, _ = _problem(6, 5, 4, F64, 2)
    for chunk, native_runs in ((10, True), (11, True), (9, False), (4, False)):
        calls = _force(monkeypatch, "torch")
        got = _lse(x, rows, y, lambda: LinearLogits(1.5), group=2, ce=True, chunk=chunk)()
        assert bool(calls) == native_runs, chunk
        _force(monkeypatch, "kernel")
        _same(_lse(x, rows, y, lambda: LinearLogits(1.5), group=2, ce=True)(), got, 1e-12, 1e-12)


def test_torch_path_second_backward_and_exact_double_backward(monkeypatch):
    """retain_graph: a second backward equals the first; create_graph: exact second derivatives (gradgradcheck) for
    the exclusion and sub-centre cross-entropy with a bias and a cosine map."""
    _force(monkeypatch, "torch")
    x, rows, y, g = _problem(4, 3, 3, F64, 2)
    bias = torch.randn(4, generator=g, dtype=F64)
    lse, own = class_logsumexp(x, rows, CosineRowsLogits(1.3, bias), exclude=y, group=2)
    total = lse.sum() + own.sum()
    first = torch.autograd.grad(total, (x, rows), retain_graph=True)
    assert all(torch.equal(a, b) for a, b in zip(first, torch.autograd.grad(total, (x, rows))))

    def excl(x, rows):
        return class_logsumexp(x, rows, CosineRowsLogits(1.3, bias), exclude=y, group=2)

    def ce(x, rows):
        return class_cross_entropy(x, rows, LinearLogits(0.7, bias), y, group=2)[0]

    for fn in (excl, ce):
        assert torch.autograd.gradgradcheck(fn, (x, rows))


def test_huge_and_equal_logits(monkeypatch):
    """Scale 1e4 (logits ~1e4): finite on both paths, equal; all-equal logits: lse = log(R - group) and the same
    gradients."""
    for dtype in (torch.float32, torch.bfloat16):
        for make in MAPS.values():
            for ce in (False, True):
                x, rows, y, _ = _problem(5, 5, 4, dtype)
                kernel, native = _both(monkeypatch, _lse(x, rows, y, partial(make, 1e4), ce=ce))
                assert all(torch.isfinite(native[k]).all() for k in ("out", "own", "dx", "drows"))
                _same(kernel, native, 1e-5, 1e-5, skip=() if dtype == torch.float32 else ("dx", "drows"))
    x, rows = torch.ones(4, 3, dtype=F64, requires_grad=True), torch.ones(8, 3, dtype=F64, requires_grad=True)
    y = torch.tensor([0, 1, 3, 0])
    for ce in (False, True):
        kernel, native = _both(monkeypatch, _lse(x, rows, y, lambda: LinearLogits(3.0), group=2, ce=ce))
        _same(kernel, native, 1e-12, 1e-12)
        expected = math.log(4) if ce else 9 + math.log(6)  # log(8 / 2); 6 rows of logit 9 left
        torch.testing.assert_close(native["out"], torch.full((4,), expected, dtype=F64), rtol=1e-14, atol=1e-14)


# -- the methods ---------------------------------------------------------------------------------------------------

#: case -> (method, options)
METHODS = {
    "c_ncm": ("c_ncm", {"learnable": True, "temperature": 0.05}),
    "reponet": ("reponet", {"learnable": True, "margin": 0.3}),
    "reponet_orthoplex": ("reponet", {"polytope": "orthoplex"}),
    "fsc": ("fsc", {"beta": 0.1, "learnable": True, "assign": "all"}),
}


def _method_step(name, dtype, *, autocast=False, miner=False, k=7, b=9, seed=1):
    torch.manual_seed(0)
    method, options = METHODS[name]
    loss = pml_anchors.get_loss(method, k, 6, **options)
    loss = loss.double() if dtype == F64 else loss
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 6, generator=g).to(dtype).requires_grad_()
    y = torch.randint(0, k, (b,), generator=g)
    pairs = None
    if miner:  # PML's miner weights: samples in several mined tuples count more, others not at all
        a, p, n = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([4, 5, 6, 7, 4]), torch.tensor([8, 0, 1, 4, 2])
        pairs = (a, p, a, n)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        value = loss(x, y, pairs)
    params = [x] + [p for p in loss.parameters() if p.requires_grad]
    return {"value": value, **dict(zip(("dx", "danchors"), torch.autograd.grad(value, params)))}


@pytest.mark.parametrize("name", list(METHODS))
def test_methods_agree_with_miner_weights_in_every_dtype(name, monkeypatch):
    """c_ncm (cosine cross-entropy), reponet (exclusion and margin), fsc (sub-centre groups): values and gradients of
    the embeddings and the learnable anchors, float64 to 1e-12, float32 and 16-bit embeddings to float32 rounding."""
    for dtype, miner in ((F64, False), (F64, True), (torch.float32, True), (torch.bfloat16, False)):
        kernel, native = _both(monkeypatch, lambda d=dtype, m=miner: _method_step(name, d, miner=m))
        tol = 1e-12 if dtype == F64 else 2e-5
        _same(kernel, native, tol, tol)


@pytest.mark.parametrize("name", list(METHODS))
def test_methods_under_cpu_bfloat16_autocast(name, monkeypatch):
    """Both paths take the logits from the same 16-bit GEMMs: the loss equal to float32 rounding. The gradients agree
    to bfloat16 rounding only: torch's backward of a bfloat16 GEMM runs in bfloat16 (as for any layer under
    autocast), the kernel's in float32."""
    kernel, native = _both(monkeypatch, lambda: _method_step(name, torch.float32, autocast=True))
    _same(kernel, native, 1e-5, 1e-5, skip=("dx", "danchors"))
    for key in ("dx", "danchors"):
        if key in kernel:
            scale = float(kernel[key].abs().max())
            assert float((kernel[key] - native[key]).abs().max()) < 4 * 2**-8 * scale, key


@pytest.mark.parametrize("name", ["c_ncm", "fsc"])
def test_methods_across_the_cpu_threshold(name, monkeypatch):
    """With the default limit (32768 entries on the CPU), B x R just below takes torch's path, just above the kernel;
    on either side the other path gives the same loss and gradient to float32 rounding."""
    limit = logsumexp.NATIVE_MAX_ENTRIES["cpu"]
    groups = 4 if name == "fsc" else 1  # fsc's default: 4 sub-centres per class
    k = limit // 32 // groups
    for b, native_runs in ((32, True), (33, False)):
        calls = _force(monkeypatch, "kernel", limit)
        default = _method_step(name, torch.float32, k=k, b=b)
        assert bool(calls) == native_runs, b
        _force(monkeypatch, "kernel" if native_runs else "torch")
        _same(default, _method_step(name, torch.float32, k=k, b=b), 2e-5, 2e-6)


def test_a_compiled_method_on_torch_path_equals_eager_with_no_opaque_op():
    """``torch.compile(fullgraph=True)`` of c_ncm (aot_eager): torch's operations in the graph (no
    ``pml_anchors::class_lse``), the same value and gradients as eager."""
    from torch._dynamo.backends.registry import lookup_backend

    graphs: list[str] = []

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return lookup_backend("aot_eager")(gm, example_inputs)

    torch.manual_seed(0)
    loss = pml_anchors.get_loss("c_ncm", 7, 6, learnable=True)
    x, y = torch.randn(9, 6, requires_grad=True), torch.arange(9) % 7
    params = [x, *loss.parameters()]
    eager = loss(x, y)
    eager_grads = torch.autograd.grad(eager, params)
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend=backend)(x, y)
    grads = torch.autograd.grad(compiled, params)
    assert graphs and not any("class_lse" in code for code in graphs)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# -- class-parallel: one block on each path ------------------------------------------------------------------------

#: test_class_parallel's cases where torch's path applies to a block
PARALLEL_CASES = [
    "c_ncm",
    "c_ncm_learnable_t",
    "reponet",
    "reponet_orthoplex_learnable",
    "fsc",
    "fsc_distance_learnable",
]


def parallel_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Rank 0 computes its block with the kernel, rank 1 with torch's path; test_class_parallel's ``check_case``
    compares with one process (float64: value, embeddings' and anchors' gradients, checkpoints)."""
    import torch.distributed as dist
    from dist_worker import exit_saved, leave_process_group

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    results: dict[str, object] = {}
    try:
        import test_class_parallel

        limit = PATHS["kernel" if rank == 0 else "torch"]
        logsumexp.NATIVE_MAX_ENTRIES = {"cpu": limit, "accelerator": limit}
        native, rows_seen = logsumexp._native_lse, []
        logsumexp._native_lse = lambda *args: rows_seen.append(args[1].shape[0]) or native(*args)
        for name in PARALLEL_CASES:
            rows_seen.clear()
            try:
                fails = test_class_parallel.check_case(name, rank, world)
            except Exception as error:  # noqa: BLE001 - reported by the test
                fails = [f"{type(error).__name__}: {error}"]
            results[name] = (fails, sorted(set(rows_seen)))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        leave_process_group()
    exit_saved()


def test_class_parallel_with_one_block_on_each_path(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import test_torch_path  # by its top-level name, importable by the spawned children (tests/ is on the path)

    mp.spawn(test_torch_path.parallel_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in PARALLEL_CASES:
        for rank, results in enumerate(ranks):
            fails, native_rows = results[name]
            assert fails == [], f"{name} rank {rank}: " + "\n".join(fails)
            # torch's path: on rank 1 for its block and for the one-process reference (all rows), never on rank 0
            assert len(native_rows) == (2 if rank else 0), f"{name} rank {rank}: torch's path ran on {native_rows} rows"
