"""Tests for pml_anchors.app.models (trunks, embedding head, backbone registry)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pml_anchors.app.models import (
    BACKBONES,
    EmbeddingHead,
    LeNetPP,
    NCMNet,
    SmallCNN,
    build_backbone,
    default_backbone,
    resnet,
)


@pytest.mark.parametrize(
    ("name", "size", "features"),
    [
        ("small_cnn", 28, 128),
        ("small_cnn", 8, 128),
        ("lenetpp", 28, 1152),
        ("lenetpp", 8, 128),
        ("ncm_cnn", 28, 576),
        ("ncm_cnn", 8, 64),
    ],
)
def test_small_trunks_output_shapes(name, size, features):
    torch.manual_seed(0)
    trunk, embedder = build_backbone(name, in_channels=1, input_size=size, embedding_size=16)
    assert trunk.out_features == features
    assert embedder.in_features == features and embedder.out_features == 16
    x = torch.randn(3, 1, size, size)
    f = trunk(x)
    assert f.shape == (3, features)
    e = embedder(f)
    assert e.shape == (3, 16)
    e.sum().backward()
    assert all(p.grad is not None for p in trunk.parameters())


def test_small_cnn_width_and_tiny_inputs():
    m = SmallCNN(in_channels=3, input_size=4, width=8)
    assert m.out_features == 32
    assert m(torch.randn(2, 3, 4, 4)).shape == (2, 32)
    assert SmallCNN(input_size=28)(torch.randn(2, 1, 28, 28)).is_contiguous()
    with pytest.raises(ValueError):
        SmallCNN(width=0)


def test_lenetpp_architecture():
    m = LeNetPP()
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128]
    assert all(c.kernel_size == (5, 5) and c.padding == (2, 2) for c in convs)
    assert sum(isinstance(mod, nn.PReLU) for mod in m.modules()) == 6
    assert sum(isinstance(mod, nn.MaxPool2d) for mod in m.modules()) == 3
    assert m.out_features == 1152


def test_ncmnet_architecture():
    m = NCMNet(dropout=0.3)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 10 and all(c.out_channels == 64 and c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in m.modules()) == 10
    assert [mod.p for mod in m.modules() if isinstance(mod, nn.Dropout)] == [0.3, 0.3]
    assert not any(isinstance(mod, nn.Dropout) for mod in NCMNet().modules())
    assert m.out_features == 576


@pytest.mark.parametrize("cls", [LeNetPP, NCMNet])
def test_paper_trunks_reject_too_small_or_mismatched_inputs(cls):
    with pytest.raises(ValueError, match="at least 8x8"):
        cls(input_size=4)
    m = cls(input_size=28)
    with pytest.raises(ValueError, match="built for inputs of shape"):
        m(torch.randn(2, 1, 8, 8))


def test_embedding_head():
    torch.manual_seed(0)
    head = EmbeddingHead(10, 4)
    assert torch.all(head.fc.bias == 0)
    out = head(torch.randn(64, 10))
    assert out.shape == (64, 4) and (out < 0).any()
    norm_head = EmbeddingHead(10, 4, normalize=True)
    out = norm_head(torch.randn(5, 2, 5))  # >2-D inputs are flattened
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-6)
    assert "normalize=True" in repr(norm_head)


def test_resnet18_local_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)  # full model incl. fc, as saved from torchvision
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    m = resnet("resnet18", weights_path=path)
    assert m.out_features == 512 and isinstance(m.fc, nn.Identity)
    assert torch.equal(m.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    grey = resnet("resnet18", weights_path=path, in_channels=1)
    assert grey.conv1.weight.shape[1] == 1
    assert torch.allclose(grey.conv1.weight[:, 0], reference.conv1.weight.sum(dim=1), atol=1e-6)
    trunk, embedder = build_backbone(
        "resnet18", in_channels=3, input_size=32, embedding_size=8, weights_path=path, normalize=True
    )
    assert embedder(trunk(torch.randn(2, 3, 32, 32))).shape == (2, 8)
    bad = {k: v for k, v in reference.state_dict().items() if k != "layer1.0.conv1.weight"}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="layer1.0.conv1.weight"):
        resnet("resnet18", weights_path=tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        resnet("resnet18", weights_path=tmp_path / "missing.pth")


def test_resnet50_and_unknown_resnet():
    assert resnet("resnet50").out_features == 2048
    with pytest.raises(ValueError, match="resnet18"):
        resnet("resnet34")


def test_weights_path_for_small_trunk(tmp_path):
    src = SmallCNN()
    torch.save(src.state_dict(), tmp_path / "w.pth")
    trunk, _ = build_backbone(
        "small_cnn", in_channels=1, input_size=28, embedding_size=4, weights_path=tmp_path / "w.pth"
    )
    assert torch.equal(trunk.features[0].weight, src.features[0].weight)


def test_registry_and_defaults():
    assert set(BACKBONES) == {"small_cnn", "lenetpp", "ncm_cnn", "resnet18", "resnet50"}
    with pytest.raises(ValueError, match="Did you mean 'lenetpp'.*Available: lenetpp, ncm_cnn, resnet18"):
        build_backbone("lenet_pp", in_channels=1, input_size=28, embedding_size=2)
    assert default_backbone((1, 8, 8)) == "small_cnn"
    assert default_backbone((1, 28, 28)) == "small_cnn"
    assert default_backbone((3, 64, 64)) == "resnet18"
    assert default_backbone((224, 224)) == "resnet18"
    with pytest.raises(ValueError):
        default_backbone((28,))


def test_trunk_kwargs_are_forwarded():
    trunk, _ = build_backbone("small_cnn", in_channels=1, input_size=8, embedding_size=2, width=4)
    assert trunk.out_features == 16
    trunk, _ = build_backbone("ncm_cnn", in_channels=1, input_size=28, embedding_size=2, dropout=0.5)
    assert any(isinstance(m, nn.Dropout) for m in trunk.modules())


def test_lenetpp_uses_he_init_for_prelu():
    """RePoNet trains LeNet++ with He initialisation: std = gain / sqrt(fan_in), gain = sqrt(2 / (1 + 0.25²))."""
    torch.manual_seed(0)
    m = LeNetPP()
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    for conv in convs[1:]:  # fan_in 32·25 .. 128·25: enough weights for a tight std estimate
        fan_in = conv.in_channels * 25
        expected = math.sqrt(2.0 / (1 + 0.25**2)) / math.sqrt(fan_in)
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
        assert torch.count_nonzero(conv.bias) == 0


@pytest.mark.parametrize("name", ["small_cnn", "ncm_cnn"])
def test_channels_last_is_a_layout_only(name, tmp_path):
    """Both memory formats compute the same function, train the same and share checkpoints."""
    kw = dict(in_channels=1, input_size=28, embedding_size=4)
    torch.manual_seed(0)
    fast, fast_head = build_backbone(name, **kw)
    plain, plain_head = build_backbone(name, channels_last=False, **kw)
    second_conv = [[m for m in t.modules() if isinstance(m, nn.Conv2d)][1].weight for t in (fast, plain)]
    assert second_conv[0].is_contiguous(memory_format=torch.channels_last) and not second_conv[0].is_contiguous()
    assert second_conv[1].is_contiguous() and not second_conv[1].is_contiguous(memory_format=torch.channels_last)
    torch.save(fast.state_dict(), tmp_path / "trunk.pt")
    plain.load_state_dict(torch.load(tmp_path / "trunk.pt"))
    plain_head.load_state_dict(fast_head.state_dict())
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    for m in (fast, plain, fast_head, plain_head):
        m.double()
    torch.testing.assert_close(fast_head(fast(x)), plain_head(plain(x)))  # train mode: batch statistics
    grads = []
    for trunk, head in ((fast, fast_head), (plain, plain_head)):
        head(trunk(x)).pow(2).sum().backward()
        grads.append(trunk.features[0].weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("cls", [SmallCNN, NCMNet])
def test_channels_last_must_be_a_bool(cls):
    with pytest.raises(TypeError, match="channels_last must be True or False, got 'no'"):
        cls(channels_last="no")


def test_backbone_step_benchmark_quick_compares_both_formats():
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "backbone_step.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--backbones", "small_cnn", "--json", "-"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(proc.stdout)["results"]
    assert row["backbone"] == "small_cnn"
    assert row["contiguous_ms"] > 0 and row["channels_last_ms"] > 0
    assert row["speed_up"] == pytest.approx(row["contiguous_ms"] / row["channels_last_ms"])


def test_global_average_pooling_is_adaptive_pooling_with_a_deterministic_backward():
    """The trunks pool with a spatial mean: AdaptiveAvgPool2d(1)'s values and gradients, but an op that
    ``torch.use_deterministic_algorithms`` allows on CUDA (TrainConfig.deterministic)."""
    from pml_anchors.app.models import GlobalAvgPool, SmallCNN, resnet

    x = torch.randn(4, 6, 5, 3, requires_grad=True)
    adaptive, ours = torch.nn.AdaptiveAvgPool2d(1)(x), GlobalAvgPool()(x)
    torch.testing.assert_close(ours, adaptive)
    g = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(adaptive, x, g)[0])
    for trunk in (SmallCNN(), resnet("resnet18")):
        assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in trunk.modules())
        assert any(isinstance(m, GlobalAvgPool) for m in trunk.modules())


def test_resnet_pooling_gap_gmp_as_in_proxy_anchors_official_code():
    """pooling="max" / "avg+max": the adaptive max pooling's values and gradients (no ties in random inputs), summed
    with GAP for "avg+max"; the same parameters in every mode, so weights load across them."""
    from pml_anchors.app.models import GlobalAvgMaxPool, GlobalAvgPool, GlobalMaxPool

    x = torch.randn(4, 6, 5, 3, requires_grad=True)
    adaptive = torch.nn.AdaptiveMaxPool2d(1)(x)
    torch.testing.assert_close(GlobalMaxPool()(x), adaptive)
    g = torch.randn_like(adaptive)
    ours_grad = torch.autograd.grad(GlobalMaxPool()(x), x, g)[0]
    torch.testing.assert_close(ours_grad, torch.autograd.grad(adaptive, x, g)[0])
    torch.testing.assert_close(GlobalAvgMaxPool()(x), GlobalAvgPool()(x) + adaptive)

    plain, both = resnet("resnet18"), resnet("resnet18", pooling="avg+max")
    assert isinstance(both.avgpool, GlobalAvgMaxPool) and isinstance(
        resnet("resnet50", pooling="max").avgpool, GlobalMaxPool
    )
    assert both.state_dict().keys() == plain.state_dict().keys()
    both.load_state_dict(plain.state_dict())
    both.eval(), plain.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = plain.layer4(
            plain.layer3(plain.layer2(plain.layer1(plain.maxpool(plain.relu(plain.bn1(plain.conv1(images)))))))
        )
        torch.testing.assert_close(both(images), features.mean((2, 3)) + features.amax((2, 3)))
    with pytest.raises(ValueError, match="pooling must be one of 'avg', 'max', 'avg\\+max', got 'gem'"):
        resnet("resnet18", pooling="gem")


def test_a_trunk_option_the_backbone_does_not_take_names_the_backbone():
    with pytest.raises(TypeError, match="backbone 'small_cnn': .*pooling.*got options \\['pooling'\\]"):
        build_backbone("small_cnn", in_channels=1, input_size=28, embedding_size=4, pooling="avg+max")
