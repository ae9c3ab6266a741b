"""Drop-in parity with PML for the three methods whose maths PML has, mirroring what PML's own loss tests check:
c_ncm = NormalizedSoftmaxLoss, reponet = ArcFaceLoss (on fixed weights), proxy_anchor = ProxyAnchorLoss.

* values against the closed-form formula in float16, float32 and float64;
* equal to PML with identical parameters (our anchors loaded from PML's ``state_dict``), values and gradients,
  with and without a miner;
* inside PML's ``MultipleLosses`` (and, in tests/test_distributed.py, under PML's ``DistributedLossWrapper``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pml_twins import MARGIN_RAD, SCALE, TEMPERATURE, TWINS, K, ours, pml
from pytorch_metric_learning import losses, miners

import pml_anchors

NAMES = sorted(TWINS)
RTOL = {torch.float16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-10}


def _batch(dtype: torch.dtype, n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % K
    centres = torch.randn(K, 8, generator=g, dtype=torch.float64)
    x = centres[labels] + 0.7 * torch.randn(n, 8, generator=g, dtype=torch.float64)
    return x.to(dtype).requires_grad_(True), labels


def _unit(t: torch.Tensor) -> torch.Tensor:
    return F.normalize(t, dim=-1)


def normalized_softmax(x, y, rows):
    return F.cross_entropy(_unit(x) @ _unit(rows).T / TEMPERATURE, y)


def arcface(x, y, rows):
    cos = (_unit(x) @ _unit(rows).T).clamp(-1, 1)
    theta = torch.acos(cos.gather(1, y[:, None]))
    target = torch.where(
        theta <= math.pi - MARGIN_RAD,
        torch.cos(theta + MARGIN_RAD),
        cos.gather(1, y[:, None]) - MARGIN_RAD * math.sin(MARGIN_RAD),
    )
    return F.cross_entropy(SCALE * cos.scatter(1, y[:, None], target), y)


def proxy_anchor(x, y, rows, alpha=32.0, delta=0.1):
    """Kim et al., CVPR 2020, eq. 4, written out."""
    s = _unit(x) @ _unit(rows).T
    pos = F.one_hot(y, K).bool()
    with_pos = pos.any(dim=0)
    pos_term = torch.log1p((torch.exp(-alpha * (s - delta)) * pos).sum(dim=0))[with_pos].sum() / with_pos.sum()
    neg_term = torch.log1p((torch.exp(alpha * (s + delta)) * ~pos).sum(dim=0)).sum() / K
    return pos_term + neg_term


FORMULA = {"c_ncm": normalized_softmax, "reponet": arcface, "proxy_anchor": proxy_anchor}


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_values_against_the_formula(name, dtype):
    loss = ours(name)
    x, y = _batch(dtype)
    value = loss(x, y)
    value.backward()
    expected = FORMULA[name](x.detach().double(), y, loss.anchors.detach().double())
    assert value.item() == pytest.approx(expected.item(), rel=RTOL[dtype])
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


def _miner(kind: str | None):
    return {None: None, "multi_similarity": miners.MultiSimilarityMiner(), "triplet": miners.TripletMarginMiner()}[kind]


@pytest.mark.parametrize("miner", [None, "multi_similarity", "triplet"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_equals_pml_with_identical_parameters(name, dtype, miner):
    mine = _miner(miner)
    values, grads = [], []
    for loss in (ours(name), pml(name)):
        x, y = _batch(dtype)
        indices = None if mine is None else mine(x, y)
        value = loss(x, y, indices)
        value.backward()
        values.append(value.double())
        weights = getattr(loss, "anchors", None)
        weights = getattr(loss, "proxies", None) if weights is None else weights  # None: PML's fixed-free W twins
        grads.append((x.grad.double(), None if weights is None or weights.grad is None else weights.grad.double()))
    rtol = {torch.float16: 2e-2, torch.float32: 1e-5, torch.float64: 1e-9}[dtype]
    torch.testing.assert_close(values[0], values[1], rtol=rtol, atol=rtol * 1e-2)
    if dtype == torch.float16:  # PML computes in half precision (e^{32 s} for Proxy Anchor): its gradients are off
        return  # by up to ~8 %, ours come from float32; PML's own tests compare float16 values only
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=rtol, atol=rtol * 1e-2)
    if grads[1][1] is not None:  # learnable proxies: the same gradient (PML's are (K, d) too), in float32 for
        # ours: our parameter keeps its dtype (computed on a cast copy) where PML's cast_types turns it into the
        # input's; alpha = 32 amplifies float32 rounding
        wrtol = {torch.float32: 1e-4, torch.float64: 1e-6}[dtype]
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=wrtol, atol=wrtol * 1e-2)


@pytest.mark.parametrize("name", NAMES)
def test_inside_pml_multiple_losses(name):
    totals = []
    for loss in (ours(name), pml(name)):
        x, y = _batch(torch.float64)
        combined = losses.MultipleLosses([loss, losses.TripletMarginLoss(margin=0.1)], weights=[1.0, 0.5])
        total = combined(x, y)
        total.backward()
        totals.append((total.detach(), x.grad))
    torch.testing.assert_close(totals[0][0], totals[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(totals[0][1], totals[1][1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_get_logits_like_pml(name):
    a, b = ours(name), pml(name)  # cos / temperature; ArcFace: scale * cos, margin-free; Proxy Anchor: cos
    x, _ = _batch(torch.float32)
    torch.testing.assert_close(a.get_logits(x), b.get_logits(x), rtol=1e-5, atol=1e-6)


def test_pml_state_dicts_load_as_anchors_with_a_clear_error_when_they_do_not_fit():
    pml_loss = losses.NormalizedSoftmaxLoss(K, 8)
    loss = ours("c_ncm")
    loss.load_state_dict(pml_loss.state_dict())
    torch.testing.assert_close(loss.anchors, pml_loss.W.detach().T)
    with pytest.raises(ValueError, match=r"PML weights 'W' of shape \(8, 4\) do not fit the anchors of shape \(5, 8\)"):
        type(loss)(5, 8).load_state_dict(pml_loss.state_dict())
    soft_triple = losses.SoftTripleLoss(K, 8, centers_per_class=3)
    fsc = pml_anchors.get_loss("fsc", K, 8, centers_per_class=3)
    fsc.load_state_dict(soft_triple.state_dict())
    # SoftTriple's fc is (d, K * centers), class-major: column c * s + j is centre j of class c
    torch.testing.assert_close(fsc.anchors[2, 1], soft_triple.fc.detach()[:, 2 * 3 + 1])
