"""Per-process peak memory of a class-parallel loss step (:class:`pml_anchors.losses.class_parallel.ClassParallelLoss`)
at N = 1, 2, 4 gloo processes on the CPU.

Usage::

    python benchmarks/class_parallel_memory.py                          # C = 1M, d = 128, B = 256 x N, N = 1, 2, 4
    python benchmarks/class_parallel_memory.py --classes 4000000 --worlds 4   # C = 4M on 4 processes
    python benchmarks/class_parallel_memory.py --chunk-size 0           # unchunked logits (B x N x C / N each)
    python benchmarks/class_parallel_memory.py --quick                  # C = 20k: about a minute (process starts)
    python benchmarks/class_parallel_memory.py --json out.json          # also write machine-readable results
    python benchmarks/class_parallel_memory.py --overhead               # step time: wrapper on 1 process vs plain loss
    python benchmarks/class_parallel_memory.py --overhead --device cuda # the same on a GPU (NCCL group of one)

What is measured
----------------
For each method (``--methods``, default ``c_ncm`` (fixed anchors) and ``proxy_anchor`` (learnable)) and each world
size N, N gloo processes each build ``pml_anchors.get_loss(method, C, d, anchors=..., chunk_size=...)`` and wrap it
in ``ClassParallelLoss``, which keeps rows ``[C r / N, C (r + 1) / N)`` (``block_bounds``). The processes build the
full anchor set one after the other (``--parallel-init`` all at once), so that the machine holds one full set at a
time; ``init peak`` is a process's RSS high-water mark (``VmHWM``, torch's allocations included) through that
construction: the initialiser's full C x d draw (``kaiming_normal`` draws in float64) before the block is cut out.
Then the mark is reset (``/proc/self/clear_refs``) and one **loss step** runs on every process:
``loss(embeddings, labels).backward()`` with B = ``--batch`` (256) standard normal embeddings per process
(``requires_grad=True``, so the global batch is B x N) and uniform labels in [0, C). ``before step`` is the RSS
after construction (torch itself plus the block of anchors), ``step peak`` the high-water mark through forward and
backward, ``step +`` their difference: the gathered batch, the logits of one chunk of the block (``--chunk-size``
rows, default 8192: B N x 8192 floats; 0 = the whole block, B N x C / N = B x C floats whatever N), the anchors'
gradient (learnable: C / N x d) and the cached transforms of fixed anchors. Each column is the maximum over the
processes. ``+ Adam step`` is the high-water mark once a ``torch.optim.Adam`` step has also run on the learnable
anchors (its two C / N x d states; the same as ``step peak`` for fixed anchors), and ``all processes`` the sum of
that over the processes: what the machine holds for a training step, torch included.

``step peak - torch`` is the high-water mark above the RSS of the process once torch is imported and the
process group is up (``torch`` in the JSON): what the loss holds at its peak. The processes run with
``MALLOC_MMAP_THRESHOLD_=1048576`` (unless set): with glibc's default dynamic threshold, freed logit chunks stay in
the heap and the RSS mark varies by up to a GB from run to run for the same live tensors.

``--overhead`` instead times, in one process (a group of one: gloo on the CPU, NCCL on CUDA), one loss step of
every method (``--overhead-methods``) as the plain loss and wrapped in ``ClassParallelLoss`` at C = 100k
(``--overhead-classes``), d = 128, B = 256, interleaved over ``--repeats`` rounds (median ms): the cost of the
class-parallel kernel itself (the exclusion correction, the combining collectives, the gathers) on one rank.

``N = 1`` runs the same wrapper in a one-process group (the same kernel as the plain loss). Timings are printed
for orientation only: the N processes share the machine's cores (``--threads`` each, default 1).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _memory import reset_peak, status_mb

#: per-method options: RePoNet's margin given (``"auto"`` would measure the min angle of C custom rows, O(C^2 d))
EXTRA: dict[str, dict[str, Any]] = {"reponet": {"margin": 0.5, "scale": 30.0}}


def loss_options(method: str, anchors: str, chunk: int | None) -> dict[str, Any]:
    """``get_loss`` options: ``anchors`` for every method but F-SC (its (C, s, d) sub-centres keep their default)."""
    options: dict[str, Any] = {"chunk_size": chunk, **EXTRA.get(method, {})}
    if method != "fsc":
        options["anchors"] = anchors
    return options


def worker(rank: int, world: int, port: int, cfg: dict[str, Any], out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    import pml_anchors
    from pml_anchors.losses.class_parallel import ClassParallelLoss

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(cfg["threads"])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=3600))
    try:
        c, d = cfg["classes"], cfg["dim"]
        chunk = cfg["chunk_size"] or None
        start_rss = status_mb("VmRSS")
        t0 = time.perf_counter()
        for turn in range(world):  # one full anchor set at a time on the machine (unless --parallel-init)
            if cfg["parallel_init"] or turn == rank:
                loss = ClassParallelLoss(
                    pml_anchors.get_loss(cfg["method"], c, d, **loss_options(cfg["method"], cfg["anchors"], chunk))
                )
            if not cfg["parallel_init"]:
                dist.barrier()
        init_s = time.perf_counter() - t0
        init_peak = status_mb("VmHWM")
        g = torch.Generator().manual_seed(rank + 1)
        emb = torch.randn(cfg["batch"], d, generator=g, requires_grad=True)
        labels = torch.randint(0, c, (cfg["batch"],), generator=g)
        dist.barrier()
        reset_peak()
        before = status_mb("VmRSS")
        t0 = time.perf_counter()
        value = loss(emb, labels)
        value.backward()
        step_s = time.perf_counter() - t0
        peak = status_mb("VmHWM")
        params = [p for p in loss.parameters() if p.requires_grad]
        if params:  # learnable anchors: one Adam step on this block (its two C / N x d states)
            torch.optim.Adam(params, lr=1e-3).step()
        adam_peak = status_mb("VmHWM")
        block = loss.anchors
        result = {
            "rank": rank,
            "rows": loss.stop - loss.start,
            "anchors_mb": block.numel() * block.element_size() / 2**20,
            "start_mb": start_rss,
            "init_peak_mb": init_peak,
            "init_s": init_s,
            "before_mb": before,
            "peak_mb": peak,
            "step_extra_mb": peak - before,
            "adam_peak_mb": adam_peak,
            "step_s": step_s,
            "loss": float(value.detach()),
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def overhead(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Median step time of each method, plain and wrapped in ``ClassParallelLoss`` on a group of one process."""
    import statistics

    import torch
    import torch.distributed as dist

    import pml_anchors
    from pml_anchors.losses.class_parallel import ClassParallelLoss

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    c, d, b = int(args.overhead_classes), args.dim, args.batch
    chunk = args.chunk_size or None
    rows = []

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    try:
        for method in args.overhead_methods.split(","):
            losses = {
                kind: pml_anchors.get_loss(method, c, d, **loss_options(method, args.anchors, chunk)).to(device)
                for kind in ("plain", "class_parallel")
            }
            losses["class_parallel"] = ClassParallelLoss(losses["class_parallel"])
            g = torch.Generator().manual_seed(1)
            emb = torch.randn(b, d, generator=g).to(device).requires_grad_(True)
            labels = torch.randint(0, c, (b,), generator=g).to(device)
            times: dict[str, list[float]] = {kind: [] for kind in losses}
            values = {}
            for r in range(args.repeats + 1):  # round 0 warms up (caches, kernels)
                order = list(losses) if r % 2 else list(losses)[::-1]
                for kind in order:
                    emb.grad = None
                    sync()
                    t0 = time.perf_counter()
                    value = losses[kind](emb, labels)
                    value.backward()
                    sync()
                    if r:
                        times[kind].append(time.perf_counter() - t0)
                    values[kind] = float(value.detach())
            plain, wrapped = (statistics.median(times[k]) * 1e3 for k in ("plain", "class_parallel"))
            row = {"method": method, "classes": c, "plain_ms": plain, "class_parallel_ms": wrapped}
            row.update(ratio=wrapped / plain, value_diff=abs(values["plain"] - values["class_parallel"]))
            rows.append(row)
            print(
                f"| {method} | {c:,} | {plain:.1f} | {wrapped:.1f} | {wrapped / plain:.3f} | {row['value_diff']:.1e} |",
                flush=True,
            )
    finally:
        dist.destroy_process_group()
    return rows


