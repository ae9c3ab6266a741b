"""``pml-anchors train --nproc N``: data-parallel training on one machine, torchrun-style.

:func:`launch` spawns ``N`` processes (start method *spawn*, watched by :mod:`pml_anchors.app.supervisor`) that
join one process group (gloo on CPU; NCCL on CUDA, one GPU per process) and each build the same run with
:func:`pml_anchors.app.session.build`: the same seed gives every process the same data split, initial models and
anchors. Then, in every process:

* ``trunk`` and ``embedder`` are wrapped in ``DistributedDataParallel`` inside PML's trainer (the optimizers
  hold the same parameter objects). A module with no trainable parameter is left unwrapped, and the wrappers
  are rebuilt when a hook freezes or unfreezes parameters (e.g. the Proxy Anchor warm-up freezes the trunk for
  the first epoch), so the set DDP synchronises is always the set being trained;
* the loss is wrapped in :class:`~pml_anchors.losses.distributed.DistributedLoss`: each process computes it on the
  global batch, and the model and anchor gradients equal those of one process on the concatenated batch;
* a ``DistributedSampler`` (seeded with ``config.seed``, ``set_epoch`` every epoch, so resuming draws the same
  shards) gives each process its ``1/N`` of every epoch. ``--batch-size`` stays the *global* batch: each
  process takes ``batch_size / N`` samples, so a run with ``--nproc`` trains on batches of the same size
  as one without (a batch size that ``N`` does not divide is refused before any process starts);
* rank 0 alone evaluates and writes ``results.json`` and ``checkpoint.pt`` (plain ``state_dict``\\ s of the
  unwrapped modules: ``pml-anchors eval`` and ``--resume`` work with or without ``--nproc``).

BatchNorm statistics are per process (as with plain DDP). Methods whose baseline uses a miner are refused:
``DistributedLoss`` gathers embeddings, not mined tuples. ``results.json`` gains ``world_size``,
``batch_size_per_process``, ``global_batch_size`` (what each step trained on: ``batch_size`` unless the training set
is smaller) and ``replica_max_abs_diff``: the largest difference between the processes'
parameter checksums and learning rates at the end (0.0 when every replica holds the same weights and lrs). Every
process computes the loss on the global batch, so a ``plateau`` lr schedule lowers every process's lr at the same
epoch.

Faults end the job instead of hanging it (:mod:`pml_anchors.app.supervisor`): every collective waits at most
``config.timeout_s`` seconds (``--timeout``, default 300) for the other processes; a process that dies, raises
or stays stopped ends every other one at once, with a :class:`~pml_anchors.app.supervisor.WorkerError` naming its
rank and pid; the processes never outlive the launcher (``kill -9`` included), and the launcher writes no
temporary file. At the end of every epoch the processes wait for each other, and stop together if any process's
hooks stop training; with ``eval_every_epoch`` that wait (for rank 0's evaluation) is bounded by
:data:`EVALUATION_WAIT`, not ``--timeout``.
"""

from __future__ import annotations

import gc
import importlib
import os
import socket
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ..devices import resolve_device
from ..losses.distributed import DistributedLoss
from ..validators import positive_int
from .checkpoints import save_checkpoint
from .config import TrainConfig
from .output_folder import claimed
from .results import results_dict, write_json
from .session import Session, evaluate_session, resolve_method, run, train
from .session import build as build_session
from .supervisor import WorkerError, report_failure, run_workers
from .trainer import set_verbosity

if TYPE_CHECKING:
    from torch.utils.data.distributed import DistributedSampler

__all__ = ["WorkerError", "launch"]

