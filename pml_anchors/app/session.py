"""Train every method the same way: PML's ``MetricLossOnly`` trainer, no miner.

>>> from pml_anchors.training import TrainConfig, run
>>> results = run(TrainConfig(method="proxy_anchor", dataset="digits", epochs=2))  # doctest: +SKIP

:func:`build` assembles a :class:`Session` from a :class:`TrainConfig`: the dataset
(:func:`pml_anchors.data.load_dataset`), ``trunk``/``embedder``
(:func:`pml_anchors.models.build_backbone`), the loss under PML's ``metric_loss`` key
(:func:`pml_anchors.registry.build_loss`), optimizers under PML's keys (``trunk_optimizer``,
``embedder_optimizer`` and, only when the loss has trainable parameters,
``metric_loss_optimizer`` built by :func:`pml_anchors.optim.param_groups` with the method's lr
multipliers), and the method's trainer hooks chained with the caller's and attached.
:func:`train` runs it, :func:`run` also evaluates (:func:`pml_anchors.evaluation.evaluate`) and
writes ``results.json`` and ``checkpoint.pt``.

* **Device**: ``"auto"`` picks CUDA when available; models *and* loss are moved there and the
  trainer's ``data_device`` is set (PML's trainer moves only the batches).
* **AMP**: PML's trainers have no mixed precision, so :class:`AMPMetricLossOnly` subclasses
  ``MetricLossOnly`` and changes only the models' forward (under ``torch.autocast``: fp16 on
  CUDA, bf16 on CPU; the loss gets float32 embeddings) and, for fp16, the backward/step
  (``GradScaler``; gradients are unscaled before PML's gradient clippers).
* **Reproducibility**: :func:`seed_everything` seeds ``random``, numpy, torch and PML's
  ``c_f.NUMPY_RANDOM`` before anything is built, and every epoch starts from a seed derived from
  ``(seed, epoch)``, so a run resumed from a checkpoint draws the same batches as an
  uninterrupted one (on CPU the weights match exactly).
* **Learning-rate schedule**: ``lr_schedule`` ``"cosine"`` (per iteration, to 0 over the run), ``"step"``
  (``lr_milestones``, ``lr_gamma``) or ``"plateau"`` (on the training loss; ``lr_gamma``, ``lr_patience``),
  one scheduler per optimizer under PML's ``lr_schedulers`` keys (:mod:`pml_anchors.lr_schedules`).
* **Checkpoints** (:mod:`pml_anchors.checkpoints`): a dict of plain ``state_dict``\\ s (trunk, embedder, loss,
  optimizers, lr schedulers, grad scaler) with the config and epoch; loadable with
  ``torch.load(weights_only=True)``. ``results.json``: :mod:`pml_anchors.results`.
* **Baselines**: ``method="baseline:<name>"`` (:mod:`pml_anchors.baselines`), or pass any PML loss
  (instance or factory ``f(num_classes, embedding_size)``) as ``loss=`` to :func:`run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning import trainers
from pytorch_metric_learning.utils import common_functions as c_f

from .checkpoints import load_checkpoint, plain, save_checkpoint
from .evaluation import evaluate, resolve_device
from .lr_schedules import check_schedule, load_scheduler_state, make_lr_schedulers, step_plateau
from .optim import param_groups
from .recall_at_k import DEFAULT_RECALL_AT, check_recall_at
from .registry import MethodSpec, build_loss, build_trainer_hooks
from .results import results_dict, write_json
from .trainer_hooks import chain_hooks

#: embedding width used when neither the config nor the loss sets one
DEFAULT_EMBEDDING_SIZE = 64
OPTIMIZERS = ("adam", "adamw", "sgd")
#: config fields a resumed run must share with its checkpoint
RESUME_KEYS = (
    "method",
    "dataset",
    "protocol",
    "seed",
    "limit",
    "loss_kwargs",
    "backbone",
    "embedding_size",
    "lr_schedule",
)


@dataclass
class TrainConfig:
    """Everything a run needs; JSON-friendly so that checkpoints can rebuild the run.

    :param method: a registered method (name, alias or ``dist:name``) or ``"baseline:<name>"``.
    :param embedding_size: ``None`` lets the loss derive it (e.g. polytopes) or uses
        :data:`DEFAULT_EMBEDDING_SIZE`.
    :param backbone: a :data:`pml_anchors.models.BACKBONES` key; ``None`` picks one for the input.
    :param optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9), for every model and the
        loss; the loss's parameter groups get ``lr`` times the method's ``lr_multipliers``.
    :param lr_schedule: ``"constant"`` (default); ``"cosine"``: every optimizer's lr follows
        ``lr * (1 + cos(pi * t / T)) / 2`` over the run's ``T = epochs * iterations_per_epoch`` steps;
        ``"step"``: times ``lr_gamma`` (default 0.1) after each epoch in ``lr_milestones``;
        ``"plateau"``: times ``lr_gamma`` when the epoch's mean training loss has not improved for
        ``lr_patience`` (default 10) epochs. See :mod:`pml_anchors.lr_schedules`.
    :param amp: mixed precision (fp16 + GradScaler on CUDA, bf16 on CPU; see ``amp_dtype``).
    :param limit: train on this many items (class-balanced); ``test_limit`` likewise.
    :param output: folder for ``results.json`` and ``checkpoint.pt`` (written every epoch when
        ``checkpoint_every_epoch``).
    :param eval_every_epoch: evaluate after every epoch (``history``; used by ``bench``).
    :param num_threads: ``torch.set_num_threads`` for the run (``None``: leave it). Tiny CPU models
        are often fastest with 1, especially on a busy machine.
    :param compile: compile the trunk's and the embedder's forward with ``torch.compile``
        (:func:`pml_anchors.models.compile_models`; the loss is left eager, see ``docs/compile.md``);
        ``compile_kwargs`` are ``torch.compile``'s ``backend``, ``mode``, ``dynamic``, ``fullgraph``, ``options``.
    :param deterministic: also make GPU runs repeatable: :func:`use_deterministic_algorithms` (PyTorch's
        deterministic mode, process-wide; an op without a deterministic kernel then raises, naming itself). CPU runs
        are bit-reproducible from the seed without it.
    :param dataloader_num_workers: DataLoader worker processes for training and evaluation (PML's
        trainer and tester); 0 loads in the main process. Without random transforms the results do
        not depend on it.
    :param recall_at: the Ks of the ``recall_at_<K>`` metrics evaluated beside PML's (default 1, 2, 4, 8, the
        Proxy Anchor paper's CUB/Cars columns; SOP's are 1, 10, 100, 1000); see :mod:`pml_anchors.recall_at_k`.
    """

    method: str
    dataset: str = "digits"
    data_root: str | None = None
    protocol: str = "same_class"
    epochs: int = 10
    embedding_size: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    backbone: str | None = None
    device: str = "auto"
    amp: bool = False
    seed: int = 0
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    hook_kwargs: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    output: str | None = None
    test_limit: int | None = None
    amp_dtype: str | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    dataloader_num_workers: int = 0
    eval_every_epoch: bool = False
    eval_batch_size: int = 256
    checkpoint_every_epoch: bool = True
    num_threads: int | None = None
    lr_schedule: str = "constant"
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float | None = None
    lr_patience: int | None = None
    compile: bool = False
    compile_kwargs: dict[str, Any] = field(default_factory=dict)
    deterministic: bool = False
    recall_at: list[int] = field(default_factory=lambda: list(DEFAULT_RECALL_AT))

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"method must be a non-empty string, got {self.method!r}")
        if self.optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        for name, low in (("epochs", 0), ("batch_size", 2), ("eval_batch_size", 1), ("dataloader_num_workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.embedding_size is not None and self.embedding_size < 1:
            raise ValueError(f"embedding_size must be positive, got {self.embedding_size}")
        self.lr_milestones = check_schedule(
            self.lr_schedule, self.epochs, self.lr_milestones, self.lr_gamma, self.lr_patience
        )
        for name in ("compile", "deterministic", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        from .models import check_compile_kwargs

        self.compile_kwargs = check_compile_kwargs(self.compile_kwargs)
        self.recall_at = list(check_recall_at(self.recall_at))
        if self.amp_dtype not in (None, "float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be None, 'float16' or 'bfloat16', got {self.amp_dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# -- seeding, logging -----------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy, torch (all devices) and PML's ``c_f.NUMPY_RANDOM``."""
    seed = int(seed) % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    c_f.NUMPY_RANDOM = np.random.RandomState(seed)


