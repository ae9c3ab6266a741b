"""Data-parallel training: ``pml-anchors train`` under ``torchrun``, and ``train --nproc N``, which runs torch's own
launcher (the elastic agent of ``torch.distributed.run``) on this machine.

Under ``torchrun`` (single- or multi-node; :mod:`pml_anchors.app.torchrun_env` reads its environment) every
process runs the command line as given and :func:`train_torchrun` makes it one worker of the job;
``--nproc N`` (:func:`launch`) starts ``N`` such workers itself (:func:`pml_anchors.app.supervisor.run_workers`).
Either way every worker joins one process group from the ``env://`` variables (gloo on CPU; NCCL on CUDA, the GPU
of its ``LOCAL_RANK``) and builds the same run with :func:`pml_anchors.app.session.build`: the same seed gives every
process the same data split, initial models and anchors. Then, in every process:

* ``trunk`` and ``embedder`` are wrapped in ``DistributedDataParallel`` inside PML's trainer (the optimizers
  hold the same parameter objects). A module with no trainable parameter is left unwrapped, and the wrappers
  are rebuilt when a hook freezes or unfreezes parameters (e.g. the Proxy Anchor warm-up freezes the trunk for
  the first epoch), so the set DDP synchronises is always the set being trained;
* the loss is wrapped by :func:`distributed_loss` (:class:`~pml_anchors.losses.distributed.DistributedLoss`): each
  process computes it on the global batch, and the model and anchor gradients equal those of one process on the
  concatenated batch;
* :class:`GlobalBatchSampler` draws every epoch's order exactly as one process does (PML's shuffled loader, from
  the epoch's seed) and gives each process its slice of every global batch, so the global batches *are* the
  batches of a run without ``--nproc``/torchrun, in the same order, and resuming draws them again.
  ``--batch-size`` stays the *global* batch: each process takes ``batch_size / N`` samples (a batch size that
  ``N`` does not divide is refused before any process starts);
* rank 0 alone evaluates and writes ``results.json`` and ``checkpoint.pt`` (plain ``state_dict``\\ s of the
  unwrapped modules: ``pml-anchors eval`` and ``--resume`` work with or without distribution). The other ranks
  write nothing and leave ``--output`` alone (under torchrun rank 0 claims it; under ``--nproc`` the launcher).
  With ``select_epoch`` every process trains on the other folds and rank 0 alone evaluates the validation fold,
  keeps the best epoch's weights and decides an early stop (which every process then follows).

A model without BatchNorm (e.g. ``--backbone lenetpp``) then trains to the single-process results, up to float
rounding; BatchNorm statistics are per process (as with plain DDP), which changes the results slightly. Methods
whose baseline uses a miner are refused: ``DistributedLoss`` gathers embeddings, not mined tuples.
``results.json`` gains ``world_size``, ``batch_size_per_process``, ``global_batch_size`` (what each step trained
on: ``batch_size`` unless the training set is smaller), ``restart_count`` and ``replica_max_abs_diff``: the largest
difference between the processes' parameter checksums and learning rates at the end (0.0 when every replica holds
the same weights and lrs).

**Restarts** (``torchrun --max-restarts K``, ``train --nproc N --max-restarts K``): a restarted worker
(``TORCHELASTIC_RESTART_COUNT`` > 0) resumes from ``<output>/checkpoint.pt`` when there is one (written at every
epoch's end), so a restart loses at most the epoch it interrupted; on CPU the resumed run draws the same batches
and ends with the metrics of an uninterrupted one. Only rank 0's node needs the file: the ranks that lack it
receive it from one that has it. Multi-node restarts need ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` on every node
(docs/distributed.md): torch's shared store keeps the keys of the attempt before.

Faults end the job instead of hanging it: every collective waits at most ``config.timeout_s`` seconds
(``--timeout``, default 300) for the other processes; under ``--nproc`` the launcher
(:mod:`pml_anchors.app.supervisor`) ends every worker when one dies, raises or stays stopped, with a
:class:`~pml_anchors.app.supervisor.WorkerError` naming its rank and pid. At the end of every epoch the processes
wait for each other, and stop together if any process's hooks stop training; with ``eval_every_epoch`` that wait
(for rank 0's evaluation) is bounded by :data:`EVALUATION_WAIT`, not ``--timeout``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib
import os
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import RandomSampler, Sampler

from ..devices import resolve_device
from ..losses.class_parallel import ClassParallelLoss, gather_anchors, shard_anchors, wrap_for_training
from ..validators import check_int, positive_int
from .checkpoints import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .output_folder import RUN_FILES, claimed
from .results import results_dict, write_json
from .session import Session, final_metrics, resolve_method, run, train
from .session import build as build_session
from .supervisor import WorkerError, report_failure, run_workers
from .torchrun_env import TorchrunEnv, detect
from .trainer import set_verbosity

__all__ = ["GlobalBatchSampler", "WorkerError", "distributed_loss", "launch", "train_torchrun"]

#: with ``eval_every_epoch``, how long the other processes wait at the end of an epoch for rank 0's evaluation (not
#: bounded by ``--timeout``: it may take long; a rank 0 that dies or stops still ends the job at once, through the
#: launcher's watch)
EVALUATION_WAIT = timedelta(hours=24)


def distributed_loss(loss: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """The loss every process of a data-parallel run computes: ``loss`` on the global batch
    (:class:`~pml_anchors.losses.distributed.DistributedLoss`), or with ``config.class_parallel`` its anchors sharded
    over the processes (:class:`~pml_anchors.losses.class_parallel.ClassParallelLoss`, which changes ``loss`` in
    place: it keeps this process's block of anchors)."""
    return wrap_for_training(loss, config.class_parallel)


class _ShardedLoss:
    """A class-parallel run's loss and its optimiser: every process trains one block of the anchors, and rank 0 sees
    the full set (gathered from every process) for what it evaluates, records and writes.

    :meth:`shard` re-points the loss optimiser from the full anchors to this process's block (its state, e.g. a
    resumed Adam's moments, sliced likewise). :meth:`full` (a collective) gives rank 0, inside the block, a session
    whose ``loss`` (and trainer's ``metric_loss``, whose ``geometry()`` the method hooks record) holds every anchor
    and whose loss optimiser's ``state_dict`` is the full one, so that evaluation (nearest-anchor accuracy), the
    recorded geometry and ``checkpoint.pt`` are those of one process: ``eval``, ``load_trained`` and a resume
    at another world size read it.
    """

    def __init__(self, session: Any, wrapped: ClassParallelLoss, full_anchors: torch.Tensor):
        self.session, self.wrapped = session, wrapped
        self.optimizer = session.optimizers.get("metric_loss_optimizer")
        old, new = full_anchors, wrapped.loss.anchors
        if self.optimizer is not None and isinstance(new, torch.nn.Parameter):
            for group in self.optimizer.param_groups:
                group["params"] = [new if q is old else q for q in group["params"]]
            state = self.optimizer.state.pop(old, None)
            if state is not None:
                self.optimizer.state[new] = {k: self._block(v) for k, v in state.items()}

    def _block(self, value: Any) -> Any:
        w = self.wrapped
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == w.num_rows:
            return shard_anchors(value, w.rank, w.world_size)
        return value

    @contextlib.contextmanager
    def full(self) -> Iterator[None]:
        w, session = self.wrapped, self.session
        state = w.full_state_dict(dst=0)
        optimizer_state = self._full_optimizer_state()
        if w.rank != 0:
            yield
            return
        block_loss = session.loss
        full_loss = copy.copy(block_loss)  # the module's other state shared; its anchors the full set
        full_loss._parameters = dict(block_loss._parameters)
        full_loss._buffers = dict(block_loss._buffers)
        assert state is not None
        if isinstance(block_loss.anchors, torch.nn.Parameter):
            full_loss._parameters["anchors"] = torch.nn.Parameter(state["anchors"], requires_grad=False)
        else:
            full_loss._buffers["anchors"] = state["anchors"]
        full_loss.__dict__.pop("_anchor_cache", None)  # a cache of its own (the block's stays the block's)
        session.loss = full_loss
        loss_funcs = session.trainer.loss_funcs
        training_loss = loss_funcs["metric_loss"]
        loss_funcs["metric_loss"] = full_loss  # the method hooks' geometry: of every anchor, not rank 0's block
        saved = self.optimizer
        if saved is not None:
            session.optimizers["metric_loss_optimizer"] = _StateView(saved, optimizer_state)
        try:
            yield
        finally:
            session.loss = block_loss
            loss_funcs["metric_loss"] = training_loss
            if saved is not None:
                session.optimizers["metric_loss_optimizer"] = saved

    def _full_optimizer_state(self) -> dict[str, Any] | None:
        """The loss optimiser's ``state_dict`` with the anchors' state gathered (rank 0; the others ``None``)."""
        if self.optimizer is None:
            return None
        w, anchors = self.wrapped, self.wrapped.loss.anchors
        state = self.optimizer.state_dict()
        index = next(
            (i for i, q in enumerate(q for g in self.optimizer.param_groups for q in g["params"]) if q is anchors),
            None,
        )
        entry = dict(state["state"].get(index, {})) if index is not None else {}  # a copy: the live state stays
        if index is not None and entry:
            state["state"][index] = entry
        for key in sorted(entry):  # the same keys, in the same order, on every process
            value = entry[key]
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == w.stop - w.start:
                entry[key] = gather_anchors(value, w.group, 0)
        return state if w.rank == 0 else None


class _StateView:
    """An optimiser as a checkpoint sees it: its ``state_dict`` is a given one (the full, gathered state)."""

    def __init__(self, optimizer: torch.optim.Optimizer, state: dict[str, Any] | None):
        self.optimizer, self.state = optimizer, state

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)

    def state_dict(self) -> dict[str, Any]:
        assert self.state is not None
        return self.state


