"""DistributedLoss: 2 processes with gloo on CPU give exactly the single-process result, for every method.

One spawn runs every case (a process group costs tens of seconds to start): each registered method through
``pml_anchors.get_loss`` in float64, a learnable toy loss, PML's own ProxyAnchorLoss, and PML's
``DistributedLossWrapper`` for comparison. The tests below compare the saved per-rank results.
"""

import functools

import method_cases
import pml_twins
import pytest
import torch
from dist_factories import pml_proxy_anchor, toy_learnable
from dist_worker import run_distributed, single_process
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper
from toy_loss import LearnableToyLoss

from pml_anchors.losses.distributed import DistributedLoss

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

METHODS = method_cases.method_names()


FACTORIES = {
    "pml_proxy_anchor": pml_proxy_anchor,
    "toy_learnable": toy_learnable,
    **{f"method:{name}": functools.partial(method_cases.build, name) for name in METHODS},
}
#: key -> (loss factory, wrapper, uneven shards); PML's wrapper needs equal shards.
JOBS = {
    **{key: (factory, DistributedLoss, True) for key, factory in FACTORIES.items()},
    "pml_wrapper": (pml_proxy_anchor, DistributedLossWrapper, False),
    # drop-in parity: a method whose maths PML has, under PML's own wrapper, beside its PML counterpart
    **{
        f"pml_wrapper_twin:{name}:{side}": (factory, DistributedLossWrapper, False)
        for name, factories in pml_twins.FACTORIES.items()
        for side, factory in zip(("ours", "pml"), factories)
    },
}


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    return run_distributed(JOBS, tmp_path_factory.mktemp("dist"))


def check_matches_single_process(results, factory):
    expected = single_process(factory)
    assert results[0]["shard"] == 7 and results[1]["shard"] == 5  # uneven shards
    for rank, got in enumerate(results):
        assert "error" not in got, f"rank {rank} raised:\n{got['error']}"
        grad_keys = {k for k in expected if k not in ("value", "anchors")}
        assert grad_keys == {k for k in got if k not in ("value", "all_anchors", "shard")}, f"rank {rank}"
        torch.testing.assert_close(got["value"], expected["value"], rtol=0, atol=1e-6, msg=f"rank {rank} value")
        for key in grad_keys:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=f"rank {rank} {key}")
    if expected["anchors"] is not None:  # identical on every rank (all_gather) and equal to one process's
        for rank, got in enumerate(results):
            for source, anchors in enumerate(got["all_anchors"]):
                assert torch.equal(anchors, expected["anchors"]), f"rank {rank} sees other anchors on rank {source}"
    return expected


@pytest.mark.parametrize("name", METHODS, ids=[method_cases.method_id(n) for n in METHODS])
def test_every_method_matches_single_process(dist_results, name):
    expected = check_matches_single_process(dist_results[f"method:{name}"], FACTORIES[f"method:{name}"])
    loss = method_cases.build(name)
    if isinstance(getattr(loss, "anchors", None), torch.nn.Parameter):
        assert "loss.anchors" in expected  # the learnable anchors' gradient was compared too


@pytest.mark.parametrize("key", ["pml_proxy_anchor", "toy_learnable"])
def test_distributed_loss_matches_single_process(dist_results, key):
    expected = check_matches_single_process(dist_results[key], FACTORIES[key])
    assert "loss.proxies" in expected or "loss.anchors" in expected


def test_every_builtin_method_ran_distributed():
    assert method_cases.BUILTIN_METHODS <= {method_cases.method_id(n) for n in METHODS}


def test_pml_wrapper_gets_proxy_gradients_world_size_times_too_large(dist_results):
    """PML's DistributedLossWrapper scales the loss by world_size (docs/distributed.md): the difference DistributedLoss
    fixes."""
    expected = single_process(pml_proxy_anchor)
    got = dist_results["pml_wrapper"][0]
    assert "error" not in got, got.get("error")
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


@pytest.mark.parametrize("name", sorted(pml_twins.FACTORIES))
def test_under_pmls_distributed_loss_wrapper_like_the_pml_counterpart(dist_results, name):
    """The three methods PML also has, wrapped in PML's DistributedLossWrapper, give each rank the value and the
    model and proxy gradients PML's own loss gives (both carry the wrapper's world_size scaling alike)."""
    ours, theirs = (dist_results[f"pml_wrapper_twin:{name}:{side}"] for side in ("ours", "pml"))
    for rank, (got, expected) in enumerate(zip(ours, theirs)):
        assert "error" not in got and "error" not in expected, got.get("error") or expected.get("error")
        torch.testing.assert_close(got["value"], expected["value"], rtol=1e-9, atol=1e-12, msg=f"rank {rank}")
        for key in ("model.weight", "model.bias"):
            torch.testing.assert_close(got[key], expected[key], rtol=1e-8, atol=1e-12, msg=f"rank {rank} {key}")
        if "loss.proxies" in expected:  # learnable proxies (Proxy Anchor): ours are "anchors"
            torch.testing.assert_close(got["loss.anchors"], expected["loss.proxies"], rtol=1e-8, atol=1e-12)
