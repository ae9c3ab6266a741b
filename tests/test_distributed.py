"""DistributedLoss: 2 processes with gloo on CPU give exactly the single-process result."""

import pytest
import torch
from dist_worker import run_distributed, single_process
from pytorch_metric_learning.losses import ProxyAnchorLoss
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper
from toy_loss import LearnableToyLoss

from pml_anchors.distributed import DistributedLoss

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def pml_proxy_anchor():
    torch.manual_seed(123)
    return ProxyAnchorLoss(4, 8)


def toy_learnable():
    return LearnableToyLoss(4, 8, seed=3)


@pytest.mark.parametrize("factory", [pml_proxy_anchor, toy_learnable], ids=["pml_proxy_anchor", "toy_learnable"])
def test_distributed_loss_matches_single_process(tmp_path, factory):
    expected = single_process(factory)
    results = run_distributed(factory, DistributedLoss, tmp_path)
    for rank, got in enumerate(results):
        torch.testing.assert_close(got["value"], expected["value"], rtol=0, atol=1e-6)
        for key in expected:
            if key != "value":
                torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=f"rank {rank} {key}")


def test_pml_wrapper_gets_proxy_gradients_world_size_times_too_large(tmp_path):
    """PML_NOTES §2.5: documents the difference DistributedLoss fixes."""
    expected = single_process(pml_proxy_anchor)
    results = run_distributed(
        pml_proxy_anchor, DistributedLossWrapper, tmp_path, uneven=False
    )  # PML needs equal shards
    got = results[0]
    torch.testing.assert_close(got["loss.proxies"], 2 * expected["loss.proxies"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got["value"], 2 * expected["value"])
    torch.testing.assert_close(got["model.weight"], expected["model.weight"], rtol=1e-9, atol=1e-9)


def test_without_process_group_it_is_the_plain_loss():
    loss = LearnableToyLoss(3, 4)
    emb, labels = torch.randn(6, 4), torch.arange(6) % 3
    wrapped = DistributedLoss(loss)
    assert torch.equal(wrapped(emb, labels), loss(emb, labels))
    assert wrapped.anchors is loss.anchors and wrapped.num_classes == 3
    with pytest.raises(ValueError, match="indices_tuple"):
        wrapped(emb, labels, indices_tuple=(torch.tensor([0]),) * 3)
    with pytest.raises(TypeError):
        DistributedLoss("not a loss")