def use_deterministic_algorithms() -> None:
    """Turn on PyTorch's deterministic mode for this process, so that a seeded GPU run repeats bit for bit.

    ``torch.use_deterministic_algorithms(True)`` (which also makes cuDNN pick deterministic convolutions),
    ``torch.backends.cudnn.benchmark = False``, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS needs it for
    repeatable GEMMs; set only if unset, and effective only before this process's first cuBLAS call). An op that
    has no deterministic kernel then raises a ``RuntimeError`` naming itself. It stays on for the rest of the process.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed every epoch starts from (so resumed and uninterrupted runs match)."""
    return (int(seed) * 1_000_003 + int(epoch)) % 2**32


def set_verbosity(verbose: bool) -> None:
    """PML's logger at INFO (``verbose``) or WARNING (default: quiet)."""
    c_f.LOGGER.setLevel(logging.INFO if verbose else logging.WARNING)


# -- the trainer ----------------------------------------------------------------------------------
class AMPMetricLossOnly(trainers.MetricLossOnly):
    """PML's ``MetricLossOnly`` with optional mixed precision (PML's trainers have none).

    With ``amp_dtype=None`` this is exactly ``MetricLossOnly``. Otherwise the models' forward
    (``compute_embeddings``: trunk and embedder) runs under ``torch.autocast`` with ``amp_dtype``
    and the miner and loss get float32 embeddings, outside autocast: the loss is cheap next to the
    backbone, more accurate in fp32, and PML losses whose ``cast_types`` rewrites ``W.data``
    (ArcFace, CosFace, NormalizedSoftmax, ...) would otherwise turn their weights into fp16/bf16
    for good. With a ``scaler`` (``torch.amp.GradScaler``, for fp16) the backward is scaled,
    gradients are unscaled before PML's ``gradient_clippers`` and optimizers step through the
    scaler (optimizers whose parameters got no gradient, e.g. frozen in a warm-up, are skipped).
    """

    def __init__(self, *args: Any, amp_dtype: torch.dtype | None = None, scaler: Any = None, **kwargs: Any):
        self.amp_dtype = amp_dtype
        self.scaler = scaler
        super().__init__(*args, **kwargs)

    def compute_embeddings(self, data):
        if self.amp_dtype is None:
            return super().compute_embeddings(data)
        with torch.autocast(device_type=torch.device(self.data_device).type, dtype=self.amp_dtype):
            embeddings = super().compute_embeddings(data)
        return embeddings.float()

    def backward(self):
        if self.scaler is None:
            return super().backward()
        self.scaler.scale(self.losses["total_loss"]).backward()

    def _optimizers_to_step(self) -> list[torch.optim.Optimizer]:
        return [
            opt
            for key, opt in self.optimizers.items()
            if c_f.regex_replace("_optimizer$", "", key) not in self.freeze_these
            and any(p.grad is not None for group in opt.param_groups for p in group["params"])
        ]

    def clip_gradients(self):
        if self.scaler is not None and self.gradient_clippers:
            for opt in self._optimizers_to_step():
                self.scaler.unscale_(opt)
        super().clip_gradients()

    def step_optimizers(self):
        if self.scaler is None:
            return super().step_optimizers()
        for opt in self._optimizers_to_step():
            self.scaler.step(opt)
        self.scaler.update()


