"""Train every method the same way: PML's ``MetricLossOnly`` trainer, no miner.

>>> from pml_anchors.app.session import TrainConfig, run
>>> results = run(TrainConfig(method="proxy_anchor", dataset="digits", epochs=2))  # doctest: +SKIP

:func:`build` assembles a :class:`Session` from a :class:`TrainConfig`: the dataset
(:func:`pml_anchors.app.data.load_dataset`), ``trunk``/``embedder``
(:func:`pml_anchors.app.models.build_backbone`), the loss under PML's ``metric_loss`` key
(:func:`pml_anchors.plugin.api.build_loss`), optimizers under PML's keys (``trunk_optimizer``,
``embedder_optimizer`` and, only when the loss has trainable parameters,
``metric_loss_optimizer`` built by :func:`pml_anchors.losses.lr_multipliers.param_groups` with the method's lr
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
  one scheduler per optimizer under PML's ``lr_schedulers`` keys (:mod:`pml_anchors.app.lr_schedules`).
* **Checkpoints** (:mod:`pml_anchors.app.checkpoints`): a dict of plain ``state_dict``\\ s (trunk, embedder, loss,
  optimizers, lr schedulers, grad scaler) with the config and epoch; loadable with
  ``torch.load(weights_only=True)``. ``results.json``: :mod:`pml_anchors.app.results`.
* **Baselines**: ``method="baseline:<name>"`` (:mod:`pml_anchors.app.baselines`), or pass any PML loss
  (instance or factory ``f(num_classes, embedding_size)``) as ``loss=`` to :func:`run`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..devices import resolve_device
from ..errors import UnknownMethodError
from ..evaluation.diagnostics import anchor_rows
from ..evaluation.tester import evaluate
from ..losses import AnchorLoss
from ..plugin.api import build_loss, build_trainer_hooks, get_method, registered_names_only
from ..plugin.lazy import accepts_keyword
from ..plugin.spec import MethodSpec
from ..plugin.trainer_hooks import attach_hooks, chain_hooks, pml_progress_warning_hidden
from .baselines import get_baseline, is_baseline
from .checkpoints import checkpoint_bytes, load_checkpoint, save_checkpoint
from .config import DEFAULT_EMBEDDING_SIZE, TrainConfig
from .data import load_dataset
from .data.validation import validation_split
from .lr_schedules import make_lr_schedulers, step_plateau
from .models import build_backbone, compile_models, default_backbone
from .optimizers import make_optimizers
from .output_folder import check_room, claimed
from .progress import RunProgress
from .results import lr_multipliers, results_dict, write_json
from .resume import check_resume, checkpoint_source, load_states
from .seeding import epoch_seed, seed_everything, use_deterministic_algorithms
from .selection import EpochSelection, selection_splits
from .tensorboard import TensorBoardLog
from .trainer import AMPMetricLossOnly, amp_setup

__all__ = [
    "Session",
    "build",
    "build_models",
    "evaluate_session",
    "load_config_dataset",
    "resolve_method",
    "run",
    "final_metrics",
    "train",
]


def checkpoint_method(config: TrainConfig, checkpoint: Mapping[str, Any]) -> str:
    """The method to rebuild a checkpoint with: its qualified ``dist:name`` (still unambiguous when another plugin
    registers the same short name since), unless it is a baseline, the config asks for another method, or the
    qualified name is not installed (then the short name, whose error says what is missing)."""
    qualified = checkpoint.get("method")
    if not isinstance(qualified, str) or is_baseline(config.method) or config.method != checkpoint["config"]["method"]:
        return config.method
    try:
        get_method(qualified)
    except UnknownMethodError:
        return config.method
    return qualified


def resolve_method(name: str) -> tuple[MethodSpec, Callable[[], Any] | None]:
    """``(spec, miner factory or None)`` for a registered method or ``"baseline:<name>"``."""
    if is_baseline(name):
        baseline = get_baseline(name)
        return baseline.spec, baseline.miner
    return get_method(name), None


def derives_embedding_size(cls: type) -> bool:
    return (
        isinstance(cls, type)
        and issubclass(cls, AnchorLoss)
        and cls.derive_embedding_size is not AnchorLoss.derive_embedding_size
    )


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
    #: PML's logging presets when ``config.tensorboard`` names a folder
    tensorboard: TensorBoardLog | None = None
    #: what the run shows while it trains (:mod:`pml_anchors.app.progress`); ``None``: nothing of its own
    progress: RunProgress | None = None
    #: the CPU threads torch used, and why that many (:mod:`pml_anchors.app.threads`)
    threads: int = 0
    threads_from: str = ""
    #: best-epoch selection on a validation fold (``config.select_epoch``; :mod:`pml_anchors.app.selection`)
    selection: EpochSelection | None = None


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
        if self.session.progress is not None:
            self.session.progress.iteration(trainer, value)

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
        keep_going = True
        if s.config.eval_every_epoch or s.selection is not None:
            if s.progress is not None:
                s.progress.evaluating()
            entry.update(evaluate_session(s))
        if s.selection is not None:  # the metrics above are the validation fold's: the test split is sealed
            entry["evaluated_on"] = "validation"
            keep_going = s.selection.observe(s, trainer.epoch, entry)
        s.history.append(entry)
        if s.progress is not None:
            s.progress.epoch(entry)
        if s.tensorboard is not None:
            s.tensorboard.record_epoch(trainer, entry)
        if s.config.output and s.config.checkpoint_every_epoch:
            save_checkpoint(s, Path(s.config.output) / "checkpoint.pt")
        seed_everything(epoch_seed(s.config.seed, trainer.epoch + 1))
        self.restart_clock()
        return keep_going


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
    inference, :mod:`pml_anchors.app.inference`). ``loss`` as in :func:`build`."""
    seed_everything(config.seed)
    width = config.embedding_size
    if loss is None:
        if width is None and not derives_embedding_size(spec.resolve_loss()):
            width = DEFAULT_EMBEDDING_SIZE
        loss_kwargs = dict(config.loss_kwargs)
        if "seed" not in loss_kwargs and accepts_keyword(spec.resolve_loss(), "seed"):
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


