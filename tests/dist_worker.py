"""Worker for the 2-process gloo tests (importable by spawned children: tests/ is on sys.path).

Spawning a process group costs tens of seconds here, so :func:`run_distributed` runs many *jobs* (a loss
factory, a wrapper and whether the shards are uneven) inside one spawn and returns every rank's results
per job.
"""

import datetime
import gc
import os
import sys
import traceback

import torch
import torch.distributed as dist


def make_problem(loss_factory, seed=0, batch=12, in_features=6, width=8):
    """Model, loss and a global batch, identical in every process (float64).

    The model's output width is the loss's ``embedding_size`` when it has one (methods with a forced width).
    """
    loss = loss_factory().double()
    width = getattr(loss, "embedding_size", None) or width
    torch.manual_seed(seed)
    model = torch.nn.Linear(in_features, width).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, in_features, generator=g, dtype=torch.float64)
    y = torch.arange(batch) % 4
    return model, loss, x, y


def grads(model, loss):
    out = {f"model.{n}": p.grad.clone() for n, p in model.named_parameters()}
    out.update({f"loss.{n}": p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None})
    return out


def anchors_of(loss):
    anchors = getattr(loss, "anchors", None)
    return getattr(loss, "proxies", None) if anchors is None else anchors


def single_process(loss_factory, **kw):
    model, loss, x, y = make_problem(loss_factory, **kw)
    value = loss(model(x), y)
    value.backward()
    anchors = anchors_of(loss)
    return {"value": value.detach(), **grads(model, loss), "anchors": None if anchors is None else anchors.detach()}


def _run_job(rank, world, loss_factory, wrapper, uneven, kw):
    model, loss, x, y = make_problem(loss_factory, **kw)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    wrapped = wrapper(loss)
    cuts = torch.linspace(0, len(x), world + 1).long().tolist()
    if uneven:  # rank 0 gets one sample more than an even split
        cuts[1] += 1
    lo, hi = cuts[rank], cuts[rank + 1]
    value = wrapped(ddp(x[lo:hi]), y[lo:hi])
    value.backward()
    anchors = anchors_of(loss)
    gathered = None
    if anchors is not None:  # the anchors every rank holds after the step (fixed ones must agree)
        gathered = [torch.zeros_like(anchors) for _ in range(world)]
        dist.all_gather(gathered, anchors.detach().contiguous())
    return {"value": value.detach(), **grads(model, loss), "all_anchors": gathered, "shard": hi - lo}


def worker(rank, world, port, jobs, out_dir, kw):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    # A job failing on one rank only would leave the other waiting in a collective: time out instead of hanging.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        results = {}
        for key, (loss_factory, wrapper, uneven) in jobs.items():
            try:
                results[key] = _run_job(rank, world, loss_factory, wrapper, uneven, kw)
            except Exception:  # noqa: BLE001 - reported by the test of that job, the other jobs still run
                results[key] = {"error": traceback.format_exc()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        results = {}
        leave_process_group()
    exit_saved()


def leave_process_group() -> None:
    """Collect what the jobs made (DDP models, subgroups) while the process group is whole, then destroy it."""
    gc.collect()
    dist.destroy_process_group()


def exit_saved() -> None:
    """End a spawned worker whose results are saved without the interpreter's teardown, where gloo's threads can abort
    the process (SIGABRT, "terminate called without an active exception", seen on a busy 2-core machine)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(jobs, out_dir, world=2, **kw):
    """Run ``jobs`` (``{key: (loss_factory, wrapper, uneven)}``) in one spawn of ``world`` gloo processes.

    Returns ``{key: [rank 0 result, rank 1 result, ...]}``; a job that raised has ``{"error": traceback}``.
    """
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(world, port, jobs, str(out_dir), kw), nprocs=world, join=True)
    per_rank = [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]
    return {key: [ranks[key] for ranks in per_rank] for key in jobs}