def _amp_setup(config: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, Any]:
    if not config.amp:
        return None, None
    name = config.amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")
    dtype = getattr(torch, name)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return dtype, scaler


# -- building -------------------------------------------------------------------------------------
def resolve_method(name: str) -> tuple[MethodSpec, Callable[[], Any] | None]:
    """``(spec, miner factory or None)`` for a registered method or ``"baseline:<name>"``."""
    from .baselines import get_baseline, is_baseline

    if is_baseline(name):
        baseline = get_baseline(name)
        return baseline.spec, baseline.miner
    from .registry import get_method

    return get_method(name), None


def derives_embedding_size(cls: type) -> bool:
    from .losses import AnchorLoss

    return (
        isinstance(cls, type)
        and issubclass(cls, AnchorLoss)
        and cls.derive_embedding_size is not AnchorLoss.derive_embedding_size
    )


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """One optimizer of kind ``name`` (``adam``, ``adamw``, ``sgd`` with momentum 0.9)."""
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def make_optimizers(
    trunk: torch.nn.Module, embedder: torch.nn.Module, loss: torch.nn.Module, config: TrainConfig, lr_multipliers=None
) -> dict[str, torch.optim.Optimizer]:
    """Optimizers under PML's keys; ``metric_loss_optimizer`` only if the loss has trainable parameters."""
    optimizers = {
        "trunk_optimizer": make_optimizer(config.optimizer, trunk.parameters(), config.lr, config.weight_decay),
        "embedder_optimizer": make_optimizer(config.optimizer, embedder.parameters(), config.lr, config.weight_decay),
    }
    groups = param_groups(loss, config.lr, lr_multipliers)
    if groups:
        optimizers["metric_loss_optimizer"] = make_optimizer(config.optimizer, groups, config.lr, config.weight_decay)
    return optimizers