def load_config_dataset(config: TrainConfig) -> Any:
    """The :class:`~pml_anchors.app.data.DatasetSplits` a config names (dataset, root, protocol, seed, limits,
    ``train_per_class`` and the dataset's own options), or with ``config.validation`` its validation fold
    (:func:`~pml_anchors.app.data.validation.validation_split`)."""
    splits = load_dataset(
        config.dataset,
        data_root=config.data_root,
        protocol=config.protocol,
        seed=config.seed,
        limit=config.limit,
        test_limit=config.test_limit,
        train_per_class=config.train_per_class,
        **config.dataset_kwargs,
    )
    return splits if config.validation is None else validation_split(splits, **config.validation)


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
    progress: RunProgress | None = None,
    threads_from: str | None = None,
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
    :param progress: what to show while training (:class:`~pml_anchors.app.progress.RunProgress`; default: nothing
        of its own, PML's bars as PML draws them).
    :param threads_from: why ``config.num_threads`` is what it is (e.g. ``"cgroup quota (2 CPUs)"``, from
        :func:`pml_anchors.app.threads.default_threads`), recorded in ``results.json``.
    """
    checkpoint = load_checkpoint(resume) if isinstance(resume, (str, os.PathLike)) else resume
    if checkpoint is not None and with_trainer:
        check_resume(config, checkpoint)
    if loss is None:
        name = config.method if checkpoint is None else checkpoint_method(config, checkpoint)
        spec, registry_miner = resolve_method(name)  # fail fast on an unknown method
        miner = miner if miner is not None else (registry_miner() if registry_miner else None)
    elif spec is None:
        spec = MethodSpec(name=config.method, loss=type(loss) if isinstance(loss, torch.nn.Module) else loss)
    device = resolve_device(config.device)
    if config.deterministic:
        use_deterministic_algorithms()
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    threads_from = threads_from or ("num_threads" if config.num_threads else "torch's default")
    if splits is None:
        splits = load_config_dataset(config)
    if config.class_parallel and with_trainer and not (dist.is_initialized() and dist.get_world_size() > 1):
        raise ValueError(
            "class_parallel shards the loss's anchors over several processes: run with --nproc N (N > 1) or under "
            "torchrun (docs/class_parallel.md)"
        )
    selection = None
    if config.select_epoch is not None and with_trainer:  # --nproc / torchrun: rank 0 alone evaluates and selects
        splits, held_out = selection_splits(splits, config.select_epoch)
        selection = EpochSelection.from_choice(config.select_epoch, held_out)
    if len(splits.train) < 2:
        raise ValueError(f"the training set has {len(splits.train)} items; need at least 2")
    n_classes = int(num_classes if num_classes is not None else splits.num_classes)

    with contextlib.nullcontext() if checkpoint is None else registered_names_only(checkpoint_source(checkpoint)):
        trunk, embedder, loss, width, backbone = build_models(config, spec, n_classes, splits.input_shape, device, loss)
    session = Session(config, spec, splits, device, trunk, embedder, loss, width, backbone, n_classes, miner=miner)
    session.selection = selection
    session.threads, session.threads_from, session.progress = torch.get_num_threads(), threads_from, progress
    if not with_trainer:
        if checkpoint is not None:
            load_states(session, checkpoint, optimizers=False)
        return session

    if config.compile:
        # reduce-overhead (CUDA graphs) compiles the loss too, so that it replays as a graph of its own (every
        # built-in loss compiles whole, without host syncs: docs/compile.md); otherwise it stays eager, where its
        # hand-fused kernels are faster on the CPU
        whole = config.compile_kwargs.get("mode") == "reduce-overhead"
        compile_models(trunk, embedder, *((loss,) if whole else ()), **config.compile_kwargs)
    session.optimizers = make_optimizers(trunk, embedder, loss, config, lr_multipliers(session))
    session.hooks = build_trainer_hooks(spec, **config.hook_kwargs)
    amp_dtype, session.scaler = amp_setup(config.amp, config.amp_dtype, device)
    bookkeeper = _Bookkeeper(session)
    if config.tensorboard:
        session.tensorboard = TensorBoardLog(config.tensorboard)
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
            session.hooks.end_of_iteration_hook,
            end_of_iteration_hook,
            bookkeeper.end_of_iteration_hook,
            None if session.tensorboard is None else session.tensorboard.end_of_iteration_hook,
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
        load_states(session, checkpoint, optimizers=True)
    attach_hooks(session.hooks, session.trainer, session.start_epoch)
    return session


def _loss_width(loss: Any, width: int | None) -> int:
    """The embedding width a loss expects: its own for an AnchorLoss, else ``width``, else its
    proxies' width, else :data:`DEFAULT_EMBEDDING_SIZE`."""
    if isinstance(loss, AnchorLoss):
        return int(loss.embedding_size)
    if width is not None:
        return int(width)
    rows = anchor_rows(loss)
    return int(rows.shape[1]) if rows is not None else DEFAULT_EMBEDDING_SIZE


def train(session: Session) -> Session:
    """Train from ``session.start_epoch`` to ``config.epochs`` (nothing if already there)."""
    config, trainer = session.config, session.trainer
    if trainer is None:
        raise ValueError("this session was built without a trainer (with_trainer=False)")
    if session.start_epoch > config.epochs or (session.selection is not None and session.selection.stopped):
        return session
    seed_everything(epoch_seed(config.seed, session.start_epoch))
    trainer.bookkeeper.restart_clock()
    try:
        with pml_progress_warning_hidden():
            trainer.train(start_epoch=session.start_epoch, num_epochs=config.epochs)
    finally:
        if session.progress is not None:
            session.progress.close()
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
        "knn": config.knn,
        **options,
    }
    return evaluate(
        session.trunk, session.embedder, session.loss, session.splits, session.spec, session.device, **options
    )


