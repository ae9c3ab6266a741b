"""Class-parallel anchor losses: each process holds one contiguous block of the anchors (Partial FC's model parallel).

An et al., "Partial FC: Training 10 Million Identities on a Single Machine" (ICCVW 2021), Sec. 3: with N processes,
each holds C / N class centres, the embeddings of the whole batch are all-gathered, each process computes the logits
of its own block only and the softmax normaliser is combined across processes with an all-reduce of the maxima and
one of the sums of exponentials. :class:`ClassParallelLoss` does this for any :class:`~pml_anchors.losses.AnchorLoss`
whose method implements :meth:`~pml_anchors.losses.AnchorLoss.class_parallel_losses` (its per-block terms from the
same kernel, :func:`~pml_anchors.losses.logsumexp.class_logsumexp`), and the result is *exact*: the value and the
gradients of the embeddings and of every process's anchors equal those of the single-process loss on the
concatenated batch (``tests/test_class_parallel.py``, float64, 2 and 4 processes, uneven blocks and batches).

The combination rule (why one backward needs no collective except the embeddings'): every process computes the same
loss value from quantities combined across processes; in backward every process therefore holds the same gradient of
the loss with respect to each combined quantity and passes to its own block only its share of it (for a log-sum-exp
``exp(lse_r - lse)``, for a sum the identity, for a gathered per-class vector its own rows). Each block's anchors then
get their complete gradient locally, and the embeddings' gradient is the sum over processes of the blocks' parts: one
all-reduce of the (global batch x d) gradient. As :class:`~pml_anchors.losses.DistributedLoss` does, the local
embeddings' gradient is multiplied by the world size so that DDP's averaging of the model's gradient gives exactly
the single-process gradient.

Building blocks for the launcher and checkpoints: :func:`block_bounds` (which rows a process holds),
:func:`shard_anchors` (a block of a full anchor tensor), :func:`gather_anchors` (the full tensor from the blocks,
a collective), :meth:`ClassParallelLoss.full_state_dict` / :meth:`ClassParallelLoss.load_full_state_dict` (a
checkpoint that holds the full anchor set, loadable by a plain loss or at another world size) and
:func:`check_class_parallel` (validation of a configuration).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from .base import AnchorLoss
from .distributed import DistributedLoss, WrappedLoss
from .logsumexp import LogitMap, class_logsumexp

__all__ = [
    "ClassParallelLoss",
    "ClassShard",
    "block_bounds",
    "check_class_parallel",
    "gather_anchors",
    "load_loss_state_dict",
    "loss_state_dict",
    "shard_anchors",
    "supports_class_parallel",
    "wrap_for_training",
]


# -- blocks ---------------------------------------------------------------------------------------------------


def block_bounds(rows: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` blocks of ``rows`` anchor rows over ``world_size`` processes; the first
    ``rows % world_size`` blocks hold one row more. Every block holds at least one row."""
    if isinstance(rows, bool) or not isinstance(rows, int) or isinstance(world_size, bool):
        raise TypeError(f"rows and world_size must be ints, got {type(rows).__name__} and {type(world_size).__name__}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if rows < world_size:
        raise ValueError(
            f"class-parallel training needs at least one anchor row per process: {rows} rows cannot be split "
            f"over {world_size} processes"
        )
    base, extra = divmod(rows, world_size)
    bounds, start = [], 0
    for r in range(world_size):
        stop = start + base + (1 if r < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def shard_anchors(full: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rows ``block_bounds(len(full), world_size)[rank]`` of ``full`` (along its first dimension), as a contiguous
    copy: bit-identical to those rows of the full anchor set."""
    start, stop = block_bounds(int(full.shape[0]), world_size)[rank]
    return full.detach()[start:stop].clone().contiguous()


def gather_anchors(block: torch.Tensor, group: Any = None, dst: int | None = None) -> torch.Tensor | None:
    """The full anchor tensor from every process's block, in rank order (a collective: every process of ``group``
    calls it); blocks may differ in length.

    ``dst=None``: every process gets it; ``dst=r`` (a rank within ``group``): only that one, the others get ``None``.
    Each block is sent straight into its rows of one preallocated tensor (a broadcast per block, or a send to
    ``dst``): one full set per receiving process, no padded copies (C = 4M, d = 128: 2 GB, not 4)."""
    block = block.detach().contiguous()
    world = _world(group)
    if world == 1:
        return block.clone()
    if dst is not None and (isinstance(dst, bool) or not isinstance(dst, int) or not 0 <= dst < world):
        raise ValueError(f"dst must be None or a rank of the group, 0 to {world - 1}, got {dst!r}")
    rank = dist.get_rank(group)
    size = torch.tensor([block.shape[0]], dtype=torch.long, device=block.device)
    sizes_t = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes_t, size, group=group)
    starts = [0]
    for n in sizes_t:
        starts.append(starts[-1] + int(n))
    receive = dst is None or rank == dst
    full = block.new_empty((starts[-1], *block.shape[1:])) if receive else None
    for r in range(world):
        src = r if group is None else dist.get_global_rank(group, r)
        if full is not None and r == rank:
            full[starts[r] : starts[r + 1]] = block
        if dst is None:
            assert full is not None
            dist.broadcast(full[starts[r] : starts[r + 1]], src=src, group=group)
        elif r != dst:
            peer = dst if group is None else dist.get_global_rank(group, dst)
            if rank == r:
                dist.send(block, dst=peer, group=group)
            elif rank == dst:
                assert full is not None
                dist.recv(full[starts[r] : starts[r + 1]], src=src, group=group)
    return full


def _world(group: Any = None) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def supports_class_parallel(loss: Any) -> bool:
    """Whether ``loss`` (an instance or a class) is an :class:`AnchorLoss` whose method implements
    :meth:`~pml_anchors.losses.AnchorLoss.class_parallel_losses`."""
    cls = loss if isinstance(loss, type) else type(loss)
    return issubclass(cls, AnchorLoss) and cls.class_parallel_losses is not AnchorLoss.class_parallel_losses


def check_class_parallel(loss: Any, world_size: int | None = None) -> None:
    """A ``ValueError`` unless ``loss`` (a loss, its class or a registered method name) can run class-parallel: its
    method implements ``class_parallel_losses``, and (when ``world_size`` is given) there is more than one process."""
    if world_size is not None and (isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 2):
        raise ValueError(
            "class_parallel shards the classes over several processes and needs a world size > 1 (--nproc N or "
            f"torchrun), got {world_size!r}"
        )
    if isinstance(loss, str):
        if loss.startswith("baseline:"):
            raise ValueError(f"class_parallel shards a pml_anchors method's anchors; {loss!r} is a PML baseline")
        from ..plugin.api import get_method

        spec = get_method(loss)
        cls, name = spec.resolve_loss(), spec.name
    else:
        cls = loss if isinstance(loss, type) else type(loss)
        name = cls.__name__
    if not supports_class_parallel(cls):
        raise ValueError(
            f"class_parallel is not supported by {name!r} ({cls.__name__}): its loss does not implement "
            "AnchorLoss.class_parallel_losses (supported: the softmax-type methods and Proxy Anchor built on "
            "pml_anchors.losses.logsumexp)"
        )


def wrap_for_training(loss: torch.nn.Module, class_parallel: bool, group: Any = None) -> torch.nn.Module:
    """The loss as a data-parallel run uses it: :class:`ClassParallelLoss` (``class_parallel``: anchors sharded,
    checked with :func:`check_class_parallel` against the group's size) or
    :class:`~pml_anchors.losses.DistributedLoss` (every process holds all anchors). Build the loss's optimiser
    after this call, on ``wrapped.loss``; save and resume with :func:`loss_state_dict` / :func:`load_loss_state_dict`."""
    if not class_parallel:
        return DistributedLoss(loss)
    check_class_parallel(loss, _world(group))
    return ClassParallelLoss(loss, group)


def loss_state_dict(loss: torch.nn.Module, dst: int | None = None) -> dict[str, Any] | None:
    """What a checkpoint stores of ``loss``: for a :class:`ClassParallelLoss` the wrapped loss's ``state_dict`` with
    the full anchor set (:meth:`ClassParallelLoss.full_state_dict`, a collective: every process calls it; with
    ``dst`` only that rank gets it, the others ``None``), else ``loss.state_dict()`` (a
    :class:`~pml_anchors.losses.DistributedLoss` or plain loss). Either loads into the plain loss, or through
    :func:`load_loss_state_dict` into a class-parallel one at any world size."""
    if isinstance(loss, ClassParallelLoss):
        return loss.full_state_dict(dst)
    return loss.state_dict()


def load_loss_state_dict(loss: torch.nn.Module, state: Mapping[str, Any], strict: bool = True) -> Any:
    """Load what :func:`loss_state_dict` (or a plain loss's ``state_dict``) wrote: a :class:`ClassParallelLoss`
    keeps its block of the full anchors, any other module loads it as it is."""
    if isinstance(loss, ClassParallelLoss):
        return loss.load_full_state_dict(state, strict=strict)
    return loss.load_state_dict(state, strict=strict)


# -- collectives with the gradients of the replicated loss -------------------------------------------------------


class _GatherBatch(torch.autograd.Function):
    """All-gather of the local (b_r, ...) rows into the global batch; backward: the sum over processes of the
    global gradient (one all-reduce), the local rows of it, times ``scale``."""

    @staticmethod
    def forward(ctx, x, group, scale):
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        parts = _gather_padded(x, group, world)
        ctx.group, ctx.scale = group, scale
        ctx.start = sum(p.shape[0] for p in parts[:rank])
        ctx.stop = ctx.start + x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        out = grad[ctx.start : ctx.stop]
        return (out * ctx.scale if ctx.scale != 1 else out), None, None


def _gather_padded(tensor: torch.Tensor, group: Any, world: int) -> list[torch.Tensor]:
    """``all_gather`` of tensors whose first dimension differs between processes (no gradient)."""
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes_t = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes_t, size, group=group)
    sizes = [int(s) for s in sizes_t]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded.contiguous(), group=group)
    return [o[:n] for o, n in zip(out, sizes)]


class _ReplicatedSum(torch.autograd.Function):
    """Sum over processes; backward: the identity (each process's part gets the replicated loss's gradient)."""

    @staticmethod
    def forward(ctx, t, group):
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ReplicatedLogSumExp(torch.autograd.Function):
    """``log sum_r exp(t_r)`` over processes (an all-reduce of the maxima, then of the shifted sums: Partial FC's
    combination); backward: ``grad * exp(t_r - out)`` (0 where ``out`` is -inf: nothing anywhere)."""

    @staticmethod
    def forward(ctx, t, group):
        m = t.detach().clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        s = torch.exp(t.detach() - m)
        dist.all_reduce(s, op=dist.ReduceOp.SUM, group=group)
        out = m + torch.log(s)
        ctx.save_for_backward(t, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        t, out = ctx.saved_tensors
        finite = torch.isfinite(out)
        weight = torch.exp(t - torch.where(finite, out, torch.zeros_like(out)))
        return torch.where(finite, grad * weight, torch.zeros_like(grad)), None


class _GatherBlocks(torch.autograd.Function):
    """Per-row values of every block (size_r, ...) concatenated in rank order; backward: this block's rows."""

    @staticmethod
    def forward(ctx, t, group, start, stop):
        ctx.start, ctx.stop = start, stop
        return torch.cat(_gather_padded(t.contiguous(), group, dist.get_world_size(group)))

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.start : ctx.stop], None, None, None


class ClassShard:
    """This process's block of anchor rows and the collectives a method combines its per-block terms with.

    Passed to :meth:`~pml_anchors.losses.AnchorLoss.class_parallel_losses`. Rows are the first dimension of the
    loss's ``anchors`` (classes; RePoNet's rows include its virtual vertices, F-SC's (K, s, d) anchors are split by
    class), and labels index them. Every combining method is differentiable with the gradient of the loss that every
    process computes identically (see the module docstring); all processes must call them in the same order.

    :ivar start: index of this block's first row among all rows.
    :ivar stop: one past its last row.
    :ivar rows: rows over all processes.
    """

    def __init__(self, start: int, stop: int, rows: int, group: Any = None):
        self.start, self.stop, self.rows, self.group = int(start), int(stop), int(rows), group

    @property
    def size(self) -> int:
        """Rows of this block."""
        return self.stop - self.start

    def owned(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(owned, local)``: which samples' class lies in this block (B,) bool, and their row within it (B,)
        (0 for the others, so that it can index the block)."""
        local = labels.long() - self.start
        owned = (local >= 0) & (local < self.size)
        return owned, torch.where(owned, local, torch.zeros_like(local))

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over processes (e.g. per-sample terms that only the block owning the sample's class computed, 0
        elsewhere)."""
        return _ReplicatedSum.apply(t.contiguous(), self.group)

    def logsumexp(self, t: torch.Tensor) -> torch.Tensor:
        """``log sum_r exp(t_r)`` over processes: the blocks' log-sum-exps as one over all rows."""
        return _ReplicatedLogSumExp.apply(t.contiguous(), self.group)

    def amax(self, t: torch.Tensor) -> torch.Tensor:
        """Maximum over processes (a constant: no gradient)."""
        out = t.detach().clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=self.group)
        return out

    def cat(self, t: torch.Tensor) -> torch.Tensor:
        """Per-row values of this block (size, ...) -> those of all rows (rows, ...), in row order."""
        return _GatherBlocks.apply(t, self.group, self.start, self.stop)

    def others_logsumexp(
        self,
        x: torch.Tensor,
        rows: torch.Tensor,
        logit_map: LogitMap,
        labels: torch.Tensor,
        *,
        group: int = 1,
        chunk_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax-type terms over all rows from this block's: ``(others, own)``.

        ``others`` (B,): the log-sum-exp of ``logit_map(x, rows)`` over every row of every block except each
        sample's own class's ``group`` rows; ``own`` (B, ``group``): the own class's logits (from the block that
        holds them). Both differentiable; cross-entropy is ``cross_entropy_from_lse(others, logsumexp(own))``.
        ``rows`` is this block's (size * group, d) rows. One :func:`class_logsumexp` call on the block: a sample whose
        class lies elsewhere has the block's first class excluded by the kernel and added back exactly
        (``logaddexp``) from the logits the kernel returns for it.
        """
        owned, local = self.owned(labels)
        lse, excluded = class_logsumexp(x, rows, logit_map, exclude=local, group=group, chunk_size=chunk_size)
        assert excluded is not None  # returned with exclude=
        back = excluded[:, 0] if group == 1 else torch.logsumexp(excluded, dim=1)
        lse = torch.where(owned, lse, torch.logaddexp(lse, back))
        own = torch.where(owned.unsqueeze(1), excluded, torch.zeros_like(excluded))
        return self.logsumexp(lse), self.sum(own)

    def batch_logsumexp(
        self,
        x: torch.Tensor,
        rows: torch.Tensor,
        logit_map: LogitMap,
        labels: torch.Tensor,
        *,
        add_zero: bool = False,
        chunk_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Proxy-type terms of this block: ``(lse, own, owned, local)``.

        ``lse`` (size,): per row of the block, the log-sum-exp over the batch of ``logit_map(x, rows)`` leaving out
        the samples of that row's class (``add_zero``: with an implicit logit 0); ``own`` (B,): each sample's logit
        against its class's row (meaningful where ``owned``); ``owned``/``local`` as :meth:`owned`. Per-row terms are
        combined with :meth:`cat`, per-sample ones with :meth:`sum`.
        """
        owned, local = self.owned(labels)
        lse, excluded = class_logsumexp(
            x, rows, logit_map, dim=0, exclude=local, add_zero=add_zero, chunk_size=chunk_size
        )
        assert excluded is not None  # returned with exclude=
        own = excluded[:, 0]
        others = (~owned).nonzero().squeeze(1)
        if others.numel():  # the kernel left those samples out of the block's first row: add them back, exactly
            first = torch.logaddexp(lse[:1], torch.logsumexp(own[others], dim=0, keepdim=True))
            lse = torch.cat([first, lse[1:]])
        return lse, own, owned, local


# -- the wrapper ------------------------------------------------------------------------------------------------


class ClassParallelLoss(WrappedLoss):
    """Run an :class:`~pml_anchors.losses.AnchorLoss` with its anchors sharded over the processes of a group.

    Use inside an initialised process group (gloo on CPU, NCCL on GPU), the model in DDP and the loss not::

        loss = ClassParallelLoss(pml_anchors.get_loss("c_ncm", 1_000_000, 128))  # keeps rows of this rank only
        value = loss(ddp_model(x), y)  # the loss of the global batch, the same on every rank
        value.backward()               # model gradient as one process; this block's anchor gradient, complete

    The wrapped loss is changed in place: its ``anchors`` become this process's block of rows
    (:func:`block_bounds`; uneven blocks when the rows do not divide), bit-identical to those rows of the full set;
    learnable anchors become a fresh local ``nn.Parameter`` (not to be wrapped in DDP: build the optimiser after this
    wrapper, each process then keeps its block's optimiser state; name-based learning-rate multipliers,
    ``param_groups(wrapper.loss, lr, spec)``, use the wrapped loss's names). The full set is built once before sharding (the
    initialiser's peak; see ``docs/class_parallel.md``). Per-rank batches may differ in size (and be empty).

    Supported: methods implementing :meth:`~pml_anchors.losses.AnchorLoss.class_parallel_losses` (e_ncm, c_ncm,
    reponet, fsc, proxy_anchor). A ``ValueError`` for no process group, another method, ``weight_regularizer`` or
    ``embedding_regularizer``; ``indices_tuple``/``ref_emb`` in ``forward`` are refused likewise. Inputs that fail
    the loss's checks on one process raise there and, as a ``ValueError`` naming it, on every other one.
    Attribute access falls through to the wrapped loss.

    :param loss: the loss, built with the full number of classes.
    :param group: the process group (``None``: the default one).
    """

    def __init__(self, loss: torch.nn.Module, group: Any = None):
        super().__init__()
        if not isinstance(loss, AnchorLoss):
            raise TypeError(
                f"ClassParallelLoss wraps a pml_anchors AnchorLoss (e.g. pml_anchors.get_loss('c_ncm', K, d)), got "
                f"{type(loss).__name__}"
            )
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "ClassParallelLoss needs an initialised torch.distributed process group (torch.distributed."
                "init_process_group, e.g. under torchrun); without one use the loss itself"
            )
        if not supports_class_parallel(loss):
            raise ValueError(
                f"{type(loss).__name__} does not support class-parallel training: it does not implement "
                "AnchorLoss.class_parallel_losses (supported: e_ncm, c_ncm, reponet, fsc, proxy_anchor and methods "
                "built the same way)"
            )
        for name in ("weight_regularizer", "embedding_regularizer"):
            if getattr(loss, name, None) is not None:
                raise ValueError(
                    f"ClassParallelLoss does not support {name}: it would be computed on one block (or the "
                    "replicated batch) only; train without it"
                )
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        full = loss.anchors
        self.num_rows = int(full.shape[0])
        self.bounds = block_bounds(self.num_rows, self.world_size)
        self.start, self.stop = self.bounds[self.rank]
        block = shard_anchors(full, self.rank, self.world_size)
        learnable = isinstance(full, torch.nn.Parameter)
        del loss.anchors, full
        with torch.inference_mode(False):
            if learnable:
                loss.anchors = torch.nn.Parameter(block)
            else:
                loss.register_buffer("anchors", block, persistent=True)
        loss.clear_anchor_cache()
        self.loss = loss

    @property
    def shard(self) -> ClassShard:
        """This process's :class:`ClassShard`."""
        return ClassShard(self.start, self.stop, self.num_rows, self.group)

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        """The loss of the global batch (the concatenation of every process's ``embeddings``, in rank order), the
        same value on every process; the local embeddings' gradient is multiplied by the world size (for DDP)."""
        if indices_tuple is not None or ref_emb is not None or ref_labels is not None:
            raise ValueError("ClassParallelLoss supports (embeddings, labels) only: no indices_tuple or ref_emb")
        loss = self.loss
        self._validate_everywhere(embeddings, labels)
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()  # as AnchorLoss.forward: computed and returned in float32
        labels = labels.to(embeddings.device)
        x = _GatherBatch.apply(embeddings, self.group, float(self.world_size))
        y = torch.cat(_gather_padded(labels.long(), self.group, self.world_size))
        loss.reset_stats()
        if x.shape[0] == 0:
            return loss.reducer(loss.zero_losses(), x, y)
        anchors = loss.cached_anchors("cast", x, lambda a: a)
        weights = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        loss_dict = loss.class_parallel_losses(x, y, anchors, weights, self.shard)
        return loss.reducer(loss_dict, x, y)

    def _validate_everywhere(self, embeddings: Any, labels: Any) -> None:
        """The wrapped loss's input checks on this process's batch, agreed by all: a process whose batch fails raises
        its own error and every other one a ``ValueError`` naming it, instead of waiting in the next collective."""
        error: Exception | None = None
        try:
            self.loss.validate_inputs(embeddings, labels)
        except (TypeError, ValueError) as caught:
            error = caught
        device = torch.device("cpu")
        if dist.get_backend(self.group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        failed = torch.zeros(self.world_size, dtype=torch.int32, device=device)
        failed[self.rank] = error is not None
        dist.all_reduce(failed, op=dist.ReduceOp.SUM, group=self.group)
        if error is not None:
            raise error
        bad = failed.nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"the inputs of process(es) {bad} of the group failed ClassParallelLoss's checks (their error says "
                "which); every process stops at this step"
            )

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def full_state_dict(self, dst: int | None = None) -> dict[str, Any] | None:
        """The wrapped loss's ``state_dict`` with the full anchor set gathered from every process (a collective:
        every process calls it; all get the same dict, or with ``dst`` only that rank of the group, the others
        ``None``, e.g. rank 0 that writes the checkpoint). Loads into the plain loss (``eval``, ``load_trained``)
        and, through :meth:`load_full_state_dict`, into a class-parallel one at any world size."""
        full = gather_anchors(self.loss.anchors, self.group, dst)
        if full is None:
            return None
        state = self.loss.state_dict()
        state["anchors"] = full
        return state

    def load_full_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> Any:
        """Load a plain loss's (or :meth:`full_state_dict`'s) ``state_dict``: this process keeps its block of the
        full anchors. A ``ValueError`` if they do not have this loss's rows."""
        state = dict(state)
        full = state.get("anchors")
        if full is None and strict:
            raise ValueError("the state_dict has no 'anchors' to shard")
        if full is not None:
            if int(full.shape[0]) != self.num_rows or tuple(full.shape[1:]) != tuple(self.loss.anchors.shape[1:]):
                raise ValueError(
                    f"checkpoint anchors have shape {tuple(full.shape)}, but this class-parallel "
                    f"{type(self.loss).__name__} has {self.num_rows} rows of shape {tuple(self.loss.anchors.shape[1:])}"
                )
            state["anchors"] = shard_anchors(full, self.rank, self.world_size)
        return self.loss.load_state_dict(state, strict=strict)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, world_size={self.world_size}, rows=[{self.start}, {self.stop}) of {self.num_rows}"