@dataclass
class Session:
    """Everything :func:`build` made; :func:`train` runs it."""

    config: TrainConfig
    spec: MethodSpec
    splits: Any
    device: torch.device
    trunk: torch.nn.Module
    embedder: torch.nn.Module
    loss: torch.nn.Module
    embedding_size: int
    backbone: str
    num_classes: int
    miner: Any = None
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    hooks: Any = None
    trainer: AMPMetricLossOnly | None = None
    scaler: Any = None
    start_epoch: int = 1
    epoch: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    iteration_losses: list[float] = field(default_factory=list)


class _Bookkeeper:
    """Last PML hooks in the chain: losses, timing, per-epoch evaluation, checkpoints, re-seeding."""

    def __init__(self, session: Session):
        self.session = session
        self.started = time.perf_counter()
        self.epoch_losses: list[float] = []

    def restart_clock(self) -> None:
        self.started = time.perf_counter()

    def end_of_iteration_hook(self, trainer: Any) -> None:
        total = trainer.losses["total_loss"]
        value = float(total.detach()) if torch.is_tensor(total) else float(total)
        self.session.iteration_losses.append(value)
        self.epoch_losses.append(value)

    def end_of_epoch_hook(self, trainer: Any) -> bool:
        s = self.session
        s.train_seconds += time.perf_counter() - self.started
        s.epoch = trainer.epoch
        loss = float(np.mean(self.epoch_losses)) if self.epoch_losses else None
        self.epoch_losses = []
        # under --nproc every process computes the loss on the global batch (DistributedLoss), so every
        # process's plateau scheduler sees the same loss and lowers the lr at the same epoch
        step_plateau(trainer, loss)
        entry = {
            "epoch": trainer.epoch,
            "seconds": s.train_seconds,
            "loss": loss,
            "lr": s.optimizers["trunk_optimizer"].param_groups[0]["lr"],  # make_optimizers always makes it
        }
        if s.config.eval_every_epoch:
            entry.update(evaluate_session(s))
        s.history.append(entry)
        if s.config.output and s.config.checkpoint_every_epoch:
            save_checkpoint(s, Path(s.config.output) / "checkpoint.pt")
        seed_everything(epoch_seed(s.config.seed, trainer.epoch + 1))
        self.restart_clock()
        return True


def build_models(
    config: TrainConfig,
    spec: MethodSpec,
    num_classes: int,
    input_shape: tuple[int, ...],
    device: torch.device,
    loss: Any = None,
) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, int, str]:
    """The seeded ``(trunk, embedder, loss, embedding width, backbone name)`` of ``config`` on ``device``: the part
    of :func:`build` that needs no data, only the inputs' ``(C, H, W)`` (also used to load a checkpoint for
    inference, :mod:`pml_anchors.inference`). ``loss`` as in :func:`build`."""
    from .models import build_backbone, default_backbone

    seed_everything(config.seed)
    width = config.embedding_size
    if loss is None:
        if width is None and not derives_embedding_size(spec.resolve_loss()):
            width = DEFAULT_EMBEDDING_SIZE
        loss_kwargs = dict(config.loss_kwargs)
        from .registry import _accepts

        if "seed" not in loss_kwargs and _accepts(spec.resolve_loss(), "seed"):
            loss_kwargs["seed"] = config.seed
        loss = build_loss(spec, num_classes, width, **loss_kwargs)
    elif not isinstance(loss, torch.nn.Module):
        width = width or DEFAULT_EMBEDDING_SIZE
        loss = loss(num_classes, width)
    width = _loss_width(loss, width)
    backbone = config.backbone or default_backbone(input_shape)
    trunk, embedder = build_backbone(
        backbone,
        in_channels=int(input_shape[0]),
        input_size=int(input_shape[-2]),
        embedding_size=width,
        **config.backbone_kwargs,
    )
    return trunk.to(device), embedder.to(device), loss.to(device), width, backbone