def final_metrics(session: Session) -> dict[str, Any]:
    """The metrics of a trained session on its test split: with ``select_epoch`` the selected epoch's weights on the
    unsealed test split (its one read, :mod:`pml_anchors.app.selection`); else the last epoch's, reusing that epoch's
    evaluation when ``eval_every_epoch`` made one."""
    if session.selection is not None:
        session.splits = session.selection.final_splits(session.splits)
        with session.selection.best_weights(session):
            return evaluate_session(session)
    last = session.history[-1] if session.history else {}
    if last.get("epoch") == session.epoch and "precision_at_1" in last:
        return last
    return evaluate_session(session)


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
    overwrite: bool = False,
    progress: RunProgress | None = None,
    threads_from: str | None = None,
) -> dict[str, Any]:
    """Train, evaluate and (with ``config.output``) write ``results.json`` + ``checkpoint.pt``.

    ``config.output`` is claimed for the run (:mod:`pml_anchors.app.output_folder`): locked against a second run,
    checked writable and roomy before training, and refused when it holds a finished run unless ``resume`` or
    ``overwrite``. Returns the results dict (see :func:`results_dict`). Keyword arguments as in :func:`build`.
    """
    options = dict(
        splits=splits,
        loss=loss,
        spec=spec,
        miner=miner,
        end_of_iteration_hook=end_of_iteration_hook,
        end_of_epoch_hook=end_of_epoch_hook,
        progress=progress,
        threads_from=threads_from,
    )
    if not config.output:
        return _run(config, resume, options)
    with claimed(config.output, resume=resume is not None, overwrite=overwrite):
        return _run(config, resume, options)


def _run(config: TrainConfig, resume: str | os.PathLike | None, options: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    session = build(config, resume=resume, **options)
    if config.output:
        check_room(config.output, 2 * checkpoint_bytes(session))
    try:
        train(session)
        last = session.history[-1] if session.history else {}
        metrics = final_metrics(session)
        if metrics is not last and session.tensorboard is not None and session.trainer is not None:
            session.tensorboard.record_test(session.trainer, metrics)  # logged beside the last epoch's loss
    finally:
        if session.tensorboard is not None:
            session.tensorboard.close()
    results = results_dict(session, metrics, wall_seconds=time.perf_counter() - started)
    if config.output:
        out = Path(config.output)
        save_checkpoint(session, out / "checkpoint.pt")
        write_json(results, out / "results.json")
    return results
