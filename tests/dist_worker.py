"""Worker for the 2-process gloo tests (importable by spawned children: tests/ is on sys.path)."""

import os

import torch
import torch.distributed as dist


def make_problem(loss_factory, seed=0, batch=12, in_features=6, width=8):
    """Model, loss and a global batch, identical in every process."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(in_features, width).double()
    loss = loss_factory().double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, in_features, generator=g, dtype=torch.float64)
    y = torch.arange(batch) % 4
    return model, loss, x, y


def grads(model, loss):
    out = {f"model.{n}": p.grad.clone() for n, p in model.named_parameters()}
    out.update({f"loss.{n}": p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None})
    return out


def single_process(loss_factory, **kw):
    model, loss, x, y = make_problem(loss_factory, **kw)
    value = loss(model(x), y)
    value.backward()
    return {"value": value.detach(), **grads(model, loss)}


def worker(rank, world, port, loss_factory, wrapper, out_dir, uneven, kw):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, loss, x, y = make_problem(loss_factory, **kw)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        wrapped = wrapper(loss)
        cuts = torch.linspace(0, len(x), world + 1).long().tolist()
        if uneven:  # rank 0 gets one sample more than an even split
            cuts[1] += 1
        lo, hi = cuts[rank], cuts[rank + 1]
        value = wrapped(ddp(x[lo:hi]), y[lo:hi])
        value.backward()
        anchors = getattr(loss, "anchors", getattr(loss, "proxies", None))
        gathered = [torch.zeros_like(anchors) for _ in range(world)] if anchors is not None else None
        if gathered is not None:
            dist.all_gather(gathered, anchors.detach().contiguous())
        torch.save(
            {"value": value.detach(), **grads(model, loss), "all_anchors": gathered},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def run_distributed(loss_factory, wrapper, out_dir, world=2, uneven=True, **kw):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(world, port, loss_factory, wrapper, str(out_dir), uneven, kw), nprocs=world, join=True)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]
