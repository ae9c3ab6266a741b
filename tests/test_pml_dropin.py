"""What a PML user brings to a pml-anchors loss works the PML way, or is refused with the pml-anchors answer:
``distance=`` (honoured or a ValueError naming the method's), ``weight_regularizer=``, the argument names and the
``state_dict`` of the PML loss a method replaces, imports by class name, the ``metric_loss_optimizer`` of a method with
fixed anchors, and the tester's normalisation."""

from __future__ import annotations

import re
from pathlib import Path

import method_cases
import pytest
import torch
from pml_anchors_ncm import NCMLoss
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance
from pytorch_metric_learning.losses import SoftTripleLoss
from pytorch_metric_learning.regularizers import LpRegularizer

import pml_anchors
import pml_anchors.losses as losses_module

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = sorted(method_cases.BUILTIN_METHODS)
#: method -> (the distance it computes, in PML's terms; an equivalent spelling it accepts; one it refuses)
DISTANCES = {
    "c_ncm": ((CosineSimilarity, True, 1), DotProductSimilarity(normalize_embeddings=True), LpDistance()),
    "e_ncm": ((LpDistance, False, 1), LpDistance(normalize_embeddings=False), LpDistance()),
    "cam": ((LpDistance, False, 1), LpDistance(normalize_embeddings=False, p=2), CosineSimilarity()),
    "fsc": ((DotProductSimilarity, False, 1), DotProductSimilarity(normalize_embeddings=False), CosineSimilarity()),
    "reponet": ((CosineSimilarity, True, 1), CosineSimilarity(), DotProductSimilarity(normalize_embeddings=False)),
    "proxy_anchor": ((CosineSimilarity, True, 1), DotProductSimilarity(normalize_embeddings=False), LpDistance()),
}


def _build(name, **kwargs):
    return method_cases.build(name, 4, 8, **kwargs)


def _value(loss, seed=0):
    g = torch.Generator().manual_seed(seed)
    return loss(torch.randn(12, loss.embedding_size, generator=g), torch.arange(12) % 4)


@pytest.mark.parametrize("name", BUILTIN)
def test_loss_distance_tells_the_truth(name):
    (cls, normalized, power), _, _ = DISTANCES[name]
    distance = _build(name).distance
    assert type(distance) is cls and distance.normalize_embeddings is normalized and distance.power == power


@pytest.mark.parametrize("name", BUILTIN)
def test_an_equivalent_distance_is_honoured_and_another_refused(name):
    _, accepted, refused = DISTANCES[name]
    assert _build(name, distance=accepted).distance is accepted
    with pytest.raises(ValueError, match=r"computes .*; distance must be \w+\(.*\) \(the default\), got"):
        _build(name, distance=refused)
    with pytest.raises(TypeError, match="distance must be a PML distance"):
        _build(name, distance="cosine")


def test_e_ncm_squared_distance_from_pml_lp_distance():
    squared = _build("e_ncm", distance=LpDistance(normalize_embeddings=False, power=2))
    assert squared.squared is True
    assert _value(squared) == pytest.approx(_value(_build("e_ncm", squared=True)).item())
    with pytest.raises(ValueError, match="distance must be LpDistance"):
        _build("e_ncm", squared=False, distance=LpDistance(normalize_embeddings=False, power=2))


@pytest.mark.parametrize("name", BUILTIN)
def test_weight_regularizer_needs_learnable_anchors(name):
    if isinstance(_build(name).anchors, torch.nn.Parameter):
        plain, regularised = _build(name), _build(name, weight_regularizer=LpRegularizer(), weight_reg_weight=1.0)
        assert _value(regularised) > _value(plain)  # the regulariser's term on the anchors is in the loss
    else:
        with pytest.raises(ValueError, match="weight_regularizer regularises learnable anchors, but .* are fixed"):
            _build(name, weight_regularizer=LpRegularizer())
        assert _build(name, learnable=True, weight_regularizer=LpRegularizer()).learnable


def test_pml_argument_names():
    c_ncm = pml_anchors.get_loss("c_ncm", 4, 8, temperature=0.05)  # NormalizedSoftmaxLoss's
    assert c_ncm.temperature == 0.05 and "temperature" in c_ncm._record_these
    fsc = pml_anchors.get_loss("fsc", 4, 8, centers_per_class=3)  # SoftTripleLoss's
    assert fsc.sub_centers == fsc.centers_per_class == 3 and fsc.anchors.shape == (4, 3, 8)
    fsc.load_state_dict(SoftTripleLoss(4, 8, centers_per_class=3).state_dict())
    with pytest.raises(ValueError, match="sub_centers=2 and centers_per_class=3"):
        pml_anchors.get_loss("fsc", 4, 8, sub_centers=2, centers_per_class=3)
    for refused in ("la", "gamma", "margin", "reg_weight"):
        with pytest.raises(
            TypeError, match=f"FixedSubCenterLoss got '{refused}', an argument of PML's SoftTripleLoss: "
        ):
            pml_anchors.get_loss("fsc", 4, 8, **{refused: 1.0})
    with pytest.raises(ValueError, match="temperature applies to C-NCM"):
        NCMLoss(4, 8, metric="euclidean", temperature=0.1)
    with pytest.raises(TypeError, match="ENCMLoss takes no temperature"):
        pml_anchors.get_loss("e_ncm", 4, 8, temperature=0.1)


