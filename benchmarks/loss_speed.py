"""Forward + backward time and peak memory of every registered loss against one GEMM + cross-entropy.

Usage::

    python benchmarks/loss_speed.py                       # B=256, d in {128, 512}, C in {100, 1k, 10k, 100k}
    python benchmarks/loss_speed.py --quick               # tiny grid, CI smoke (a few seconds)
    python benchmarks/loss_speed.py --sizes 128x10000,128x100000 --methods proxy_anchor,ProxyAnchorLoss
    python benchmarks/loss_speed.py --json out.json       # also write machine-readable results
    python benchmarks/loss_speed.py --json -              # JSON on stdout, the table on stderr
    python benchmarks/loss_speed.py --device cuda         # same on a GPU (CUDA events, max_memory_allocated)
    python benchmarks/loss_speed.py --compile reduce-overhead  # also each method as torch.compile(loss, mode=...)
    python benchmarks/loss_speed.py --lse-path kernel     # small linear/cosine log-sum-exps on the hand-written kernel

What is timed
-------------
One *step* is ``loss(embeddings, labels)`` followed by ``.backward()``: a forward and a backward pass of the
loss alone, on ``embeddings`` (B x d, ``requires_grad=True``, standard normal, seeded) and uniformly random
labels in ``[0, C)``. Gradients are cleared (set to ``None``) between steps, outside the timed region.

The **floor** is the cheapest loss that touches every class: one (B x d) @ (d x C) product and a softmax
cross-entropy over its result, forward and backward::

    logits = embeddings @ weight.T            # embeddings: B x d, requires_grad
    F.cross_entropy(logits, labels).backward()  # weight: C x d, standard normal

It comes in three variants, all measured in the same run as the losses:

* ``floor`` -- ``weight`` fixed (``requires_grad=False``): two GEMMs (forward, d embeddings). The reference
  for the methods with **fixed** anchors (``e_ncm``, ``c_ncm``, ``reponet``) and for PML's losses run with
  frozen weights.
* ``floor_w`` -- ``weight`` learnable (``requires_grad=True``): three GEMMs (also d weight). The reference
  for the methods with **learnable** anchors (``proxy_anchor``, ``cam``) and PML's ``ProxyAnchorLoss``.
* ``floor_cs`` -- ``floor`` with ``weight`` of C*s rows (s = 4 sub-centres per class, fixed): the reference
  of ``fsc`` (F-SC, C*s sub-classes) and of PML's ``SoftTripleLoss`` (``centers_per_class=4``, frozen).

Which floor a loss gets is read off the built loss object, not its name (``floor_of``), so a plugin's method is
matched the same way: anchors of shape (C, s, d) or PML's ``centers_per_class > 1`` -> ``floor_cs``; any
parameter with ``requires_grad`` (learnable anchors, proxies or classifier weights) -> ``floor_w``; else ``floor``.
Only the floors that the selected losses need (and ``floor``) are run.

Ratios ``x floor`` are time / time of the matching floor, and ``x PML`` is time / time of the PML loss doing
the same job (``proxy_anchor`` - ``ProxyAnchorLoss``; ``reponet`` - ``ArcFaceLoss``; ``c_ncm`` and
``e_ncm`` - ``NormalizedSoftmaxLoss``; ``fsc`` - ``SoftTripleLoss``; ``cam`` has none; it has no B x C matrix at all and its timed steps run on an up-to-date neighbour list, see
``1st call ms`` for the build). PML's classifier
weights are frozen when the paired method's anchors are fixed (RePoNet *is* ArcFace on a frozen polytope
classifier), and learnable for ``ProxyAnchorLoss``. Method-specific settings (say which in the table's
``setup`` column): ``reponet`` with ``anchors="spread"`` (C unit rows in d dimensions, so any d fits;
the polytopes force d = C - 1, ceil(C/2) or ceil(log2 C)), ``margin=0.5`` rad (~28.6 deg, ArcFace's default)
and ``scale=30``; ``fsc`` with s = 4; everything else at its registered defaults.

How it is timed
---------------
Every loss of one size is built once; then ``--warmup`` untimed steps each (at least one; the first, "cold"
one is reported as ``1st call ms``: it fills the fixed anchors' caches and builds CAM's neighbour list,
an O(C^2 d) search), then ``--repeats`` rounds. A
round times one step of *every* loss, in an order rotated from round to round, so that machine-load noise
hits all of them alike; the table reports the **median** over rounds (``spread`` in the JSON: the
interquartile range). On CPU a step is timed with ``time.perf_counter``; on CUDA with CUDA events around the
step and a ``torch.cuda.synchronize()`` after it. ``--threads`` sets ``torch.set_num_threads`` (default:
torch's choice) for the whole run.

Peak memory
-----------
``peak`` is the largest number of bytes allocated during one step above what was allocated before it
(gradients that the step creates count; tensors freed before the step ends count only while alive). On CUDA
it is ``torch.cuda.max_memory_allocated() - memory_allocated()`` after ``reset_peak_memory_stats()``. On CPU
torch has no allocator statistics, so the step runs once more under ``torch.profiler.profile(
profile_memory=True)``, which records every allocation and free of torch's CPU allocator with its size and
time stamp; ``peak`` is the maximum of the running sum of those signed sizes (this is what
``torch.profiler``'s memory timeline does; allocations outside torch, e.g. by BLAS workspaces, are not
seen). ``/BC4`` is peak / (B * C * 4 bytes), i.e. in units of one float32 B x C matrix. The profiled step
is separate from the timed ones. The profiler's native backend (Kineto) writes ``USDT: ... profiler_start`` /
``profiler_stop`` lines, and on a machine without a GPU one ``ERROR: ... gpuGetDeviceCount failed with code 35``,
straight to file descriptor 2; the script points that descriptor at /dev/null while the profiler runs, so they
do not mix into the table. They are harmless: nothing is measured on a GPU.

PML parity
----------
For ``proxy_anchor`` the script also checks that it computes what PML's ``ProxyAnchorLoss`` computes: same
proxies, same inputs, the relative difference of the loss values and the largest gradient difference
(embeddings and proxies) relative to the largest gradient entry are reported in the ``parity`` column.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from _bench_common import (
    add_common_args,
    add_lse_path_arg,
    rotated,
    run_meta,
    set_lse_path,
    setup_device,
    sync,
    write_results,
)

BATCH = 256
SUB_CENTERS = 4
DEFAULT_DIMS = (128, 512)
DEFAULT_CLASSES = (100, 1_000, 10_000, 100_000)
QUICK_SIZES = ((32, 100), (32, 1_000))

#: PML loss doing the same job as each method (time ratio ``x PML``).
PML_PAIRS = {
    "proxy_anchor": "ProxyAnchorLoss",
    "reponet": "ArcFaceLoss",
    "c_ncm": "NormalizedSoftmaxLoss",
    "e_ncm": "NormalizedSoftmaxLoss",
    "fsc": "SoftTripleLoss",
}
PML_LOSSES = ("ProxyAnchorLoss", "ArcFaceLoss", "NormalizedSoftmaxLoss", "SoftTripleLoss")
FLOORS = ("floor", "floor_w", "floor_cs")
METHOD_KWARGS = {
    "reponet": ({"anchors": "spread", "margin": 0.5, "scale": 30.0}, "anchors=spread, m=0.5 rad, s=30"),
    "fsc": ({"sub_centers": SUB_CENTERS}, f"s={SUB_CENTERS}"),
}


@dataclass
class Contestant:
    """One loss (or floor) of one size, with its own inputs so that gradients never mix."""

    name: str
    kind: str  # "floor", "method" or "pml"
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    embeddings: torch.Tensor
    labels: torch.Tensor
    params: list[torch.Tensor] = field(default_factory=list)
    setup: str = ""
    module: Any = None
    floor: str | None = None  # the floor it is compared with (None for the floors themselves)

    def reset(self) -> None:
        self.embeddings.grad = None
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.fn(self.embeddings, self.labels).backward()


# -- building the contestants -------------------------------------------------------------------------------


def floor_of(loss: torch.nn.Module) -> str:
    """The floor a loss is compared with, read off the loss object (not its name), so that plugins fit too.

    * ``"floor_cs"`` for sub-centre losses, whose class scores come from C*s rows: anchors of shape
      (C, s, d) (``fsc``) or PML's ``centers_per_class > 1`` (``SoftTripleLoss``);
    * ``"floor_w"`` when any of the loss's parameters requires grad: learnable anchors (``proxy_anchor``,
      ``cam``, a plugin's learnable centres) or PML's learnable proxies / classifier weights;
    * ``"floor"`` otherwise (fixed anchors, frozen weights).
    """
    anchors = getattr(loss, "anchors", None)
    if (isinstance(anchors, torch.Tensor) and anchors.dim() == 3) or getattr(loss, "centers_per_class", 1) > 1:
        return "floor_cs"
    learnable = getattr(loss, "learnable", False) is True
    if learnable or any(p.requires_grad for p in loss.parameters()):
        return "floor_w"
    return "floor"


def _inputs(batch: int, d: int, c: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d, generator=gen)
    y = torch.randint(0, c, (batch,), generator=gen)
    return x.to(device), y.to(device)


def _floor(name: str, x: torch.Tensor, y: torch.Tensor, rows: int, learnable: bool, seed: int) -> Contestant:
    gen = torch.Generator().manual_seed(seed + 1)
    weight = torch.randn(rows, x.shape[1], generator=gen).to(x.device).requires_grad_(learnable)
    if rows != int(y.max()) + 1 and name == "floor_cs":
        y = y * SUB_CENTERS  # a label among the C*s rows (which one does not change the cost)

    def fn(emb, labels):
        return F.cross_entropy(emb @ weight.T, labels)

    what = f"W {rows}x{x.shape[1]} " + ("learnable" if learnable else "fixed")
    return Contestant(name, "floor", fn, x.clone().requires_grad_(), y, [weight] if learnable else [], what)


def _method(name: str, x: torch.Tensor, y: torch.Tensor, c: int, chunk_size: int | None) -> Contestant:
    import pml_anchors

    kwargs, setup = METHOD_KWARGS.get(name, ({}, ""))
    kwargs = dict(kwargs)
    if chunk_size is not None:
        kwargs["chunk_size"] = chunk_size
        setup = f"{setup}, chunk_size={chunk_size}".lstrip(", ")
    loss = pml_anchors.get_loss(name, num_classes=c, embedding_size=x.shape[1], **kwargs).to(x.device)
    params = [p for p in loss.parameters() if p.requires_grad]
    kind = "learnable anchors" if params else "fixed anchors"
    setup = f"{kind}, {setup}".rstrip(", ")
    return Contestant(name, "method", loss, x.clone().requires_grad_(), y, params, setup, loss, floor_of(loss))


def _pml(name: str, x: torch.Tensor, y: torch.Tensor, c: int, learnable: bool) -> Contestant:
    from pytorch_metric_learning import losses

    d = x.shape[1]
    if name == "ProxyAnchorLoss":
        loss = losses.ProxyAnchorLoss(c, d)
    elif name == "ArcFaceLoss":
        loss = losses.ArcFaceLoss(c, d, margin=math.degrees(0.5), scale=30.0)
    elif name == "NormalizedSoftmaxLoss":
        loss = losses.NormalizedSoftmaxLoss(c, d)
    elif name == "SoftTripleLoss":
        loss = losses.SoftTripleLoss(c, d, centers_per_class=SUB_CENTERS)
    else:
        raise ValueError(f"unknown PML loss {name!r}; expected one of {', '.join(PML_LOSSES)}")
    loss = loss.to(x.device)
    params = list(loss.parameters())
    for p in params:
        p.requires_grad_(learnable)
    setup = "learnable weights" if learnable else "weights frozen"
    params = params if learnable else []
    return Contestant(name, "pml", loss, x.clone().requires_grad_(), y, params, setup, loss, floor_of(loss))


def _compiled(con: Contestant, mode: str) -> Contestant:
    """``con`` (a method) as ``torch.compile(loss, fullgraph=True, mode=mode)``: one graph, no host sync; the first
    (cold) call compiles. Named ``"<method> [mode]"``; compared with the same floor and PML loss."""
    kwargs = {} if mode == "default" else {"mode": mode}
    refresh = getattr(con.module, "refresh_neighbors", None)
    if callable(refresh):  # CAM above 4096 anchors: the compiled step reads the list searched here (anchors fixed)
        refresh()
    fn = torch.compile(con.module, fullgraph=True, **kwargs)
    setup = f"{con.setup}, compiled ({mode})"
    x = con.embeddings.detach().clone().requires_grad_()
    return Contestant(f"{con.name} [{mode}]", "method", fn, x, con.labels, con.params, setup, con.module, con.floor)


def build_contestants(
    names: list[str],
    batch: int,
    d: int,
    c: int,
    device: torch.device,
    seed: int,
    chunk_size: int | None,
    compile_mode: str | None = None,
) -> list[Contestant]:
    """The losses named in ``names``, preceded by the floors they need (``floor_of``), ``"floor"`` and any floor
    named in ``names``, in the order of ``FLOORS``; with ``compile_mode`` each method also compiled."""
    x, y = _inputs(batch, d, c, device, seed)
    losses = []
    for name in names:
        if name in FLOORS:
            continue
        if name in PML_LOSSES:
            losses.append(_pml(name, x, y, c, learnable=name == "ProxyAnchorLoss"))
        else:
            losses.append(_method(name, x, y, c, chunk_size))
            if compile_mode is not None:
                losses.append(_compiled(_method(name, x, y, c, chunk_size), compile_mode))
    wanted = {"floor", *(n for n in names if n in FLOORS), *(con.floor for con in losses)}
    rows = {"floor": c, "floor_w": c, "floor_cs": c * SUB_CENTERS}
    floors = [_floor(f, x, y, rows[f], f == "floor_w", seed) for f in FLOORS if f in wanted]
    return floors + losses


# -- measuring ---------------------------------------------------------------------------------------------


def time_step(c: Contestant, device: torch.device) -> float:
    """Milliseconds of one forward + backward."""
    c.reset()
    if device.type == "cuda":
        sync(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        c.step()
        end.record()
        sync(device)
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    c.step()
    return (time.perf_counter() - t0) * 1e3


def _cpu_allocations(prof) -> list[tuple[int, int]]:
    """(time_ns, signed bytes) of every CPU allocation/free the profiler saw, in time order."""
    from torch._C._profiler import _EventType

    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, int(node.extra_fields.alloc_size)))
        stack.extend(node.children)
    events.sort()
    return events


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for the duration (Python's ``sys.stderr`` included).

    The profiler's native backend (Kineto) writes ``USDT: ... profiler_start`` / ``profiler_stop`` lines on every
    start and stop, and, on a machine without a GPU, ``ERROR: ... gpuGetDeviceCount failed with code 35`` once,
    straight to the process's stderr: ``contextlib.redirect_stderr`` does not catch them. Nothing else runs
    inside, so nothing of ours is lost; if the descriptor cannot be swapped the lines are simply left through."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    except OSError:
        os.close(saved)
        yield
        return
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_step_bytes(c: Contestant, device: torch.device) -> int:
    """Largest extra bytes allocated during one forward + backward (see the module docstring)."""
    c.reset()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        c.step()
        sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            c.step()
    running = peak = 0
    for _, size in _cpu_allocations(prof):
        running += size
        peak = max(peak, running)
    return peak


def proxy_anchor_parity(ours: Contestant, pml: Contestant) -> dict[str, float]:
    """Relative value and gradient differences of ``proxy_anchor`` and PML's ``ProxyAnchorLoss``, same proxies."""
    with torch.no_grad():
        pml.module.proxies.copy_(ours.module.anchors)
    results = []
    for c in (ours, pml):
        c.reset()
        value = c.fn(c.embeddings, c.labels)
        value.backward()
        results.append((value.detach().double(), c.embeddings.grad.double(), c.params[0].grad.double()))
        c.reset()
    (v0, gx0, gp0), (v1, gx1, gp1) = results
    return {
        "value": float((v0 - v1).abs() / v1.abs().clamp_min(1e-30)),
        "grad_embeddings": float((gx0 - gx1).abs().max() / gx1.abs().max().clamp_min(1e-30)),
        "grad_proxies": float((gp0 - gp1).abs().max() / gp1.abs().max().clamp_min(1e-30)),
    }


