"""The AnchorLoss base class: anchors storage, validation, dtype handling, PML protocol."""

import pytest
import torch
from pytorch_metric_learning.reducers import SumReducer
from pytorch_metric_learning.regularizers import LpRegularizer
from toy_loss import LearnableToyLoss, ToyCosineLoss

from pml_anchors.losses import AnchorLoss


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(10, 4, generator=g, requires_grad=True), torch.arange(10) % 3


def test_is_a_pml_loss_with_buffer_anchors(batch):
    from pytorch_metric_learning.losses import BaseMetricLossFunction

    loss = ToyCosineLoss(3, 4)
    assert isinstance(loss, BaseMetricLossFunction)
    assert "anchors" in dict(loss.named_buffers()) and "anchors" in loss.state_dict()
    assert list(loss.parameters()) == []
    assert torch.equal(loss.anchors, torch.eye(3, 4))
    value = loss(*batch)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)


def test_learnable_anchors_are_a_parameter_and_get_gradients(batch):
    loss = LearnableToyLoss(3, 4)
    assert isinstance(loss.anchors, torch.nn.Parameter)
    assert [n for n, _ in loss.named_parameters()] == ["anchors"]
    loss(*batch).backward()
    assert loss.anchors.grad is not None and loss.anchors.grad.abs().sum() > 0


def test_learnable_flag_overrides_class_default():
    assert isinstance(ToyCosineLoss(3, 4, learnable=True).anchors, torch.nn.Parameter)
    assert not isinstance(LearnableToyLoss(3, 4, learnable=False).anchors, torch.nn.Parameter)


def test_anchors_from_name_callable_tensor():
    t = torch.randn(3, 4)
    assert torch.equal(ToyCosineLoss(3, 4, anchors=t).anchors, t)
    called = {}

    def init(k, d, *, seed=None, scale=1.0):
        called.update(k=k, d=d, seed=seed, scale=scale)
        return torch.ones(k, d) * scale

    loss = ToyCosineLoss(3, 4, anchors=init, seed=7, anchor_kwargs={"scale": 2.0})
    assert called == {"k": 3, "d": 4, "seed": 7, "scale": 2.0}
    assert torch.equal(loss.anchors, torch.full((3, 4), 2.0))
    lazy = ToyCosineLoss(3, 3, anchors="pml_anchors.anchors:one_hot")
    assert torch.equal(lazy.anchors, torch.eye(3))
    with pytest.raises(ValueError, match=r"needs anchors of shape \(3, 4\), got \(2, 4\)"):
        ToyCosineLoss(3, 4, anchors=torch.randn(2, 4))
    with pytest.raises(TypeError, match="anchors must be"):
        ToyCosineLoss(3, 4, anchors=5)
    with pytest.raises(ValueError, match="NaN"):
        ToyCosineLoss(3, 4, anchors=torch.full((3, 4), float("nan")))


def test_seeded_initializers_are_deterministic():
    a = LearnableToyLoss(5, 8, seed=3).anchors
    b = LearnableToyLoss(5, 8, seed=3).anchors
    c = LearnableToyLoss(5, 8, seed=4).anchors
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "num_classes, embedding_size, error",
    [(0, 4, ValueError), (3.0, 4, TypeError), (True, 4, TypeError), (3, -1, ValueError)],
)
def test_constructor_validates_sizes(num_classes, embedding_size, error):
    with pytest.raises(error, match="must be a positive int"):
        ToyCosineLoss(num_classes, embedding_size)


def test_embedding_size_required_unless_derived():
    with pytest.raises(ValueError, match="needs embedding_size"):
        ToyCosineLoss(3)


@pytest.mark.parametrize(
    "embeddings, labels, error, match",
    [
        (torch.randn(4, 5), torch.tensor([0, 1, 2, 0]), ValueError, r"shape \(batch_size, 4\)"),
        (torch.randn(4), torch.tensor([0, 1, 2, 0]), ValueError, r"shape \(batch_size, 4\)"),
        (torch.randint(0, 3, (4, 4)), torch.tensor([0, 1, 2, 0]), TypeError, "floating-point"),
        (torch.randn(4, 4), torch.tensor([0, 1, 2, 3]), ValueError, r"labels must lie in \[0, 3\).*from 0 to 3"),
        (torch.randn(4, 4), torch.tensor([0, -1, 2, 0]), ValueError, r"labels must lie in \[0, 3\)"),
        (torch.randn(4, 4), torch.tensor([0.0, 1.0, 2.0, 0.0]), TypeError, "integer tensor"),
        (torch.randn(4, 4), torch.tensor([[0], [1], [2], [0]]), ValueError, "1-D"),
        (torch.randn(4, 4), torch.tensor([0, 1, 2]), ValueError, "4 embeddings but 3 labels"),
        (torch.randn(4, 4), None, ValueError, "labels are required"),
        (torch.randn(4, 4), [0, 1, 2, 0], TypeError, "torch.Tensor"),
        ([[0.0] * 4], torch.tensor([0]), TypeError, "torch.Tensor"),
        (
            torch.tensor([[0.0, float("nan"), 0, 0], [1.0, 0, 0, 0]]),
            torch.tensor([0, 1]),
            ValueError,
            r"NaN or Inf.*\[0\]",
        ),
        (torch.tensor([[0.0, float("inf"), 0, 0]]), torch.tensor([0]), ValueError, "NaN or Inf"),
    ],
)
def test_bad_inputs_get_clear_errors(embeddings, labels, error, match):
    with pytest.raises(error, match=match):
        ToyCosineLoss(3, 4)(embeddings, labels)