def build(
    config: TrainConfig,
    *,
    splits: Any = None,
    loss: Any = None,
    spec: MethodSpec | None = None,
    miner: Any = None,
    end_of_iteration_hook: Callable | None = None,
    end_of_epoch_hook: Callable | None = None,
    resume: str | os.PathLike | Mapping | None = None,
    num_classes: int | None = None,
    with_trainer: bool = True,
) -> Session:
    """Build data, models, loss, optimizers, hooks and the PML trainer for ``config``.

    :param loss: instead of the registry: a PML loss instance or a factory
        ``f(num_classes, embedding_size)`` (its lr multipliers and evaluation space come from
        ``spec`` if given).
    :param miner: a PML miner for ``mining_funcs["tuple_miner"]`` (baselines only; methods are
        miner-free).
    :param end_of_iteration_hook, end_of_epoch_hook: the caller's PML hooks, chained after the
        method's.
    :param resume: checkpoint path (or loaded dict) to continue from, at its epoch + 1.
    :param num_classes: override ``splits.num_classes`` (to rebuild a checkpoint's loss).
    :param with_trainer: ``False`` builds models and loss only (for evaluation).
    """
    from .data import load_dataset
    from .models import compile_models

    checkpoint = load_checkpoint(resume) if isinstance(resume, (str, os.PathLike)) else resume
    if checkpoint is not None and with_trainer:
        _check_resume(config, checkpoint)
    if loss is None:
        spec, registry_miner = resolve_method(config.method)  # fail fast on an unknown method
        miner = miner if miner is not None else (registry_miner() if registry_miner else None)
    elif spec is None:
        spec = MethodSpec(name=config.method, loss=type(loss) if isinstance(loss, torch.nn.Module) else loss)
    device = resolve_device(config.device)
    if config.deterministic:
        use_deterministic_algorithms()
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    if splits is None:
        splits = load_dataset(
            config.dataset,
            data_root=config.data_root,
            protocol=config.protocol,
            seed=config.seed,
            limit=config.limit,
            test_limit=config.test_limit,
            **config.dataset_kwargs,
        )
    if len(splits.train) < 2:
        raise ValueError(f"the training set has {len(splits.train)} items; need at least 2")
    n_classes = int(num_classes if num_classes is not None else splits.num_classes)

    trunk, embedder, loss, width, backbone = build_models(config, spec, n_classes, splits.input_shape, device, loss)
    session = Session(config, spec, splits, device, trunk, embedder, loss, width, backbone, n_classes, miner=miner)
    if not with_trainer:
        if checkpoint is not None:
            _load_states(session, checkpoint, optimizers=False)
        return session

    if config.compile:
        compile_models(trunk, embedder, **config.compile_kwargs)
    session.optimizers = make_optimizers(trunk, embedder, loss, config, spec.lr_multipliers)
    session.hooks = build_trainer_hooks(spec, **config.hook_kwargs)
    amp_dtype, session.scaler = _amp_setup(config, device)
    bookkeeper = _Bookkeeper(session)
    session.trainer = AMPMetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers=session.optimizers,
        batch_size=min(config.batch_size, len(splits.train)),
        loss_funcs={"metric_loss": loss},
        mining_funcs={"tuple_miner": miner} if miner is not None else None,
        dataset=splits.train,
        data_device=device,
        dataloader_num_workers=config.dataloader_num_workers,
        end_of_iteration_hook=chain_hooks(
            session.hooks.end_of_iteration_hook, end_of_iteration_hook, bookkeeper.end_of_iteration_hook
        ),
        end_of_epoch_hook=chain_hooks(session.hooks.end_of_epoch_hook, end_of_epoch_hook, bookkeeper.end_of_epoch_hook),
        amp_dtype=amp_dtype,
        scaler=session.scaler,
    )
    session.trainer.bookkeeper = bookkeeper
    session.trainer.lr_schedulers.update(
        make_lr_schedulers(
            session.optimizers,
            session.trainer,
            schedule=config.lr_schedule,
            epochs=config.epochs,
            milestones=config.lr_milestones,
            gamma=config.lr_gamma,
            patience=config.lr_patience,
        )
    )
    # for recipes that differ between pretrained and from-scratch trunks (e.g. frozen BatchNorm)
    session.trainer.pretrained_trunk = config.backbone_kwargs.get("weights_path") is not None
    if checkpoint is not None:
        _load_states(session, checkpoint, optimizers=True)
    attach_hooks(session.hooks, session.trainer, session.start_epoch)
    return session