@pytest.mark.parametrize("name", BUILTIN)
def test_loss_classes_import_by_name_like_pmls(name):
    spec = pml_anchors.get_method(name)
    cls = spec.resolve_loss()
    assert getattr(losses_module, cls.__name__) is cls
    assert cls.__name__ in dir(losses_module)
    package = __import__(cls.__module__.split(".")[0])
    assert getattr(package, cls.__name__) is cls  # ``from pml_anchors_ncm import CNCMLoss``
    with pytest.raises(ImportError, match="cannot import name 'NoSuchLoss'"):
        exec("from pml_anchors.losses import NoSuchLoss", {})


@pytest.mark.parametrize("name", BUILTIN)
def test_loss_optimizers_is_one_line_for_every_method(name):
    loss = _build(name)
    spec = pml_anchors.get_method(name)
    optimizers = pml_anchors.loss_optimizers(loss, torch.optim.SGD, lr=0.01, lr_multipliers=spec, momentum=0.9)
    if any(p.requires_grad for p in loss.parameters()):
        (optimizer,) = optimizers.values()
        assert list(optimizers) == ["metric_loss_optimizer"] and optimizer.defaults["momentum"] == 0.9
        lrs = {group["lr"] for group in optimizer.param_groups}
        assert lrs == {0.01 * spec.lr_multipliers.get("anchors", 1.0)}  # Proxy Anchor's proxies at 100x
    else:
        assert optimizers == {}  # fixed anchors: nothing to step (SGD(loss.parameters()) would raise)


def test_the_methods_multipliers_apply_to_its_learnable_variant_only():
    """Proxy Anchor's spec puts its proxies at 100x lr; built with fixed proxies (a buffer) there is nothing to train,
    so the same one line gives no optimizer instead of an error. A misspelt name is still refused."""
    spec = pml_anchors.get_method("proxy_anchor")
    fixed = pml_anchors.get_loss("proxy_anchor", 10, 8, learnable=False)
    assert pml_anchors.loss_optimizers(fixed, torch.optim.SGD, lr=0.01, lr_multipliers=spec) == {}
    with pytest.raises(ValueError, match=r"\['anchor'\].*does not have"):
        pml_anchors.param_groups(fixed, 0.01, {"anchor": 10.0})


def test_an_unknown_argument_names_the_loss_and_what_it_takes():
    with pytest.raises(TypeError) as error:
        pml_anchors.get_loss("c_ncm", 10, 9, scale=3.0)
    message = str(error.value)
    assert message.startswith("CNCMLoss() got an unexpected keyword argument 'scale'; it takes num_classes")
    assert "temperature" in message and "PML's" in message and "reducer" in message


def test_a_loss_whose_init_failed_still_has_a_repr():
    loss = NCMLoss.__new__(NCMLoss)
    torch.nn.Module.__init__(loss)
    assert "(not built)" in repr(loss)


@pytest.mark.parametrize("name", BUILTIN)
def test_tester_kwargs_give_the_space_the_method_was_trained_in(name):
    normalize = pml_anchors.get_method(name).normalize_embeddings
    assert pml_anchors.tester_kwargs(name) == {"normalize_embeddings": normalize}
    assert normalize is (name not in ("e_ncm", "cam"))  # trained on raw Euclidean distances


def _python_block(path: Path, marker: str) -> str:
    blocks = [b for b in re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL) if marker in b]
    assert len(blocks) == 1, f"{path.name}: one python block with {marker!r}"
    return blocks[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN)
def test_the_readme_pipeline_runs_for_every_method(name, capsys):
    code = _python_block(ROOT / "README.md", 'method = "proxy_anchor"')
    exec(compile(code.replace('method = "proxy_anchor"', f'method = "{name}"'), "README.md", "exec"), {})
    printed = float(capsys.readouterr().out.split()[-1])
    assert 0.5 < printed <= 1.0  # precision@1 on the held-out digits


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN)
def test_the_tutorials_pipeline_runs_for_every_method(name, capsys):
    code = _python_block(ROOT / "docs" / "plugins" / "tutorial.md", "center_loss")
    exec(compile(code.replace("center_loss", name), "tutorial.md", "exec"), {})
    assert re.search(r"precision@1 \d\.\d+", capsys.readouterr().out)