class GlobalBatchSampler(Sampler[int]):
    """This process's part of every global batch, in the order one process would train on them.

    Every epoch, every process draws the order of PML's shuffled training loader (``RandomSampler``: one seed from
    torch's global generator, which each epoch re-seeds from ``(seed, epoch)``) and takes, of the ``k``-th global
    batch of ``global_batch`` items, the ``global_batch / world`` items at ``rank``'s offset. ``DistributedLoss``
    concatenates the shards in rank order, so each step's loss sees the single-process batch, item for item. The
    last, incomplete global batch is dropped (as PML's loader drops it).
    """

    def __init__(self, size: int, global_batch: int, world: int, rank: int):
        self.size = positive_int(size, "size")
        self.world = positive_int(world, "world")
        self.per_process = positive_int(global_batch, "global_batch") // self.world
        if self.per_process < 1:
            raise ValueError(f"global_batch must be at least world = {world}, got {global_batch}")
        self.rank = check_int(rank, "rank", minimum=0)
        if self.rank >= self.world:
            raise ValueError(f"rank must be below world = {world}, got {rank}")
        self.global_batch = self.per_process * self.world

    def __iter__(self) -> Iterator[int]:
        order = list(RandomSampler(range(self.size)))  # what DataLoader(shuffle=True) draws, at the same moment
        offset = self.rank * self.per_process
        for k in range(self.size // self.global_batch):
            start = k * self.global_batch + offset
            yield from order[start : start + self.per_process]

    def __len__(self) -> int:
        return (self.size // self.global_batch) * self.per_process


def check_job(config: TrainConfig, world: int, *, option: str = "--nproc") -> None:
    """The errors a data-parallel run of ``config`` over ``world`` processes would meet, raised before any process
    starts (or, under torchrun, before any process group): unknown method, a method with a miner, a global batch
    that ``world`` does not divide or that is too small."""
    _, miner = resolve_method(config.method)  # fails fast on an unknown method
    if miner is not None:
        raise ValueError(
            f"{option} does not support {config.method!r}: it uses a miner (DistributedLoss gathers no tuples)"
        )
    if config.batch_size < 2 * world:
        raise ValueError(
            f"--batch-size is the global batch, split over the {world} processes; it must be at least "
            f"2 x {'nproc' if option == '--nproc' else 'world size'} = {2 * world}, got {config.batch_size}"
        )
    if config.batch_size % world:
        below = config.batch_size - config.batch_size % world
        raise ValueError(
            f"--batch-size {config.batch_size} does not divide among {world} processes (it is the global batch); "
            f"use a multiple of {world}, e.g. {below} or {below + world}"
        )
    if not dist.is_available():
        raise ValueError(f"{option} needs torch.distributed, which this torch build lacks")


def launch(
    config: Any,
    nproc: int,
    *,
    resume: str | os.PathLike | None = None,
    verbose: bool = False,
    overwrite: bool = False,
    max_restarts: int = 0,
) -> dict:
    """Train ``config`` (a :class:`~pml_anchors.app.config.TrainConfig`) with ``nproc`` processes started by torch's
    elastic agent (what ``torchrun --standalone --nproc-per-node N`` runs); rank 0's results.

    ``nproc=1`` without restarts is :func:`pml_anchors.app.session.run` itself. Configuration errors (unknown
    method, too small a batch or one that ``nproc`` does not divide, more processes than GPUs) are raised here,
    before any process is started. A process that fails, dies or stalls ends the job (after ``max_restarts``
    restarts of the group, each resuming from the last checkpoint): :class:`WorkerError` names it. The launcher
    claims ``config.output`` for the whole job (:func:`~pml_anchors.app.output_folder.claimed`; ``overwrite`` as in
    ``run``).
    """
    nproc = positive_int(nproc, "nproc")
    max_restarts = check_int(max_restarts, "max_restarts", minimum=0)
    if nproc == 1 and not max_restarts:
        return run(config, resume=resume, overwrite=overwrite)
    check_job(config, nproc)
    device = resolve_device(config.device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(f"--nproc {nproc} needs {nproc} GPUs (one per process); {torch.cuda.device_count()} visible")
    args = (config.to_dict(), None if resume is None else str(resume), verbose, True, overwrite)
    options = dict(timeout=config.timeout_s, max_restarts=max_restarts, verbose=verbose)
    if not config.output:
        return run_workers(_worker, args, nproc, **options)[0]
    with claimed(config.output, resume=resume is not None, overwrite=overwrite):
        return run_workers(_worker, args, nproc, **options)[0]


def train_torchrun(
    config: TrainConfig,
    env: TorchrunEnv | None = None,
    *,
    resume: str | os.PathLike | None = None,
    verbose: bool = False,
    overwrite: bool = False,
) -> dict | None:
    """Train ``config`` as one worker of a job that ``torchrun`` started (``env``: this process's place in it,
    default :func:`~pml_anchors.app.torchrun_env.detect`); rank 0's results, ``None`` on the other ranks.

    Rank 0 claims ``config.output`` for its lifetime and writes the files; the other ranks write nothing. After a
    restart (``--max-restarts``) the job resumes from ``config.output``'s checkpoint (see the module's docstring).
    """
    env = env if env is not None else detect()
    if env is None:
        raise ValueError("not a torchrun worker: RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are not set")
    check_job(config, env.world_size, option="torchrun")
    device = resolve_device(config.device)
    if device.type == "cuda" and env.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"torchrun: LOCAL_RANK {env.local_rank} needs GPU {env.local_rank} (one per process); "
            f"{torch.cuda.device_count()} visible"
        )
    return _worker(config.to_dict(), None if resume is None else str(resume), verbose, False, overwrite, env)


class _DataParallel:
    """Per-process state: the unwrapped models, the sampler, and the hooks that keep DDP current."""

    def __init__(self, rank: int, world: int, device: torch.device, *, evaluates_every_epoch: bool = False):
        self.rank, self.world, self.device = rank, world, device
        self.raw: dict[str, torch.nn.Module] = {}
        self.trainable: dict[str, tuple[bool, ...]] = {}
        self.sampler: GlobalBatchSampler | None = None
        self.evaluates_every_epoch = evaluates_every_epoch
        self.epoch_end_group: Any = None  # the default group, or one that waits EVALUATION_WAIT
        self.sharded: _ShardedLoss | None = None  # --class-parallel: the loss's anchors sharded over the processes
        self.loss: torch.nn.Module | None = None  # the loss as this process computes it (see shard)

    def setup(self, session: Any) -> None:
        trainer = session.trainer
        self.raw = {key: trainer.models[key] for key in ("trunk", "embedder")}
        size = len(session.splits.train)
        self.sampler = GlobalBatchSampler(size, min(session.config.batch_size, size), self.world, self.rank)
        trainer.sampler = self.sampler
        trainer.batch_size = self.sampler.per_process
        trainer.loss_funcs["metric_loss"] = self.loss if self.loss is not None else self.shard(session)
        self.wrap(trainer)
        if self.evaluates_every_epoch:
            self.epoch_end_group = dist.new_group(backend="gloo", timeout=EVALUATION_WAIT)
        hooks = trainer.end_of_epoch_hook  # the whole chain, rank 0's evaluation and checkpoint included
        trainer.end_of_epoch_hook = lambda trainer: self.agree(self.with_full_loss(hooks, trainer))

    def shard(self, session: Any) -> torch.nn.Module:
        """Wrap the session's loss for this process (:func:`distributed_loss`; no collective): with ``--class-parallel``
        it keeps its block of the anchors, the full set freed."""
        full_anchors = getattr(session.loss, "anchors", None)
        self.loss = distributed_loss(session.loss, session.config)
        if isinstance(self.loss, ClassParallelLoss):
            assert full_anchors is not None  # an AnchorLoss (ClassParallelLoss checked it)
            self.sharded = _ShardedLoss(session, self.loss, full_anchors)
        del full_anchors
        return self.loss

    def full_loss(self) -> Any:
        """Inside it rank 0's session holds the full loss (a collective under ``--class-parallel``)."""
        return self.sharded.full() if self.sharded is not None else contextlib.nullcontext()

    def with_full_loss(self, hooks: Any, trainer: Any) -> Any:
        with self.full_loss():
            return hooks(trainer)

    def agree(self, keep_going: Any) -> bool:
        """After every process's end-of-epoch hooks: wait for all (rank 0 may have evaluated, written a checkpoint)
        and go on only if every process's hooks do (one stopping alone would leave the others waiting)."""
        flag = torch.tensor([0 if keep_going is False else 1], dtype=torch.int32, device=self._device_of_group())
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.epoch_end_group)
        return bool(flag.item())

    def _device_of_group(self) -> torch.device:
        return torch.device("cpu") if self.epoch_end_group is not None else self.device

    def wrap(self, trainer: Any) -> None:
        """(Re)wrap every model whose set of trainable parameters changed since it was last wrapped."""
        from torch.nn.parallel import DistributedDataParallel

        for key, module in self.raw.items():
            trainable = tuple(p.requires_grad for p in module.parameters())
            if self.trainable.get(key) == trainable:
                continue
            self.trainable[key] = trainable
            if any(trainable):
                device_ids = [self.device.index] if self.device.type == "cuda" else None
                trainer.models[key] = DistributedDataParallel(module, device_ids=device_ids)
            else:  # nothing to synchronise (e.g. a frozen trunk); DDP refuses such a module
                trainer.models[key] = module

    def end_of_iteration_hook(self, trainer: Any) -> None:
        self.wrap(trainer)

    def end_of_epoch_hook(self, trainer: Any) -> None:
        self.wrap(trainer)


def _checksums(session: Any, loss: bool = True) -> torch.Tensor:
    """Per parameter: sum and sum of squares (float64), then every optimizer group's lr: a small fingerprint of
    this replica's weights and schedule (without the loss's parameters when each process holds a block of them)."""
    params = [*session.trunk.parameters(), *session.embedder.parameters(), *(session.loss.parameters() if loss else ())]
    values = [torch.stack([p.detach().double().sum(), p.detach().double().square().sum()]) for p in params]
    lrs = [group["lr"] for _, opt in sorted(session.optimizers.items()) for group in opt.param_groups]
    return torch.cat([*values, torch.tensor(lrs, dtype=torch.float64)])


def _resume_point(
    resume: str | None, output: str | None, env: TorchrunEnv, device: torch.device
) -> tuple[str | dict | None, int]:
    """``(what this worker resumes from, the job's restart count)``. A job that may restart
    (``max_restarts``) and writes ``output`` asks every rank for its restart count (an agent that restarts because
    another node came back does not count it, so the largest says) and whether it can read ``output``'s checkpoint.
    After a restart, that checkpoint when any rank has it: its path when every rank can read it, else its contents,
    broadcast from the first rank that has it. Otherwise ``resume``."""
    if not env.max_restarts or not output:
        return resume, env.restart_count
    path = os.path.join(output, "checkpoint.pt")
    mine = torch.tensor([env.restart_count, int(os.path.isfile(path))], dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(env.world_size)]
    dist.all_gather(every, mine)
    restarts = max(int(t[0].item()) for t in every)
    have = [rank for rank, t in enumerate(every) if int(t[1].item())]
    if not restarts or not have:
        return resume, restarts
    if len(have) == env.world_size:
        return path, restarts
    box = [load_checkpoint(path) if env.rank == have[0] else None]
    dist.broadcast_object_list(box, src=have[0], device=device if device.type == "cuda" else None)
    return box[0], restarts


def _worker(
    config_dict: dict,
    resume: str | None,
    verbose: bool,
    launched: bool,
    overwrite: bool,
    env: TorchrunEnv | None = None,
) -> dict | None:
    """One process of the job, under torch's agent (``launched``: started by :func:`launch`, whose launcher holds
    ``--output``) or ``torchrun``: rank 0 returns the results."""
    env = env if env is not None else detect()
    if env is None:
        raise ValueError("a worker needs torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)")
    rank, world = env.rank, env.world_size
    if rank != 0:
        os.environ["TQDM_DISABLE"] = "1"  # one progress bar, rank 0's
    set_verbosity(verbose)
    # a per-process lock for the progress bars: tqdm's default one is a named semaphore, which a worker ended by the
    # launcher would leave to multiprocessing's tracker (and its "leaked semaphore" warning)
    importlib.import_module("tqdm").tqdm.set_lock(threading.RLock())
    device = resolve_device(config_dict.get("device"))
    values = dict(config_dict)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
        values["device"] = str(device)
    elif not values.get("num_threads"):  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world_size))
    output = values.get("output")
    if rank != 0:  # only rank 0 evaluates and writes files
        values.update(output=None, eval_every_epoch=False, tensorboard=None)
    config = TrainConfig.from_dict(values)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=config.timeout_s)
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and env.local_world_size == world:
        # one agent, whose store outlives a restart: without a prefix of the attempt, the process group's keys (each
        # rank's address) of the attempt before would be read as this one's (seen: gloo's "Connection refused").
        # Several agents may count restarts differently (docs/distributed.md: multi-node restarts)
        store = dist.PrefixStore(f"pml-anchors/attempt_{env.restart_count}", store)
    elif env.max_restarts and rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        warnings.warn(
            "restarts of a multi-node torchrun job need TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 on every node (else "
            "the restarted workers may find the addresses of the dead ones in torch's store): docs/distributed.md",
            RuntimeWarning,
            stacklevel=2,
        )
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    session: Session | None = None
    parallel: _DataParallel | None = None
    try:
        started = time.perf_counter()
        checkpoint, restarts = _resume_point(resume, output, env, device)
        claim: Any = contextlib.nullcontext()
        if rank == 0 and output and not launched:
            claim = claimed(output, resume=checkpoint is not None or restarts > 0, overwrite=overwrite)
        with claim:
            if rank == 0 and output and overwrite and env.max_restarts and not restarts:
                for name in RUN_FILES:  # a restart must not resume the run this one replaces
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(output, name))
            evaluates = bool(config_dict.get("eval_every_epoch")) or config_dict.get("select_epoch") is not None
            parallel = _DataParallel(rank, world, device, evaluates_every_epoch=evaluates)
            hooks: dict[str, Any] = {"end_of_iteration_hook": parallel.end_of_iteration_hook}
            hooks["end_of_epoch_hook"] = parallel.end_of_epoch_hook
            if config.class_parallel:  # one process at a time draws the full anchor set and keeps only its block,
                for turn in range(world):  # so that the job's peak is one full set, not one per process
                    if turn == rank:
                        session = build_session(config, resume=checkpoint, **hooks)
                        parallel.shard(session)
                        gc.collect()
                    dist.barrier()
            else:
                session = build_session(config, resume=checkpoint, **hooks)
            assert session is not None
            if rank != 0:  # every process trains on the selection's folds; rank 0 alone evaluates one and selects
                session.selection = None
            parallel.setup(session)
            train(session)
            sums = _checksums(session, loss=parallel.sharded is None).to(device)
            gathered = [torch.empty_like(sums) for _ in range(world)]
            dist.all_gather(gathered, sums)
            with parallel.full_loss():  # --class-parallel: every process sends its block, rank 0 holds them all
                results = _finish(session, config, rank, world, restarts, gathered, started)
            return results
    except BaseException as exc:
        report_failure(exc)  # now: the cleanup below can block on a process group whose peer is gone
        raise
    finally:
        # DDP wrappers (also the ones replaced when a hook froze or unfroze a model) sit in PML's reference cycles
        # and keep the process group and its pending work alive. Collect them now, while the interpreter is whole:
        # freed only at its exit, gloo's threads can abort the process (SIGABRT, seen once on a busy machine)
        session = parallel = None
        gc.collect()
        dist.destroy_process_group()


def _finish(
    session: Any,
    config: TrainConfig,
    rank: int,
    world: int,
    restarts: int,
    gathered: list[torch.Tensor],
    started: float,
) -> dict | None:
    """Rank 0: the results (evaluated unless the last epoch was), ``results.json`` and ``checkpoint.pt``; the others
    ``None``."""
    if rank != 0:
        return None
    diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
    results = results_dict(session, final_metrics(session), wall_seconds=time.perf_counter() - started)
    assert session.trainer is not None  # train() refuses a session without one
    per_process = session.trainer.batch_size
    results.update(
        world_size=world,
        batch_size_per_process=per_process,
        global_batch_size=per_process * world,
        restart_count=restarts,
        replica_max_abs_diff=diff,
    )
    if config.output:
        os.makedirs(config.output, exist_ok=True)
        save_checkpoint(session, os.path.join(config.output, "checkpoint.pt"))
        write_json(results, os.path.join(config.output, "results.json"))
    return results