def attach_hooks(hooks: Any, trainer: Any, start_epoch: int = 1) -> None:
    """``hooks.attach(trainer)`` (when the hooks have one) before ``trainer.train()``, telling hooks where a
    resumed run starts.

    ``start_epoch`` is passed to ``attach`` when it accepts it, and is also set as
    ``trainer.start_epoch`` (with ``trainer.epoch = start_epoch - 1``; PML sets ``epoch`` only inside
    ``train()``).
    """
    import inspect

    trainer.start_epoch = start_epoch
    trainer.epoch = start_epoch - 1
    if not callable(getattr(hooks, "attach", None)):  # optional: PML's protocol is only the two hook methods
        return
    try:
        accepts = "start_epoch" in inspect.signature(hooks.attach).parameters
    except (TypeError, ValueError):
        accepts = False
    if accepts:
        hooks.attach(trainer, start_epoch=start_epoch)
    else:
        hooks.attach(trainer)


def _loss_width(loss: Any, width: int | None) -> int:
    """The embedding width a loss expects: its own for an AnchorLoss, else ``width``, else its
    proxies' width, else :data:`DEFAULT_EMBEDDING_SIZE`."""
    from .evaluation import anchor_rows
    from .losses import AnchorLoss

    if isinstance(loss, AnchorLoss):
        return int(loss.embedding_size)
    if width is not None:
        return int(width)
    rows = anchor_rows(loss)
    return int(rows.shape[1]) if rows is not None else DEFAULT_EMBEDDING_SIZE


@contextlib.contextmanager
def pml_progress_warning_hidden() -> Iterator[None]:
    """Hide the ``UserWarning`` PML's trainers raise every iteration by formatting the loss tensor for their
    progress bar ("Converting a tensor with requires_grad=True to a scalar"); nothing else is filtered."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
        yield


def train(session: Session) -> Session:
    """Train from ``session.start_epoch`` to ``config.epochs`` (nothing if already there)."""
    config, trainer = session.config, session.trainer
    if trainer is None:
        raise ValueError("this session was built without a trainer (with_trainer=False)")
    if session.start_epoch > config.epochs:
        return session
    seed_everything(epoch_seed(config.seed, session.start_epoch))
    trainer.bookkeeper.restart_clock()
    with pml_progress_warning_hidden():
        trainer.train(start_epoch=session.start_epoch, num_epochs=config.epochs)
    session.start_epoch = session.epoch + 1
    return session


def evaluate_session(session: Session, **options: Any) -> dict[str, Any]:
    """:func:`pml_anchors.evaluation.evaluate` on the session's test split; ``options`` go to it
    (e.g. ``normalize_embeddings=True``, ``geometry=False``)."""
    config = session.config
    options = {
        "epoch": session.epoch,
        "batch_size": config.eval_batch_size,
        "num_workers": config.dataloader_num_workers,
        "recall_at": config.recall_at,
        **options,
    }
    return evaluate(
        session.trunk, session.embedder, session.loss, session.splits, session.spec, session.device, **options
    )


# -- resuming from a checkpoint (its format: pml_anchors.checkpoints) --------------------------------
def _field_default(name: str) -> Any:
    """A :class:`TrainConfig` field's default: the value of a field a checkpoint from an older version lacks."""
    f = TrainConfig.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _check_resume(config: TrainConfig, checkpoint: Mapping[str, Any]) -> None:
    saved = {k: checkpoint["config"].get(k, _field_default(k)) for k in RESUME_KEYS}
    diff = [
        f"{k}={saved[k]!r} (checkpoint) vs {getattr(config, k)!r}"
        for k in RESUME_KEYS
        if saved[k] != plain(getattr(config, k))
    ]
    if diff:
        raise ValueError("cannot resume: the config differs from the checkpoint's: " + "; ".join(diff))