#: with ``eval_every_epoch``, how long the other processes wait at the end of an epoch for rank 0's evaluation (not
#: bounded by ``--timeout``: it may take long; a rank 0 that dies or stops still ends the job at once, through the
#: launcher's watch)
EVALUATION_WAIT = timedelta(hours=24)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    config: Any, nproc: int, *, resume: str | os.PathLike | None = None, verbose: bool = False, overwrite: bool = False
) -> dict:
    """Train ``config`` (a :class:`~pml_anchors.app.config.TrainConfig`) with ``nproc`` processes; rank 0's results.

    ``nproc=1`` is :func:`pml_anchors.app.session.run` itself. Configuration errors (unknown method, too small a
    batch or one that ``nproc`` does not divide, more processes than GPUs) are raised here, before any process is
    started. A process that fails, dies or stalls ends the job: :class:`WorkerError` names it. The launcher claims
    ``config.output`` for the whole job (:func:`~pml_anchors.app.output_folder.claimed`; ``overwrite`` as in ``run``).
    """
    nproc = positive_int(nproc, "nproc")
    if nproc == 1:
        return run(config, resume=resume, overwrite=overwrite)
    _, miner = resolve_method(config.method)  # fails fast on an unknown method
    if miner is not None:
        raise ValueError(
            f"--nproc does not support {config.method!r}: it uses a miner (DistributedLoss gathers no tuples)"
        )
    if config.batch_size < 2 * nproc:
        raise ValueError(
            f"--batch-size is the global batch, split over the {nproc} processes; it must be at least "
            f"2 x nproc = {2 * nproc}, got {config.batch_size}"
        )
    if config.batch_size % nproc:
        below = config.batch_size - config.batch_size % nproc
        raise ValueError(
            f"--batch-size {config.batch_size} does not divide among {nproc} processes (it is the global batch); "
            f"use a multiple of {nproc}, e.g. {below} or {below + nproc}"
        )
    if not dist.is_available():
        raise ValueError("--nproc needs torch.distributed, which this torch build lacks")
    device = resolve_device(config.device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(f"--nproc {nproc} needs {nproc} GPUs (one per process); {torch.cuda.device_count()} visible")

    args = (nproc, _free_port(), config.to_dict(), None if resume is None else str(resume), verbose)
    if not config.output:
        return run_workers(_worker, args, nproc, timeout=config.timeout_s)[0]
    with claimed(config.output, resume=resume is not None, overwrite=overwrite):
        return run_workers(_worker, args, nproc, timeout=config.timeout_s)[0]


class _DataParallel:
    """Per-process state: the unwrapped models, the sampler, and the hooks that keep DDP and sampler current."""

    def __init__(self, rank: int, world: int, device: torch.device, *, evaluates_every_epoch: bool = False):
        self.rank, self.world, self.device = rank, world, device
        self.raw: dict[str, torch.nn.Module] = {}
        self.trainable: dict[str, tuple[bool, ...]] = {}
        self.sampler: DistributedSampler | None = None
        self.evaluates_every_epoch = evaluates_every_epoch
        self.epoch_end_group: Any = None  # the default group, or one that waits EVALUATION_WAIT

    def setup(self, session: Any) -> None:
        from torch.utils.data.distributed import DistributedSampler

        trainer = session.trainer
        self.raw = {key: trainer.models[key] for key in ("trunk", "embedder")}
        self.sampler = DistributedSampler(
            session.splits.train, num_replicas=self.world, rank=self.rank, shuffle=True, seed=session.config.seed
        )
        self.sampler.set_epoch(session.start_epoch)
        trainer.sampler = self.sampler
        trainer.batch_size = max(1, min(session.config.batch_size, len(session.splits.train)) // self.world)
        trainer.loss_funcs["metric_loss"] = DistributedLoss(session.loss)
        self.wrap(trainer)
        if self.evaluates_every_epoch:
            self.epoch_end_group = dist.new_group(backend="gloo", timeout=EVALUATION_WAIT)
        hooks = trainer.end_of_epoch_hook  # the whole chain, rank 0's evaluation and checkpoint included
        trainer.end_of_epoch_hook = lambda trainer: self.agree(hooks(trainer))

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
        assert self.sampler is not None  # the hooks run in training, after setup()
        self.sampler.set_epoch(trainer.epoch + 1)


def _checksums(session: Any) -> torch.Tensor:
    """Per parameter: sum and sum of squares (float64), then every optimizer group's lr: a small fingerprint of
    this replica's weights and schedule."""
    params = [*session.trunk.parameters(), *session.embedder.parameters(), *session.loss.parameters()]
    values = [torch.stack([p.detach().double().sum(), p.detach().double().square().sum()]) for p in params]
    lrs = [group["lr"] for _, opt in sorted(session.optimizers.items()) for group in opt.param_groups]
    return torch.cat([*values, torch.tensor(lrs, dtype=torch.float64)])


def _worker(rank: int, world: int, port: int, config_dict: dict, resume: str | None, verbose: bool) -> dict | None:
    """One process of the job (run by :func:`~pml_anchors.app.supervisor.run_workers`): rank 0 returns the results."""
    if rank != 0:
        os.environ["TQDM_DISABLE"] = "1"  # one progress bar, rank 0's
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    set_verbosity(verbose)
    # a per-process lock for the progress bars: tqdm's default one is a named semaphore, which a worker ended by the
    # launcher would leave to multiprocessing's tracker (and its "leaked semaphore" warning)
    importlib.import_module("tqdm").tqdm.set_lock(threading.RLock())
    device = resolve_device(config_dict.get("device"))
    values = dict(config_dict)
    if device.type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        values["device"] = str(device)
    elif not values.get("num_threads"):  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if rank != 0:  # only rank 0 evaluates and writes files
        values.update(output=None, eval_every_epoch=False, tensorboard=None)
    config = TrainConfig.from_dict(values)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=config.timeout_s))
    session: Session | None = None
    parallel: _DataParallel | None = None
    try:
        started = time.perf_counter()
        parallel = _DataParallel(rank, world, device, evaluates_every_epoch=bool(config_dict.get("eval_every_epoch")))
        session = build_session(
            config,
            resume=resume,
            end_of_iteration_hook=parallel.end_of_iteration_hook,
            end_of_epoch_hook=parallel.end_of_epoch_hook,
        )
        parallel.setup(session)
        train(session)
        sums = _checksums(session).to(device)
        gathered = [torch.empty_like(sums) for _ in range(world)]
        dist.all_gather(gathered, sums)
        if rank != 0:
            return None
        diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
        last = session.history[-1] if session.history else {}
        fresh = last.get("epoch") == session.epoch and "precision_at_1" in last
        metrics = last if fresh else evaluate_session(session)
        results = results_dict(session, metrics, wall_seconds=time.perf_counter() - started)
        assert session.trainer is not None  # train() above refuses a session without one
        per_process = session.trainer.batch_size
        results.update(
            world_size=world,
            batch_size_per_process=per_process,
            global_batch_size=per_process * world,
            replica_max_abs_diff=diff,
        )
        if config.output:
            os.makedirs(config.output, exist_ok=True)
            save_checkpoint(session, os.path.join(config.output, "checkpoint.pt"))
            write_json(results, os.path.join(config.output, "results.json"))
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