def test_empty_batch_is_zero_and_keeps_the_graph():
    emb = torch.zeros(0, 4, requires_grad=True)
    value = ToyCosineLoss(3, 4)(emb, torch.zeros(0, dtype=torch.long))
    assert float(value.detach()) == 0.0
    value.backward()


def test_int32_labels_and_non_contiguous_embeddings(batch):
    emb, labels = batch
    loss = ToyCosineLoss(3, 4)
    wide = torch.randn(4, 10).T  # (10, 4) non-contiguous view
    assert not wide.is_contiguous()
    assert torch.isfinite(loss(wide, labels.int()))
    assert torch.allclose(loss(emb, labels.int()), loss(emb, labels))


def test_ref_emb_is_rejected_like_pml(batch):
    emb, labels = batch
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        ToyCosineLoss(3, 4)(emb, labels, ref_emb=emb.detach().clone(), ref_labels=labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_ref_emb_that_is_the_batch_itself_is_accepted_like_pml(batch, dtype):
    """PML accepts ``ref_emb=embeddings`` (the same tensor); the float32 cast of 16-bit inputs must keep that."""
    emb, labels = batch
    emb = emb.to(dtype)
    loss = ToyCosineLoss(3, 4)
    assert torch.equal(loss(emb, labels, ref_emb=emb, ref_labels=labels), loss(emb, labels))


def test_indices_tuple_becomes_per_sample_weights(batch):
    emb, labels = batch
    loss = ToyCosineLoss(3, 4, reducer=SumReducer())
    full = loss(emb, labels)
    only_first = loss(emb, labels, indices_tuple=(torch.tensor([0]), torch.tensor([0])))
    per_sample = torch.nn.functional.cross_entropy(loss.get_logits(emb), labels, reduction="none")
    assert torch.allclose(full, per_sample.sum())
    assert torch.allclose(only_first, per_sample[0])


def test_float64_forward_keeps_float32_parameter(batch):
    emb, labels = batch
    loss = LearnableToyLoss(3, 4)
    value = loss(emb.double(), labels)
    assert value.dtype == torch.float64
    assert loss.anchors.dtype == torch.float32  # unlike PML's cast_types, .data is never rewritten
    value.backward()
    assert loss.anchors.grad.dtype == torch.float32


def test_cpu_bf16_autocast_keeps_anchor_dtype(batch):
    emb, labels = batch
    loss = LearnableToyLoss(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(emb, labels)
    value.backward()
    assert torch.isfinite(value) and loss.anchors.dtype == torch.float32
    assert torch.isfinite(loss.anchors.grad).all()


def test_weight_regularizer_applies_to_anchors(batch):
    emb, labels = batch
    plain = LearnableToyLoss(3, 4, seed=0)
    reg = LearnableToyLoss(3, 4, seed=0, weight_regularizer=LpRegularizer(), weight_reg_weight=0.5)
    expected = plain(emb, labels) + 0.5 * plain.anchors.norm(dim=1).mean()
    assert torch.allclose(reg(emb, labels), expected)


def test_weight_init_func_is_applied_to_learnable_anchors():
    loss = LearnableToyLoss(3, 4, weight_init_func=lambda t: torch.nn.init.constant_(t, 0.25))
    assert torch.equal(loss.anchors.detach(), torch.full((3, 4), 0.25))


def test_state_dict_round_trip_and_mismatch_error():
    src = LearnableToyLoss(3, 4, seed=1)
    dst = LearnableToyLoss(3, 4, seed=2)
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.anchors, src.anchors)
    with pytest.raises(ValueError, match=r"have shape \(3, 4\).*num_classes=5.*shape \(5, 4\)"):
        LearnableToyLoss(5, 4).load_state_dict(src.state_dict())
    # fixed buffers round-trip too, and load with weights_only=True
    import io

    buf = io.BytesIO()
    torch.save(ToyCosineLoss(3, 4, anchors=torch.randn(3, 4)).state_dict(), buf)
    buf.seek(0)
    restored = ToyCosineLoss(3, 4)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert not torch.equal(restored.anchors, torch.eye(3, 4))


def test_predict_is_nearest_anchor():
    loss = ToyCosineLoss(3, 3)
    emb = torch.tensor([[0.1, 0.9, 0.0], [2.0, 0.1, 0.0], [0.0, 0.0, -1.0]])
    assert loss.predict(emb).tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="shape"):
        loss.predict(torch.randn(2, 5))


def test_module_device_and_dtype_moves_keep_buffers():
    loss = ToyCosineLoss(3, 4).double()
    assert loss.anchors.dtype == torch.float64


def test_repr_mentions_geometry():
    assert "anchors=fixed (3, 4)" in repr(ToyCosineLoss(3, 4))


def test_subclass_must_implement_anchor_losses(batch):
    class Incomplete(AnchorLoss):
        pass

    with pytest.raises(NotImplementedError):
        Incomplete(3, 4)(*batch)