def _load_states(session: Session, checkpoint: Mapping[str, Any], optimizers: bool) -> None:
    for name in ("trunk", "embedder", "loss"):
        getattr(session, name).load_state_dict(checkpoint[name])
    if optimizers:
        missing = set(session.optimizers) ^ set(checkpoint["optimizers"])
        if missing:
            raise ValueError(
                f"checkpoint optimizers {sorted(checkpoint['optimizers'])} do not match {sorted(session.optimizers)}"
            )
        for key, opt in session.optimizers.items():
            opt.load_state_dict(checkpoint["optimizers"][key])
        schedulers = session.trainer.lr_schedulers if session.trainer is not None else {}
        for key, state in (checkpoint.get("lr_schedulers") or {}).items():
            if key in schedulers:
                load_scheduler_state(schedulers[key], state)
        if session.scaler is not None and checkpoint.get("scaler"):
            session.scaler.load_state_dict(checkpoint["scaler"])
    session.epoch = int(checkpoint["epoch"])
    session.start_epoch = session.epoch + 1
    session.train_seconds = float(checkpoint.get("train_seconds", 0.0))
    session.history = list(checkpoint.get("history", []))


def config_for_checkpoint(checkpoint: Mapping[str, Any], **overrides: Any) -> TrainConfig:
    """The config that rebuilds a checkpoint's models and loss to load its weights into (no training).

    ``overrides`` replace config fields (``None`` values are ignored). The models keep the checkpoint's
    ``backbone``/``embedding_size``; nothing is written (``output=None``) or compiled, and no backbone weights file
    is read (``weights_path`` dropped: the checkpoint has the trained weights).
    """
    values = dict(checkpoint["config"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    backbone_kwargs = {k: v for k, v in values.get("backbone_kwargs", {}).items() if k != "weights_path"}
    values.update(
        embedding_size=checkpoint["embedding_size"],
        backbone=checkpoint["backbone"],
        backbone_kwargs=backbone_kwargs,
        output=None,
        compile=False,
    )
    return TrainConfig.from_dict(values)


def session_from_checkpoint(path: str | os.PathLike, **overrides: Any) -> Session:
    """The models and loss of a checkpoint, rebuilt from its config for evaluation (no trainer).

    ``overrides`` replace config fields (``device``, ``dataset``, ``data_root``, ``protocol``,
    ``test_limit``, ...); ``None`` values are ignored. The loss keeps the checkpoint's
    ``num_classes`` and the models its ``backbone``/``embedding_size`` (:func:`config_for_checkpoint`).
    """
    checkpoint = load_checkpoint(path)
    config = config_for_checkpoint(checkpoint, **overrides)
    return build(config, resume=checkpoint, num_classes=checkpoint["num_classes"], with_trainer=False)


def evaluate_checkpoint(path: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """Rebuild a run from its checkpoint's config and evaluate it.

    ``overrides`` replace config fields (``device``, ``dataset``, ``data_root``, ``protocol``,
    ``test_limit``, ...); ``None`` values are ignored. The loss keeps the checkpoint's
    ``num_classes`` and the models its ``backbone``/``embedding_size``.
    """
    session = session_from_checkpoint(path, **overrides)
    metrics = evaluate_session(session)
    return {
        "checkpoint": str(path),
        "method": session.spec.name,
        "dataset": session.config.dataset,
        "protocol": session.config.protocol,
        "epoch": session.epoch,
        "device": str(session.device),
        **metrics,
    }


# -- the whole run --------------------------------------------------------------------------------
def run(
    config: TrainConfig,
    *,
    resume: str | os.PathLike | None = None,
    splits: Any = None,
    loss: Any = None,
    spec: MethodSpec | None = None,
    miner: Any = None,
    end_of_iteration_hook: Callable | None = None,
    end_of_epoch_hook: Callable | None = None,
) -> dict[str, Any]:
    """Train, evaluate and (with ``config.output``) write ``results.json`` + ``checkpoint.pt``.

    Returns the results dict (see :func:`results_dict`). Keyword arguments as in :func:`build`.
    """
    started = time.perf_counter()
    session = build(
        config,
        splits=splits,
        loss=loss,
        spec=spec,
        miner=miner,
        end_of_iteration_hook=end_of_iteration_hook,
        end_of_epoch_hook=end_of_epoch_hook,
        resume=resume,
    )
    train(session)
    last = session.history[-1] if session.history else {}
    metrics = last if last.get("epoch") == session.epoch and "precision_at_1" in last else evaluate_session(session)
    results = results_dict(session, metrics, wall_seconds=time.perf_counter() - started)
    if config.output:
        out = Path(config.output)
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(session, out / "checkpoint.pt")
        write_json(results, out / "results.json")
    return results
