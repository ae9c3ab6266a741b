"""Backbones (trunks) and the embedding head used with the anchor/proxy methods.

Every model is a plain :class:`torch.nn.Module`. A *trunk* maps images ``(N, C, H, W)`` to flat
features ``(N, trunk.out_features)``; the :class:`EmbeddingHead` maps those features to the
embedding that the metric-learning loss sees. This is the ``{"trunk": ..., "embedder": ...}``
split that pytorch-metric-learning's trainers and testers expect.

Backbones (see :data:`BACKBONES`, :func:`build_backbone`, :func:`default_backbone`):

``small_cnn``  :class:`SmallCNN`, a fast CPU trunk for 8×8 – 32×32 grey images (our own design).
``lenetpp``    :class:`LeNetPP`, LeNet++ of Wen et al. (ECCV 2016), as used by RePoNet.
``ncm_cnn``    :class:`NCMNet`, the MNIST CNN of the anchor-based NCM loss paper (Hao et al., arXiv 1804.08087).
``resnet18``   :func:`resnet`, torchvision ResNet-18 (He et al., CVPR 2016), never downloaded.
``resnet50``   :func:`resnet`, torchvision ResNet-50.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..validators import check_bool, naming_rejected_options

__all__ = [
    "BACKBONES",
    "EmbeddingHead",
    "GlobalAvgMaxPool",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "LeNetPP",
    "NCMNet",
    "SmallCNN",
    "build_backbone",
    "compile_models",
    "default_backbone",
    "resnet",
]


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


def memory_format(channels_last: bool) -> torch.memory_format:
    """The memory format the small trunks keep their convolutions and inputs in.

    Channels-last makes a whole training step of ``small_cnn`` and ``ncm_cnn`` faster on CPU
    (measured by ``benchmarks/backbone_step.py``, which prints both formats side by side);
    ``channels_last=False`` keeps PyTorch's default contiguous layout.
    """
    check_bool(channels_last, "channels_last")
    return torch.channels_last if channels_last else torch.contiguous_format


def _check_input(module: nn.Module, x: torch.Tensor) -> None:
    """Raise a clear error if ``x`` is not ``(N, in_channels, input_size, input_size)``."""
    expected = (module.in_channels, module.input_size, module.input_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{type(module).__name__} was built for inputs of shape (N, {expected[0]}, {expected[1]}, "
            f"{expected[2]}), got {tuple(x.shape)}; build it with matching in_channels/input_size."
        )


class GlobalAvgPool(nn.Module):
    """Mean over the spatial dimensions, ``(N, C, H, W) -> (N, C, 1, 1)``: ``nn.AdaptiveAvgPool2d(1)``'s values, but
    with a deterministic CUDA backward (an expand), so the trunks also train under
    ``torch.use_deterministic_algorithms(True)`` (``TrainConfig.deterministic``), where the adaptive pooling's
    CUDA backward raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class GlobalMaxPool(nn.Module):
    """Maximum over the spatial dimensions (GMP), ``(N, C, H, W) -> (N, C, 1, 1)``: ``nn.AdaptiveMaxPool2d(1)``'s
    values, through ``amax``, whose CUDA backward ``torch.use_deterministic_algorithms`` allows (the adaptive
    pooling's raises there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3), keepdim=True)


class GlobalAvgMaxPool(nn.Module):
    """GAP + GMP, summed, ``(N, C, H, W) -> (N, C, 1, 1)``: the pooling of the embedding network in the Proxy
    Anchor paper's official code (Kim et al., CVPR 2020), common to later DML baselines."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True) + x.amax(dim=(2, 3), keepdim=True)


#: ``pooling`` of :func:`resnet` → the global pooling layer before the embedding head
POOLINGS: dict[str, Callable[[], nn.Module]] = {"avg": GlobalAvgPool, "max": GlobalMaxPool, "avg+max": GlobalAvgMaxPool}