def measure_size(
    names: list[str],
    batch: int,
    d: int,
    c: int,
    device: torch.device,
    *,
    repeats: int,
    warmup: int,
    memory: bool,
    seed: int,
    chunk_size: int | None,
    log: Callable[[str], None],
    compile_mode: str | None = None,
) -> list[dict[str, Any]]:
    if compile_mode is not None:
        # every method compiles the losses' shared forward: a fresh cache per size keeps it under dynamo's
        # recompile limit (8), which fullgraph=True turns into an error
        torch._dynamo.reset()
    contestants = build_contestants(names, batch, d, c, device, seed, chunk_size, compile_mode)
    first = {con.name: time_step(con, device) for con in contestants}  # cold: builds caches / CAM's list
    for _ in range(warmup - 1):
        for con in contestants:
            time_step(con, device)
    times: dict[str, list[float]] = {con.name: [] for con in contestants}
    for r in range(repeats):
        for con in rotated(contestants, r):
            times[con.name].append(time_step(con, device))
    rows = []
    by_name = {con.name: con for con in contestants}
    parity = None
    if "proxy_anchor" in by_name and "ProxyAnchorLoss" in by_name:
        parity = proxy_anchor_parity(by_name["proxy_anchor"], by_name["ProxyAnchorLoss"])
    for con in contestants:
        ts = sorted(times[con.name])
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0], ts[0], ts[0]]
        row: dict[str, Any] = {
            "d": d,
            "C": c,
            "B": batch,
            "loss": con.name,
            "kind": con.kind,
            "setup": con.setup,
            "ms": statistics.median(ts),
            "iqr_ms": q[2] - q[0],
            "first_ms": first[con.name],
            "times_ms": ts,
            "floor": con.floor,
            "pml": PML_PAIRS.get(con.name.split(" [")[0]) if con.kind == "method" else None,
        }
        if memory:
            row["peak_bytes"] = peak_step_bytes(con, device)
            row["peak_over_bc4"] = row["peak_bytes"] / (batch * c * 4)
        if con.name in ("proxy_anchor", "ProxyAnchorLoss") and parity is not None:
            row["parity"] = parity
        rows.append(row)
        con.reset()
    medians = {row["loss"]: row["ms"] for row in rows}
    for row in rows:
        row["x_floor"] = row["ms"] / medians[row["floor"]] if row["floor"] in medians else None
        row["x_pml"] = row["ms"] / medians[row["pml"]] if row["pml"] in medians else None
    log(f"  d={d} C={c}: " + ", ".join(f"{row['loss']} {row['ms']:.1f}ms" for row in rows))
    return rows


