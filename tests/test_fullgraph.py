"""Every method compiles whole: no graph break, ``torch.compile(loss, fullgraph=True)`` equals eager, and on CUDA a
training step neither synchronises the host nor escapes a CUDA graph.

* ``torch._dynamo.explain`` counts 0 graph breaks for every registered method, unchunked and chunked;
* ``torch.compile(loss, fullgraph=True)`` gives eager's value and gradients (embeddings and learnable anchors),
  unchunked and chunked (``aot_eager`` for all, ``inductor`` for two);
* under ``torch.compile`` the data checks are device assertions: bad labels and NaN embeddings still raise;
* the fused log-sum-exp's custom op passes ``torch.library.opcheck``; a third-party logit map falls back to an
  eager call (one graph break, eager values); ``check_method`` reports graph breaks and host reads;
* the forward on fake CUDA tensors (``FakeTensorMode``) runs every method's CUDA branches without a GPU and reads
  nothing back (a host read raises there: PML's ProxyAnchorLoss does);
* CUDA (skipped without a GPU): a small-CNN training step runs under ``torch.cuda.set_sync_debug_mode("error")``
  for every method, ``torch.cuda.graph`` captures a whole step (small CNN + loss + capturable Adam) of every method
  and its replays follow eager steps, and ``torch.compile(mode="reduce-overhead")`` captures a small-CNN step in CUDA
  graphs; CAM with
  8192 anchors (its neighbour list, refreshed between steps) steps without a sync, eager and in CUDA graphs (the
  CPU side of that: plugins/cam/tests/test_step_without_host_reads.py).
"""

from __future__ import annotations

import shutil

import method_cases
import pytest
import torch
from toy_loss import ToyCosineLoss

import pml_anchors
from pml_anchors import MethodSpec
from pml_anchors.testing import check_method
from pml_anchors.testing.compile_check import compile_report

METHODS = method_cases.method_names()
IDS = [method_cases.method_id(n) for n in METHODS]
RTOL, ATOL = method_cases.RTOL, method_cases.ATOL
#: unchunked, and chunks of 2 rows (2 chunks of the 4 classes; whole groups for sub-centres)
CHUNKS = [None, 2]
HAS_CC = shutil.which("cc") is not None or shutil.which("g++") is not None


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("chunk_size", CHUNKS, ids=["unchunked", "chunked"])
@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_dynamo_finds_no_graph_break(name, chunk_size):
    loss = method_cases.build(name, chunk_size=chunk_size)
    emb, labels = method_cases.batch(loss)
    explained = torch._dynamo.explain(loss)(emb, labels)
    reasons = [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("chunk_size", CHUNKS, ids=["unchunked", "chunked"])
@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_fullgraph_compile_gives_the_eager_values_and_gradients(name, chunk_size):
    loss = method_cases.build(name, chunk_size=chunk_size)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    for seed, size in enumerate((16, 16, 12)):  # the third batch size recompiles (dynamic batch)
        emb, labels = method_cases.batch(loss, size, seed)
        method_cases.assert_same(
            method_cases.step(compiled, loss, emb, labels), method_cases.step(loss, loss, emb, labels), f"batch {seed}"
        )


@pytest.mark.skipif(not HAS_CC, reason="inductor on CPU needs a C++ compiler")
@pytest.mark.parametrize(
    ("name", "chunk_size"), [("c_ncm", 2), ("proxy_anchor", None)], ids=["c_ncm-chunked", "proxy_anchor"]
)
def test_fullgraph_inductor_gives_the_eager_values_and_gradients(name, chunk_size):
    qualified = next(n for n in METHODS if method_cases.method_id(n) == name)
    loss = method_cases.build(qualified, chunk_size=chunk_size)
    compiled = torch.compile(loss, fullgraph=True)
    emb, labels = method_cases.batch(loss)
    method_cases.assert_same(
        method_cases.step(compiled, loss, emb, labels), method_cases.step(loss, loss, emb, labels), "inductor"
    )


@pytest.mark.parametrize("name", ["c_ncm", "proxy_anchor"])
def test_under_compile_bad_labels_and_nan_embeddings_still_raise(name):
    qualified = next(n for n in METHODS if method_cases.method_id(n) == name)
    loss = method_cases.build(qualified)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    emb, labels = method_cases.batch(loss)
    compiled(emb, labels)  # a good batch compiles the graph the bad ones run through
    bad = labels.clone()
    bad[3] = method_cases.NUM_CLASSES
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 4\)"):
        compiled(emb, bad)
    nan = emb.detach().clone()
    nan[2, 0] = float("nan")
    with pytest.raises(RuntimeError, match="embeddings contain NaN or Inf"):
        compiled(nan, labels)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16])
