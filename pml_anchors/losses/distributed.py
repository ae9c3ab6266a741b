"""Exact distributed training for anchor/proxy losses (torch.distributed + DDP).

:class:`DistributedLoss` gathers embeddings and labels from every rank so the wrapped loss sees the
global batch, and gets every gradient right:

* **model gradients**: the local embeddings' gradient is scaled by ``world_size`` in backward, which
  cancels DDP's averaging, so the model gets exactly the gradient of single-process training on
  the concatenated batch;
* **learnable anchors**: every rank computes the same loss on the same global batch, so each
  rank's anchor gradient already *is* the single-process gradient. Nothing is multiplied, and the
  returned loss value is the global-batch loss itself.

PML's ``DistributedLossWrapper`` instead multiplies the loss by ``world_size`` to fix the model
gradient, which also multiplies the proxies' gradient (and the reported loss) by ``world_size``
(``docs/distributed.md``; measured in ``tests/test_distributed.py``).

Fixed anchors are built from a seed (default 0) and so are identical on every rank without any
communication; DDP also broadcasts buffers from rank 0 if the loss itself is wrapped in DDP.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class _ScaleGradient(torch.autograd.Function):
    """Identity in forward; multiplies the gradient by ``factor`` in backward."""

    @staticmethod
    def forward(ctx, tensor, factor):
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_variable(tensor: torch.Tensor) -> list[torch.Tensor]:
    """``all_gather`` for tensors whose first dimension differs between ranks (no gradient)."""
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    gathered_sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(gathered_sizes, size)
    sizes = [int(s) for s in gathered_sizes]
    longest = max(sizes)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    return [g[:n] for g, n in zip(gathered, sizes)]


class WrappedLoss(torch.nn.Module):
    """A module around a loss (``self.loss``) whose attributes fall through to it (``anchors``, ``predict``, ...)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("loss"), name)


class DistributedLoss(WrappedLoss):
    """Wrap a PML loss so each rank computes it on the global batch (gathered across ranks).

    Use inside an initialised process group (gloo on CPU, NCCL on GPU) with the model in DDP::

        loss = DistributedLoss(pml_anchors.get_loss("proxy_anchor", 100, 128))
        value = loss(ddp_model(x), y)     # same value on every rank
        value.backward()                  # model and proxy gradients as on one process

    Without an initialised group (or with one process) it simply calls the wrapped loss.
    Attribute access falls through to the wrapped loss (``anchors``, ``predict``, ...).
    ``indices_tuple``/``ref_emb`` are not supported (these methods are miner-free).
    """

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        if not isinstance(loss, torch.nn.Module):
            raise TypeError(f"DistributedLoss wraps a torch.nn.Module loss, got {type(loss).__name__}")
        self.loss = loss

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        if indices_tuple is not None or ref_emb is not None or ref_labels is not None:
            raise ValueError("DistributedLoss supports (embeddings, labels) only: no indices_tuple or ref_emb")
        if not is_distributed():
            return self.loss(embeddings, labels)
        if not torch.is_tensor(embeddings) or not torch.is_tensor(labels):
            raise TypeError("DistributedLoss needs tensor embeddings and labels")
        labels = labels.to(embeddings.device)
        rank, world = dist.get_rank(), dist.get_world_size()
        all_embeddings = all_gather_variable(embeddings.detach())
        all_labels = all_gather_variable(labels)
        all_embeddings[rank] = _ScaleGradient.apply(embeddings, float(world))
        all_labels[rank] = labels
        return self.loss(torch.cat(all_embeddings), torch.cat(all_labels))