# -- output ------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    has_mem = any("peak_bytes" in r for r in rows)
    head = ["d", "C", "loss", "setup", "ms (median)", "x floor", "x PML", "1st call ms"]
    if has_mem:
        head += ["peak MiB", "peak / BC4"]
    head.append("parity vs PML")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        floor = f"{r['x_floor']:.2f} ({r['floor']})" if r.get("x_floor") is not None else ""
        pml = f"{r['x_pml']:.2f} ({r['pml']})" if r.get("x_pml") is not None else ""
        cells = [str(r["d"]), f"{r['C']:,}", f"`{r['loss']}`", r["setup"], f"{r['ms']:.2f}", floor, pml]
        cells.append(f"{r['first_ms']:.1f}" if "first_ms" in r else "")
        if has_mem:
            cells += [_fmt(r.get("peak_bytes", 0) / 2**20, ".1f"), _fmt(r.get("peak_over_bc4"), ".2f")]
        par = r.get("parity")
        cells.append(
            f"value {par['value']:.1e}, grad {max(par['grad_embeddings'], par['grad_proxies']):.1e}" if par else ""
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            d, c = item.split("x")
            sizes.append((int(d), int(float(c))))
        except ValueError:
            raise argparse.ArgumentTypeError(f"sizes must look like 128x1000,512x1e5 (d x C), got {item!r}") from None
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


def select_names(methods: str | None, registered: list[str]) -> list[str]:
    """Our methods, then PML's losses; ``methods`` filters. The floors each loss needs are added when the losses
    are built (``build_contestants``); floors named in ``methods`` are kept."""
    wanted = registered + list(PML_LOSSES)
    if methods:
        wanted = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in registered and m not in PML_LOSSES and m not in FLOORS]
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; registered: {registered}, PML: {list(PML_LOSSES)}")
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", type=parse_sizes, help="comma list of d x C, e.g. 128x1000,512x100000")
    parser.add_argument("--methods", help="comma list of method names and PML losses (default: all)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"B (default {BATCH})")
    add_common_args(parser, repeats=7, warmup=2)
    parser.add_argument("--chunk-size", type=int, help="pass chunk_size= to our losses")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    add_lse_path_arg(parser)
    parser.add_argument("--quick", action="store_true", help="small grid (d=32, C in {100, 1000}), 3 rounds")
    parser.add_argument(
        "--compile",
        metavar="MODE",
        help="also time each method as torch.compile(loss, fullgraph=True, mode=MODE) (default, reduce-overhead, "
        "max-autotune, ...); its first call compiles (the '1st call ms' column)",
    )
    args = parser.parse_args(argv)

    device = setup_device(args.device, args.threads)
    set_lse_path(args.lse_path)
    sizes = args.sizes or (list(QUICK_SIZES) if args.quick else list(itertools.product(DEFAULT_DIMS, DEFAULT_CLASSES)))
    repeats = 3 if args.quick and args.repeats == 7 else args.repeats
    warmup = max(1, 1 if args.quick and args.warmup == 2 else args.warmup)

    import pml_anchors

    registered = [spec.name for spec in pml_anchors.list_methods()]
    names = select_names(args.methods, registered)
    to_stdout = args.json == "-"
    table_out = sys.stderr if to_stdout else sys.stdout

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"loss_speed: device={device} threads={torch.get_num_threads()} B={args.batch} sizes={sizes}")
    rows: list[dict[str, Any]] = []
    for d, c in sizes:
        torch.manual_seed(args.seed)
        rows += measure_size(
            names,
            args.batch,
            d,
            c,
            device,
            repeats=repeats,
            warmup=warmup,
            memory=not args.no_memory,
            seed=args.seed,
            chunk_size=args.chunk_size,
            log=log,
            compile_mode=args.compile,
        )
    print(markdown_table(rows), file=table_out, flush=True)
    if args.json:
        write_results(
            args.json, run_meta(device, batch=args.batch, repeats=repeats, warmup=warmup, lse_path=args.lse_path), rows
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
