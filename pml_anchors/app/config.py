"""The configuration of a run: :class:`TrainConfig`, checked when it is made and JSON-friendly, so that a
checkpoint can rebuild its run."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..evaluation.knn import check_knn
from ..evaluation.recall_at_k import DEFAULT_RECALL_AT, check_recall_at
from ..validators import check_bool, check_int, check_real, optional_int
from .data.validation import check_validation
from .lr_schedules import check_schedule
from .models import check_compile_kwargs
from .selection import check_select_epoch

__all__ = ["DEFAULT_EMBEDDING_SIZE", "OPTIMIZERS", "TrainConfig", "field_default"]

#: embedding width used when neither the config nor the loss sets one
DEFAULT_EMBEDDING_SIZE = 64
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class TrainConfig:
    """Everything a run needs; JSON-friendly so that checkpoints can rebuild the run.

    :param method: a registered method (name, alias or ``dist:name``) or ``"baseline:<name>"``.
    :param embedding_size: ``None`` lets the loss derive it (e.g. polytopes) or uses
        :data:`DEFAULT_EMBEDDING_SIZE`.
    :param backbone: a :data:`pml_anchors.app.models.BACKBONES` key; ``None`` picks one for the input.
    :param optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9), for every model and the
        loss; the loss's parameter groups get ``lr`` times the method's ``lr_multipliers``.
    :param lr_schedule: ``"constant"`` (default); ``"cosine"``: every optimizer's lr follows
        ``lr * (1 + cos(pi * t / T)) / 2`` over the run's ``T = epochs * iterations_per_epoch`` steps;
        ``"step"``: times ``lr_gamma`` (default 0.1) after each epoch in ``lr_milestones``;
        ``"plateau"``: times ``lr_gamma`` when the epoch's mean training loss has not improved for
        ``lr_patience`` (default 10) epochs. See :mod:`pml_anchors.app.lr_schedules`.
    :param amp: mixed precision (fp16 + GradScaler on CUDA, bf16 on CPU; see ``amp_dtype``).
    :param limit: train on this many items (class-balanced); ``test_limit`` likewise.
    :param train_per_class: few-shot training: keep this many training items of every class (1, 2, 4, ...), drawn
        with ``seed`` (the same seed keeps the same items, and the 1-shot items are among the 2-shot ones); a class
        with fewer items is an error naming it. It chooses the training items as ``limit`` does, so the two are not
        given together; ``test_limit`` still applies to the test set.
    :param validation: ``{"fold": f, "folds": k, "seed": s}`` trains on the other ``k - 1`` folds of the
        training split and evaluates on its fold ``f`` instead of the test split, which is then not used
        (:func:`pml_anchors.app.data.validation.validation_split`: class-disjoint folds under ``open_set``,
        stratified ones under ``same_class``); ``None`` (default): train on the training split, test on the test split.
    :param select_epoch: best-epoch selection (and early stopping) on a validation fold, the test split sealed until
        the end (:mod:`pml_anchors.app.selection`): ``{"fold": 0, "folds": 4, "seed": <seed>, "metric":
        "mean_average_precision_at_r", "patience": None}`` (every key optional; ``patience`` N stops after N epochs
        without a better validation metric). The run trains on the other folds of the training split, keeps the
        best epoch's weights and evaluates the test split once with them. Not with ``validation``.
    :param loss_lr_multiplier: the lr multiplier of every trainable parameter of the loss, instead of the method's
        ``lr_multipliers`` (``pml-anchors tune`` searches it); ``None`` (default): the method's.
    :param output: folder for ``results.json`` and ``checkpoint.pt`` (written every epoch when
        ``checkpoint_every_epoch``).
    :param class_parallel: with several processes, shard the loss's anchors over them
        (:class:`pml_anchors.losses.class_parallel.ClassParallelLoss`: each holds C / N classes, exact; see
        ``docs/class_parallel.md``) instead of holding all of them in every process; the method must implement
        ``class_parallel_losses`` (e_ncm, c_ncm, reponet, fsc, proxy_anchor).
    :param eval_every_epoch: evaluate after every epoch (``history``; used by ``bench``).
    :param num_threads: ``torch.set_num_threads`` for the run (``None``: leave it). The command line passes
        :func:`pml_anchors.app.threads.default_threads` unless ``--threads`` is given (the CPUs this process may use:
        ``OMP_NUM_THREADS``, the affinity mask and cgroup quota, less the CPUs other processes keep busy); the count
        and its reason are recorded in ``results.json`` (``threads``, ``threads_from``). Tiny CPU models are often
        fastest with 1, especially on a busy machine.
    :param compile: compile the trunk's and the embedder's forward with ``torch.compile``
        (:func:`pml_anchors.app.models.compile_models`; the loss is left eager, see ``docs/compile.md``);
        ``compile_kwargs`` are ``torch.compile``'s ``backend``, ``mode``, ``dynamic``, ``fullgraph``, ``options``.
    :param deterministic: also make GPU runs repeatable: :func:`use_deterministic_algorithms` (PyTorch's
        deterministic mode, process-wide; an op without a deterministic kernel then raises, naming itself). CPU runs
        are bit-reproducible from the seed without it.
    :param dataloader_num_workers: DataLoader worker processes for training and evaluation (PML's
        trainer and tester); 0 loads in the main process. Without random transforms the results do
        not depend on it.
    :param tensorboard: a folder for PML's logging presets (record-keeper + TensorBoard,
        :mod:`pml_anchors.app.tensorboard`): the losses, the loss's recordable attributes (hyper-parameters, anchor
        geometry) and the learning rates every 50 iterations, and each epoch's metrics; ``None``: no logging.
    :param timeout_s: ``--nproc`` only: seconds a collective (or the process group's rendezvous) may wait for the
        other processes before it fails; a dead or stalled process then ends the whole job (default 300).
    :param recall_at: the Ks of the ``recall_at_<K>`` metrics evaluated beside PML's (default 1, 2, 4, 8, the
        Proxy Anchor paper's CUB/Cars columns; SOP's are 1, 10, 100, 1000); see :mod:`pml_anchors.evaluation.recall_at_k`.
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
    knn: str = "auto"
    tensorboard: str | None = None
    timeout_s: float = 300.0
    train_per_class: int | None = None
    validation: dict[str, int] | None = None
    select_epoch: dict[str, Any] | None = None
    loss_lr_multiplier: float | None = None
    class_parallel: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"method must be a non-empty string, got {self.method!r}")
        if not isinstance(self.optimizer, str) or self.optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        for name, low in (("epochs", 0), ("batch_size", 2), ("eval_batch_size", 1), ("dataloader_num_workers", 0)):
            setattr(self, name, check_int(getattr(self, name), name, minimum=low))
        self.lr = check_real(self.lr, "lr", minimum=0.0, open_min=True)
        self.weight_decay = check_real(self.weight_decay, "weight_decay", minimum=0.0)
        self.embedding_size = optional_int(self.embedding_size, "embedding_size", minimum=1)
        self.seed = check_int(self.seed, "seed")
        self.num_threads = optional_int(self.num_threads, "num_threads", minimum=1)
        self.train_per_class = optional_int(self.train_per_class, "train_per_class", minimum=1)
        if self.train_per_class is not None and self.limit is not None:
            raise ValueError(
                f"train_per_class={self.train_per_class} and limit={self.limit} both choose the training items: give "
                "one (train_per_class N keeps N items of every class; limit L keeps L items, class-balanced)"
            )
        self.validation = check_validation(self.validation)
        self.select_epoch = check_select_epoch(self.select_epoch, self.seed)
        if self.select_epoch is not None and self.validation is not None:
            raise ValueError(
                "select_epoch and validation both carve a validation fold: give one (validation evaluates the fold "
                "instead of the test split; select_epoch selects the epoch on it and tests once at the end)"
            )
        if self.loss_lr_multiplier is not None:
            self.loss_lr_multiplier = check_real(
                self.loss_lr_multiplier, "loss_lr_multiplier", minimum=0.0, open_min=True
            )
        self.class_parallel = check_bool(self.class_parallel, "class_parallel")
        if self.class_parallel:  # the method must support it; the launcher checks the world size (> 1)
            from ..losses.class_parallel import check_class_parallel

            check_class_parallel(self.method)
        self.timeout_s = check_real(self.timeout_s, "timeout_s", minimum=0.0, open_min=True)
        self.lr_milestones = check_schedule(
            self.lr_schedule, self.epochs, self.lr_milestones, self.lr_gamma, self.lr_patience
        )
        for name in ("compile", "deterministic", "amp", "eval_every_epoch", "checkpoint_every_epoch"):
            check_bool(getattr(self, name), name)
        self.compile_kwargs = check_compile_kwargs(self.compile_kwargs)
        self.recall_at = list(check_recall_at(self.recall_at))
        self.knn = check_knn(self.knn)
        if self.amp_dtype not in (None, "float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be None, 'float16' or 'bfloat16', got {self.amp_dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def field_default(name: str) -> Any:
    """A :class:`TrainConfig` field's default: the value of a field a checkpoint from an older version lacks."""
    f = TrainConfig.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