class SmallCNN(nn.Module):
    """A small, fast CNN trunk for small grey images (MNIST 28×28, sklearn digits 8×8).

    Our own design (not from a paper), sized to train MNIST to ≥ 99 % test accuracy in a few
    CPU epochs: four 3×3 conv-BN-ReLU blocks of ``width``, ``2·width``, ``4·width`` and
    ``4·width`` channels, a 2×2 max-pooling after each of the first three blocks while the map is
    at least 2×2 (28 → 14 → 7 → 3; 8 → 4 → 2 → 1), then global average pooling, so
    ``out_features = 4 * width`` and any ``input_size`` ≥ 1 works. Convolutions run in
    channels-last memory format unless ``channels_last=False`` (see :func:`memory_format`).
    """

    def __init__(self, in_channels: int = 1, input_size: int = 28, width: int = 32, channels_last: bool = True):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.in_channels = in_channels
        self.input_size = input_size
        chans = [in_channels, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        size = input_size
        for i in range(4):
            layers += _conv_bn_relu(chans[i], chans[i + 1])
            if i < 3 and size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        layers += [GlobalAvgPool(), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.out_features = 4 * width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.memory_format = memory_format(channels_last)
        self.to(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.contiguous(memory_format=self.memory_format))


class LeNetPP(nn.Module):
    """LeNet++ trunk of Wen et al., "A Discriminative Feature Learning Approach for Deep Face
    Recognition" (center loss, ECCV 2016), also used on MNIST by RePoNet (Pernici et al.,
    "Regular Polytope Networks", 2019/2021).

    Three stages of two 5×5 convolutions (padding 2) with 32, 64 and 128 channels, a PReLU
    (channel-wise, Caffe's default) after every convolution and 2×2 max-pooling (stride 2, floor)
    after each stage, then flatten: 28×28 → 14 → 7 → 3, so ``out_features = 128·3·3 = 1152``.
    Convolutions use He initialisation for PReLU (He et al., ICCV 2015), as RePoNet's MNIST runs do.
    The 2-D (or any-D) feature FC of the paper is the :class:`EmbeddingHead`. ``input_size`` must be ≥ 8 (8×8 digits give 128
    features); smaller inputs raise ``ValueError``.
    """

    def __init__(self, in_channels: int = 1, input_size: int = 28):
        super().__init__()
        if input_size < 8:
            raise ValueError(f"LeNetPP needs inputs of at least 8x8 (three 2x2 poolings), got {input_size}")
        self.in_channels = in_channels
        self.input_size = input_size
        layers: list[nn.Module] = []
        prev = in_channels
        for ch in (32, 64, 128):
            for _ in range(2):
                layers += [nn.Conv2d(prev, ch, kernel_size=5, padding=2), nn.PReLU(ch)]
                prev = ch
            layers.append(nn.MaxPool2d(2, 2))
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        side = input_size // 2 // 2 // 2
        self.out_features = 128 * side * side
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                # He et al. (ICCV 2015) init for PReLU (slope 0.25), as RePoNet trains LeNet++ ("He init")
                nn.init.kaiming_normal_(m.weight, a=0.25, nonlinearity="leaky_relu")
                if m.bias is not None:  # always: the convolutions above keep their bias
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x)
        return self.features(x)


class NCMNet(nn.Module):
    """MNIST CNN of Hao et al., anchor-based Nearest Class Mean loss (arXiv 1804.08087), Table 1
    ("MNIST" column; the "for Figure 2" column is the same network with a 2-d FC output).

    3×3 convolutions (padding 1), each followed by BatchNorm and ReLU, all with 64 channels::

        conv×1 | conv×3 | maxpool | [dropout] | conv×3 | maxpool | [dropout] | conv×3 | maxpool

    then flatten: 28×28 → 14 → 7 → 3, ``out_features = 64·3·3 = 576``. Dropout with probability
    ``dropout`` after the first two poolings (off by default). ``input_size`` must be ≥ 8 (8×8
    digits give 64 features); smaller inputs raise ``ValueError``. Convolutions run in channels-last
    memory format unless ``channels_last=False`` (see :func:`memory_format`).
    """

    def __init__(self, in_channels: int = 1, dropout: float = 0.0, input_size: int = 28, channels_last: bool = True):
        super().__init__()
        if input_size < 8:
            raise ValueError(f"NCMNet needs inputs of at least 8x8 (three 2x2 poolings), got {input_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.input_size = input_size
        width = 64
        layers: list[nn.Module] = _conv_bn_relu(in_channels, width)
        for stage in range(3):
            for _ in range(3):
                layers += _conv_bn_relu(width, width)
            layers.append(nn.MaxPool2d(2, 2))
            if stage < 2 and dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        side = input_size // 2 // 2 // 2
        self.out_features = width * side * side
        self.memory_format = memory_format(channels_last)
        self.to(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x)
        return self.features(x.contiguous(memory_format=self.memory_format))


_RESNET_DIMS = {"resnet18": 512, "resnet50": 2048}


def resnet(
    name: str = "resnet18",
    weights_path: str | os.PathLike | None = None,
    in_channels: int = 3,
    pooling: str = "avg",
) -> nn.Module:
    """torchvision ResNet-18/50 (He et al., "Deep Residual Learning for Image Recognition",
    CVPR 2016) as a trunk: ``fc`` replaced by ``Identity``, ``out_features`` 512 / 2048.

    ``pooling`` is the global pooling before the embedding head (:data:`POOLINGS`): ``"avg"`` as in torchvision,
    ``"max"``, or ``"avg+max"`` as in Proxy Anchor's official code (``--backbone-kwargs '{"pooling": "avg+max"}'``).

    The network is always built with ``weights=None`` — nothing is ever downloaded. Pass
    ``weights_path`` to load a local state dict (e.g. ImageNet weights saved once with
    ``torch.save(torchvision.models.resnet50(weights="DEFAULT").state_dict(), path)``); ``fc.*``
    and a leading ``module.`` are ignored, every other backbone key must match (strict). With
    ``in_channels != 3`` the first convolution is rebuilt; 3-channel weights for it are averaged
    over the colour channels.
    """
    import torchvision

    if name not in _RESNET_DIMS:
        raise ValueError(f"Unknown resnet {name!r}; choose one of {sorted(_RESNET_DIMS)}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}, got {pooling!r}")
    model = getattr(torchvision.models, name)(weights=None)
    if in_channels != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(in_channels, old.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.fc = nn.Identity()
    model.avgpool = POOLINGS[pooling]()  # "avg": AdaptiveAvgPool2d(1)'s values, deterministic on CUDA
    if weights_path is not None:
        state = _load_state_dict(weights_path)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        w = state.get("conv1.weight")
        if w is not None and w.shape[1] != in_channels:
            if w.shape[1] != 3:
                raise ValueError(f"conv1 in {weights_path} has {w.shape[1]} input channels, cannot adapt")
            state["conv1.weight"] = w.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (3 / in_channels)
        model.load_state_dict(state, strict=True)
    model.out_features = _RESNET_DIMS[name]
    return model


def _load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        what = "is not a regular file" if os.path.exists(path) else "not found"
        raise FileNotFoundError(f"weights file {what}: {path} (expected a state dict saved with torch.save)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not contain a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


class EmbeddingHead(nn.Module):
    """Linear embedding layer ``in_features → embedding_size`` (no activation, so embeddings
    can take negative coordinates as the methods' anchors require), optionally L2-normalised.

    Initialised like Proxy Anchor's official code (Kim et al., CVPR 2020): Kaiming-normal
    weights (``mode="fan_out"``), zero bias. Inputs with more than 2 dims are flattened.
    """

    def __init__(self, in_features: int, embedding_size: int, normalize: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = embedding_size
        self.normalize = normalize
        self.fc = nn.Linear(in_features, embedding_size)
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_out")
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            x = x.flatten(1)
        x = self.fc(x)
        return F.normalize(x, p=2, dim=1) if self.normalize else x

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"


def _small_cnn(in_channels: int, input_size: int, **kw) -> nn.Module:
    return SmallCNN(in_channels=in_channels, input_size=input_size, **kw)


def _lenetpp(in_channels: int, input_size: int, **kw) -> nn.Module:
    return LeNetPP(in_channels=in_channels, input_size=input_size, **kw)


def _ncm_cnn(in_channels: int, input_size: int, **kw) -> nn.Module:
    return NCMNet(in_channels=in_channels, input_size=input_size, **kw)


def _resnet18(in_channels: int, input_size: int, **kw) -> nn.Module:
    return resnet("resnet18", in_channels=in_channels, **kw)


def _resnet50(in_channels: int, input_size: int, **kw) -> nn.Module:
    return resnet("resnet50", in_channels=in_channels, **kw)


#: name → factory ``(in_channels, input_size, **kwargs) -> trunk`` (trunk has ``out_features``).
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": _small_cnn,
    "lenetpp": _lenetpp,
    "ncm_cnn": _ncm_cnn,
    "resnet18": _resnet18,
    "resnet50": _resnet50,
}


def default_backbone(input_shape: Sequence[int]) -> str:
    """Backbone name to use for inputs of ``input_shape`` ``(C, H, W)`` (or ``(H, W)``).

    Small images (both sides ≤ 32: sklearn digits, MNIST) → ``"small_cnn"``; anything larger
    (natural images, ImageFolder datasets) → ``"resnet18"``.
    """
    if len(input_shape) not in (2, 3):
        raise ValueError(f"input_shape must be (C, H, W) or (H, W), got {tuple(input_shape)}")
    h, w = input_shape[-2:]
    return "small_cnn" if max(h, w) <= 32 else "resnet18"


def build_backbone(
    name: str,
    *,
    in_channels: int,
    input_size: int,
    embedding_size: int,
    weights_path: str | os.PathLike | None = None,
    normalize: bool = False,
    **trunk_kwargs,
) -> tuple[nn.Module, EmbeddingHead]:
    """Build ``(trunk, embedder)`` for PML's ``models={"trunk": trunk, "embedder": embedder}``.

    :param name: a key of :data:`BACKBONES` (see :func:`default_backbone`).
    :param weights_path: optional local state dict for the trunk (ResNets: backbone keys, ``fc``
        ignored; other trunks: loaded strictly). Never downloads anything.
    :param normalize: L2-normalise the embeddings in the head.
    :param trunk_kwargs: extra keyword arguments for the trunk (e.g. ``width`` for ``small_cnn``,
        ``dropout`` for ``ncm_cnn``, ``pooling`` for the ResNets); one the trunk does not take is a
        ``TypeError`` naming the backbone.
    """
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, BACKBONES, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"Unknown backbone {name!r}.{hint} Available: {', '.join(sorted(BACKBONES))}")
    factory = BACKBONES[name]
    resnet_like = name.startswith("resnet")
    extra = {"weights_path": weights_path} if resnet_like else {}
    with naming_rejected_options(f"backbone {name!r}", trunk_kwargs):
        trunk = factory(in_channels, input_size, **extra, **trunk_kwargs)
    if not resnet_like and weights_path is not None:
        trunk.load_state_dict(_load_state_dict(weights_path), strict=True)
    # every trunk sets an int ``out_features`` (the BACKBONES contract); nn.Module's __getattr__ types it loosely
    embedder = EmbeddingHead(cast(int, trunk.out_features), embedding_size, normalize=normalize)
    return trunk, embedder


#: ``torch.compile`` keyword arguments that :func:`compile_models` passes on
COMPILE_OPTIONS = ("backend", "mode", "dynamic", "fullgraph", "options")


def check_compile_kwargs(kwargs: object) -> dict:
    """A dict of :data:`COMPILE_OPTIONS` (values are checked by torch when the models are compiled)."""
    if not isinstance(kwargs, dict):
        raise TypeError(f"compile_kwargs must be a dict of torch.compile options, got {type(kwargs).__name__}")
    unknown = sorted(set(kwargs) - set(COMPILE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown compile_kwargs {unknown}; torch.compile options here: {', '.join(COMPILE_OPTIONS)}")
    return dict(kwargs)


def compile_models(*models: nn.Module, **compile_kwargs) -> None:
    """Compile each model's forward with ``torch.compile`` (:meth:`torch.nn.Module.compile`), in place.

    The modules themselves are kept (not wrapped in an ``OptimizedModule``), so their ``state_dict`` keys, PML's
    ``models`` dict and checkpoints are the same as without compiling. The first batch in each mode (train /
    eval) compiles, which takes seconds; afterwards every step runs the generated code. ``compile_kwargs``:
    :data:`COMPILE_OPTIONS` (e.g. ``mode="max-autotune"``, ``backend="aot_eager"``); a bad value is a
    ``ValueError``.
    """
    kwargs = check_compile_kwargs(compile_kwargs)
    for model in models:
        try:
            model.compile(**kwargs)
        except RuntimeError as error:  # torch's own check of mode / backend / options
            raise ValueError(f"torch.compile rejected compile_kwargs {kwargs}: {error}") from None
