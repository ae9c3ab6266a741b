"""Tests of the ``center_loss`` method: run ``python -m pytest`` in the project folder."""

import math

import pytest
import torch
import torch.nn.functional as F
from pml_anchors.testing import check_method
from torch.func import functional_call

import pml_anchors_center_loss
from pml_anchors_center_loss.loss import CenterLoss

PLUGIN = "pml-anchors-center-loss"


@pytest.fixture
def registry(pml_registry):
    """An isolated registry holding only this plugin (installed plugins are not discovered)."""
    pml_registry.add_plugin(pml_anchors_center_loss, name=PLUGIN)
    return pml_registry


@pytest.mark.parametrize("center_update", ["paper", "gradient"])
def test_conformance(registry, center_update):
    """The checks every pml-anchors method passes: a PML loss, finite loss and gradients, learnable
    centres in parameters() with gradients, seeded initializer, state_dict round trip, PML trainer."""
    report = check_method("center_loss", loss_kwargs={"center_update": center_update})
    assert report["method"] == PLUGIN + ":center_loss"


def test_registered_spec(registry):
    import pml_anchors

    spec = pml_anchors.get_method("center")  # the alias
    assert spec.name == "center_loss" and spec.plugin == PLUGIN
    loss = pml_anchors.get_loss("center_loss", num_classes=10, embedding_size=16)
    assert type(loss) is CenterLoss and loss.lambda_c == 0.003 and loss.center_update == "paper"
    assert loss.centers is loss.anchors and isinstance(loss.anchors, torch.nn.Parameter)
    # the lr multiplier names a real parameter of the loss (the centres)
    groups = pml_anchors.param_groups(loss, 1e-3, spec)
    assert sorted(g["lr"] for g in groups) == pytest.approx([1e-3, 1e-2])


def hand_example(center_update="paper", lambda_c=0.1):
    """K = 2, d = 2; W = I, b = 0; centres c0 = (1, 0), c1 = (0, 1); x0 = (1, 0) of class 0, x1 = (0, 2) of class 1."""
    loss = CenterLoss(
        2, 2, anchors=torch.tensor([[1.0, 0.0], [0.0, 1.0]]), lambda_c=lambda_c, center_update=center_update
    ).double()
    with torch.no_grad():
        loss.weight.copy_(torch.eye(2))
        loss.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    return loss, x, torch.tensor([0, 1])


@pytest.mark.parametrize("center_update", ["paper", "gradient"])
def test_closed_form_value(center_update):
    """Logits (1, 0) and (0, 2): softmax terms log(1 + e^-1), log(1 + e^-2); centre terms 0 and ½·1.
    L = mean of the softmax terms + λ · mean of the centre terms (λ = 0.1)."""
    loss, x, y = hand_example(center_update)
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))) / 2 + 0.1 * (0 + 0.5) / 2
    assert math.isclose(loss(x, y).item(), expected, rel_tol=1e-12)


def test_paper_mode_centre_gradient_is_eq4_and_embedding_gradient_is_true_gradient():
    loss, x, y = hand_example("paper")
    loss(x, y).backward()
    # Δc_1 = (c_1 - x_1) / (1 + 1) = ((0, 1) - (0, 2)) / 2; Δc_0 = (c_0 - x_0) / 2 = 0
    assert torch.equal(loss.anchors.grad, torch.tensor([[0.0, 0.0], [0.0, -0.5]], dtype=torch.float64))
    reference, x_ref, _ = hand_example("gradient")
    reference(x_ref, y).backward()
    assert torch.allclose(x.grad, x_ref.grad, rtol=0, atol=1e-15)
    assert torch.allclose(loss.weight.grad, reference.weight.grad, rtol=0, atol=1e-15)
    # the true gradient of λ/B Σ ½‖x − c‖² for c_1 is λ/B (c_1 − x_1) = 0.1 / 2 · (0, −1)
    assert torch.allclose(reference.anchors.grad, torch.tensor([[0.0, 0.0], [0.0, -0.05]], dtype=torch.float64))


def test_sgd_step_with_lr_alpha_is_the_papers_centre_update():
    """Algorithm 1 of the paper: c_j <- c_j - α Σ_{y_i=j}(c_j - x_i) / (1 + n_j), centres absent from the batch stay."""
    torch.manual_seed(0)
    alpha, k, d = 0.5, 5, 3
    loss = CenterLoss(k, d, seed=0).double()
    x = torch.randn(12, d, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 0, 1])  # class 3 and 4 absent
    before = loss.anchors.detach().clone()
    optimizer = torch.optim.SGD([loss.anchors], lr=alpha)
    loss(x, y).backward()
    optimizer.step()
    expected = before.clone()
    for j in range(k):
        members = x[y == j]
        expected[j] -= alpha * (before[j] - members).sum(0) / (1 + len(members))
    assert torch.allclose(loss.anchors.detach(), expected, rtol=0, atol=1e-12)
    assert torch.equal(loss.anchors.detach()[3:], before[3:])


def _as_function(loss, labels):
    names = [n for n, _ in loss.named_parameters()]

    def f(x, *params):
        return functional_call(loss, dict(zip(names, params, strict=True)), (x, labels))

    return f, tuple(p.detach().clone().requires_grad_(True) for _, p in loss.named_parameters())


def test_gradcheck_gradient_mode_all_inputs():
    torch.manual_seed(0)
    loss = CenterLoss(4, 3, seed=0, lambda_c=0.7, center_update="gradient").double()
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    f, params = _as_function(loss, torch.tensor([0, 1, 1, 2, 3, 3, 3]))
    assert torch.autograd.gradcheck(f, (x, *params))


def test_gradcheck_paper_mode_embeddings_and_classifier():
    """In paper mode only the centres' gradient is replaced; embeddings and (W, b) get the true gradient."""
    torch.manual_seed(0)
    loss = CenterLoss(4, 3, seed=0, lambda_c=0.7, learnable=False).double()  # centres fixed: true gradient
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    f, params = _as_function(loss, torch.tensor([0, 1, 1, 2, 3, 3, 3]))
    assert torch.autograd.gradcheck(f, (x, *params))


def test_lambda_zero_is_plain_softmax_cross_entropy():
    torch.manual_seed(0)
    loss = CenterLoss(5, 4, lambda_c=0.0)
    x, y = torch.randn(9, 4), torch.randint(0, 5, (9,))
    expected = F.cross_entropy(x @ loss.weight.T + loss.bias, y)
    assert torch.allclose(loss(x, y), expected)


def test_predict_uses_the_softmax_classifier():
    loss = CenterLoss(3, 2, bias=False)
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    assert loss.predict(torch.tensor([[2.0, 1.0], [0.0, 3.0], [-5.0, 1.0]])).tolist() == [0, 1, 2]
    assert "bias" not in dict(loss.named_parameters())


def test_seed_makes_the_whole_loss_deterministic():
    a, b = CenterLoss(6, 5, seed=3), CenterLoss(6, 5, seed=3)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize(
    "kwargs, message",
    [({"lambda_c": -1.0}, "lambda_c"), ({"lambda_c": "big"}, "lambda_c"), ({"center_update": "ema"}, "center_update")],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CenterLoss(3, 2, **kwargs)