def test_under_compile_narrow_integer_labels_check_their_range(dtype):
    """The device-side label check works for labels of any integer dtype, also when num_classes - 1 does not fit it
    (300 classes, uint8 labels up to 255): valid labels pass, a negative one (signed dtypes) raises."""
    loss = pml_anchors.get_loss("c_ncm", 300, 8)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    emb = torch.randn(4, 8)
    labels = torch.tensor([0, 5, min(torch.iinfo(dtype).max, 299), 7], dtype=dtype)
    torch.testing.assert_close(compiled(emb, labels), loss(emb, labels))
    if dtype.is_signed:
        with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 300\)"):
            compiled(emb, torch.tensor([0, -1, 2, 3], dtype=dtype))


def _fake_cuda_forward(loss, emb, labels):
    """``loss(emb, labels)`` on fake CUDA tensors (``FakeTensorMode``: shapes and devices, no data), which runs
    the loss's CUDA branches on a machine without a GPU: any host read (``.item()``, ``int(t)``, ``if t:``) or
    data-dependent shape (``nonzero``) raises, for there is no value to read. (Autograd's engine needs a real GPU,
    so the backward is left to the compile tests above, whose traced backward has no host read either.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        loss = loss.to("cuda")
        value = loss(emb.detach().to("cuda"), labels.to("cuda"))
    return value


@pytest.mark.skipif(torch.version.cuda is None, reason="a CPU-only torch build has no CUDA branches to fake")
@pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")  # the anchor cache's key: metadata
@pytest.mark.parametrize("chunk_size", CHUNKS, ids=["unchunked", "chunked"])
@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_the_cuda_forward_reads_nothing_back(name, chunk_size):
    value = _fake_cuda_forward(
        method_cases.build(name, chunk_size=chunk_size), *method_cases.batch(method_cases.build(name))
    )
    assert value.device.type == "cuda" and value.shape == ()


@pytest.mark.skipif(torch.version.cuda is None, reason="a CPU-only torch build has no CUDA branches to fake")
def test_fake_cuda_catches_a_host_read():
    """PML's ProxyAnchorLoss reads |P+| back to the host (``len(with_pos_proxies)``): the check above would fail."""
    from pytorch_metric_learning.losses import ProxyAnchorLoss
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    emb, labels = method_cases.batch(method_cases.build(method_cases.builtin_method_names()[0]))
    with pytest.raises((DataDependentOutputException, DynamicOutputShapeException)):
        _fake_cuda_forward(ProxyAnchorLoss(method_cases.NUM_CLASSES, emb.shape[1]), emb, labels)


def _op_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, requires_grad=True)
    rows = torch.randn(8, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 4, (6,), generator=g)
    bias, floor = torch.randn(6, generator=g), torch.full((6,), 1e-6)
    x_sq, rows_sq = x.detach().square().sum(1), rows.detach().square().sum(1)
    # (x, rows, labels, kind, scale, eps, squared, bias, x_sq, rows_sq, floor, dim, group, add_zero, chunk, ce)
    return [
        (x, rows, None, "linear", 2.0, 0.0, False, None, None, None, None, 1, 1, False, None, False),
        (x, rows, y, "linear", 2.0, 0.0, False, None, None, None, None, 1, 2, False, 4, True),
        (x, rows, y, "cosine_rows", 3.0, 1e-12, False, bias, None, None, None, 0, 1, True, None, False),
        (x, rows, y, "cosine_rows", 3.0, 1e-12, False, bias, None, None, None, 0, 1, True, 3, False),
        (x, rows, y, "neg_euclidean", 1.0, 0.0, False, None, x_sq, rows_sq, floor, 1, 1, False, 3, False),
        (x, rows, y, "neg_euclidean", 1.0, 0.0, True, None, x_sq, rows_sq, None, 1, 1, False, None, False),
    ]