def run(cfg: dict[str, Any], world: int) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        start = time.perf_counter()
        mp.spawn(worker, args=(world, port, cfg, out), nprocs=world, join=True)
        ranks = [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(world)]
    row: dict[str, Any] = {"method": cfg["method"], "classes": cfg["classes"], "world": world}
    row["chunk_size"] = cfg["chunk_size"]
    for key in ("rows", "anchors_mb", "init_peak_mb", "before_mb", "peak_mb", "step_extra_mb", "step_s", "init_s"):
        row[key] = max(r[key] for r in ranks)
    row["torch_mb"] = max(r["start_mb"] for r in ranks)
    row["held_mb"] = max(r["peak_mb"] - r["start_mb"] for r in ranks)
    row["adam_peak_mb"] = max(r["adam_peak_mb"] for r in ranks)
    row["machine_mb"] = sum(r["adam_peak_mb"] for r in ranks)
    row["losses"] = sorted({round(r["loss"], 6) for r in ranks})
    row["wall_s"] = time.perf_counter() - start
    return row


def fmt(row: dict[str, Any]) -> str:
    chunk = f"{row['chunk_size']:,}" if row["chunk_size"] else "none"
    return (
        f"| {row['method']} | {row['classes']:,} | {row['world']} | {chunk} | {row['rows']:,} | "
        f"{row['anchors_mb']:,.0f} | {row['init_peak_mb']:,.0f} | {row['before_mb']:,.0f} | {row['peak_mb']:,.0f} | "
        f"{row['step_extra_mb']:,.0f} | {row['held_mb']:,.0f} | {row['adam_peak_mb']:,.0f} | {row['machine_mb']:,.0f} | "
        f"{row['step_s']:.1f} | {row['losses'][0]:.6g} |"
    )