def test_the_log_sum_exp_custom_op_passes_torch_opcheck():
    """Fake (meta) shapes, autograd registration and AOT dispatch of ``pml_anchors::class_lse`` agree with its
    kernel, for every logit map kind, both directions, exclusion, sub-centres, chunking and cross-entropy."""
    from pml_anchors.losses.logsumexp import _class_lse_op

    for case in _op_cases():
        torch.library.opcheck(_class_lse_op, case)


def test_a_third_party_logit_map_runs_eagerly_under_compile():
    """A LogitMap the custom op does not know runs behind torch.compiler.disable: one graph break, eager values."""
    from pml_anchors.losses.logsumexp import LinearLogits, class_logsumexp

    class Shifted(LinearLogits):  # not one of the op's kinds (subclasses may change the maths)
        pass

    def fn(x, rows, y):
        lse, _ = class_logsumexp(x, rows, Shifted(2.0), exclude=y)
        return lse.sum()

    g = torch.Generator().manual_seed(0)
    x, rows = torch.randn(6, 5, generator=g, requires_grad=True), torch.randn(4, 5, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    assert torch._dynamo.explain(fn)(x, rows, y).graph_break_count == 1
    expected = torch.autograd.grad(fn(x, rows, y), x)[0]
    got = torch.autograd.grad(torch.compile(fn, backend="aot_eager")(x, rows, y), x)[0]
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


class _CountsOnTheHost(ToyCosineLoss):
    """A third-party loss that reads a count back to Python (as PML's ``len(with_pos_proxies)``)."""

    def anchor_losses(self, embeddings, labels, anchors, weights):
        out = super().anchor_losses(embeddings, labels, anchors, weights)
        present = int(torch.bincount(labels, minlength=self.num_classes).count_nonzero())
        out["loss"]["losses"] = out["loss"]["losses"] / present
        return out


def test_check_method_reports_whether_a_method_compiles_whole_and_reads_the_host():
    whole = check_method(MethodSpec(name="toy", loss=ToyCosineLoss, initializer="one_hot"))["compile"]
    assert whole["graph_breaks"] == 0 and whole["host_reads"] == 0 and whole["break_reasons"] == []
    loss = _CountsOnTheHost(4, 8)
    emb, labels = method_cases.batch(loss)
    broken = compile_report(loss, emb, labels)
    assert broken["graph_breaks"] >= 1 and broken["host_reads"] >= 1
    assert any("test_fullgraph.py" in reason for reason in broken["break_reasons"]), broken["break_reasons"]
    assert (whole["cuda_syncs"] is None) == (not torch.cuda.is_available())


# -- CUDA ----------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BUILTIN = method_cases.builtin_method_names()
BUILTIN_IDS = [method_cases.method_id(n) for n in BUILTIN]


def _small_cnn_case(name: str, num_classes: int = 10, batch: int = 64, device: str = "cuda", embedding_size=16):
    """The small MNIST CNN (trunk + embedder), ``name``'s loss, SGD over both, one batch: all on ``device``."""
    from pml_anchors.app.models import build_backbone

    torch.manual_seed(0)
    loss = method_cases.build(name, num_classes=num_classes, embedding_size=embedding_size).to(device)
    trunk, embedder = build_backbone("small_cnn", in_channels=1, input_size=28, embedding_size=loss.embedding_size)
    model = torch.nn.Sequential(trunk, embedder).to(device)
    params = list(model.parameters()) + [p for p in loss.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 1, 28, 28, generator=g).to(device)
    labels = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    return model, loss, optimizer, images, labels


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name", BUILTIN, ids=BUILTIN_IDS)
def test_a_cuda_training_step_never_synchronises(name):
    model, loss, optimizer, images, labels = _small_cnn_case(name)

    def step():
        optimizer.zero_grad(set_to_none=True)
        value = loss(model(images), labels)
        value.backward()
        optimizer.step()
        return value.detach()

    step()  # warm-up: cuDNN/cuBLAS handles, caches, lazily built state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        values = [step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(v).item() for v in values)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name", ["c_ncm", "proxy_anchor"])
def test_reduce_overhead_captures_a_small_cnn_step_in_cuda_graphs(name):
    from torch._dynamo.utils import counters

    qualified = next(n for n in BUILTIN if method_cases.method_id(n) == name)
    model, loss, optimizer, images, labels = _small_cnn_case(qualified)
    compiled = torch.compile(lambda x, y: loss(model(x), y), mode="reduce-overhead", fullgraph=True)
    eager_values, values = [], []
    state = {k: v.clone() for k, v in model.state_dict().items()}
    anchors = loss.anchors.detach().clone()
    counters.clear()  # inductor counts a step it leaves out of CUDA graphs when it compiles it
    for fn, out in ((lambda x, y: loss(model(x), y), eager_values), (compiled, values)):
        model.load_state_dict(state)
        with torch.no_grad():
            loss.anchors.copy_(anchors)
        optimizer.state.clear()
        for _ in range(4):
            optimizer.zero_grad(set_to_none=True)
            value = fn(images, labels)
            value.backward()
            optimizer.step()
            out.append(value.detach().clone())
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
    torch.testing.assert_close(torch.stack(values), torch.stack(eager_values), rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("mode", [None, "reduce-overhead"], ids=["eager", "reduce_overhead"])
def test_cam_above_4096_anchors_steps_without_a_sync(mode):
    """CAM with K = 8192 anchors (its neighbour list): once ``refresh_neighbors`` (CAM's trainer hooks) checked the
    list between optimizer steps, the step reads nothing back, eager and captured in CUDA graphs."""
    from torch._dynamo.utils import counters

    qualified = next(n for n in BUILTIN if method_cases.method_id(n) == "cam")
    model, loss, optimizer, images, labels = _small_cnn_case(qualified, num_classes=8192, embedding_size=128)

    def forward(x, y):
        return loss(model(x), y)

    fn = forward if mode is None else torch.compile(forward, mode=mode, fullgraph=True)

    def step():
        optimizer.zero_grad(set_to_none=True)
        value = fn(images, labels)
        value.backward()
        optimizer.step()
        return value.detach().clone()

    counters.clear()
    loss.refresh_neighbors()
    for _ in range(3):  # warm-up: compile, record the CUDA graphs
        step()
        loss.refresh_neighbors()
    torch.cuda.synchronize()
    values = []
    for _ in range(3):
        torch.cuda.set_sync_debug_mode("error")
        try:
            values.append(step())
        finally:
            torch.cuda.set_sync_debug_mode("default")
        loss.refresh_neighbors()  # between steps: it reads sizes back
    assert all(torch.isfinite(v).item() for v in values)
    assert loss._neighbors.padded is not None  # the list, not the blocked fallback
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name", BUILTIN, ids=BUILTIN_IDS)
def test_a_whole_training_step_is_captured_in_one_cuda_graph(name):
    """Small CNN + loss + Adam (``capturable=True``) captured with ``torch.cuda.graph`` and replayed: possible only
    if nothing in the step reads the host or sizes a tensor by the data; the replays follow eager steps taken from
    the same state."""
    model, loss, _, images, labels = _small_cnn_case(name)
    params = list(model.parameters()) + [p for p in loss.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3, capturable=True)

    def step():
        value = loss(model(images), labels)
        value.backward()
        optimizer.step()
        return value

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream: lazily built state, optimizer state
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    tensors = [*model.state_dict().values(), *loss.state_dict().values(), *params]
    tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    saved = [t.detach().clone() for t in tensors]  # the state the replays start from (capture ran nothing)
    replayed = []
    for _ in range(3):
        graph.replay()
        replayed.append(captured.detach().clone())
    with torch.no_grad():
        for t, s in zip(tensors, saved):
            t.copy_(s)
    eager = []
    for _ in range(3):
        for p in params:
            p.grad = None if p.grad is None else p.grad.zero_()
        eager.append(step().detach())
    torch.cuda.synchronize()
    assert all(torch.isfinite(v).item() for v in replayed)
    torch.testing.assert_close(torch.stack(replayed), torch.stack(eager), rtol=1e-4, atol=1e-4)