HEADER = (
    "| method | C | N | chunk | rows / process | anchors MB | init peak MB | before step MB | step peak MB | "
    "step + MB | step peak - torch MB | + Adam step MB | all processes MB | step s | loss |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=float, default=1e6, help="number of classes C (default 1e6)")
    parser.add_argument("--dim", type=int, default=128, help="embedding width d (default 128)")
    parser.add_argument("--batch", type=int, default=256, help="samples per process (default 256)")
    parser.add_argument("--worlds", default="1,2,4", help="process counts N, comma-separated (default 1,2,4)")
    parser.add_argument("--methods", default="c_ncm,proxy_anchor", help="methods, comma-separated")
    parser.add_argument("--anchors", default="kaiming_normal", help="initializer of every method (kaiming_normal)")
    parser.add_argument("--chunk-size", type=int, default=8192, help="rows per logit chunk; 0: unchunked (8192)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--parallel-init", action="store_true", help="build every process's anchors at once")
    parser.add_argument("--quick", action="store_true", help="C = 20000 (about a minute, mostly process starts)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    parser.add_argument("--overhead", action="store_true", help="time the wrapper on one process against the loss")
    parser.add_argument("--overhead-classes", type=float, default=1e5, help="C of --overhead (default 1e5)")
    parser.add_argument(
        "--overhead-methods", default="e_ncm,c_ncm,reponet,fsc,proxy_anchor", help="methods of --overhead"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of --overhead (default 5)")
    parser.add_argument("--device", default="cpu", help="device of --overhead (cpu or cuda)")
    args = parser.parse_args()
    if args.overhead:
        print(f"# {platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
        print("| method | C | plain ms | class-parallel ms | ratio | value diff |\n|---|---|---|---|---|---|")
        result = overhead(args)
        print(f"# load {os.getloadavg()[0]:.1f}", file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return
    # glibc's dynamic mmap threshold would keep freed chunk buffers in the heap (RSS that no tensor holds, varying
    # from run to run); a fixed threshold returns every buffer of 1 MiB or more to the system when freed. Read by the
    # processes spawned below when they start.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(2**20))
    cfg_base = {
        "classes": 20000 if args.quick else int(args.classes),
        "dim": args.dim,
        "batch": args.batch,
        "anchors": args.anchors,
        "chunk_size": args.chunk_size,
        "threads": args.threads,
        "parallel_init": args.parallel_init,
    }
    print(f"# {platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    print(HEADER, flush=True)
    rows = []
    for method in args.methods.split(","):
        for world in (int(n) for n in args.worlds.split(",")):
            row = run({**cfg_base, "method": method}, world)
            rows.append(row)
            print(fmt(row), flush=True)
    print(f"# load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
