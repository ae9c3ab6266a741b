"""A whole training step (trunk + embedder + loss, forward, backward, optimizer step) against the loss alone.

Usage::

    python benchmarks/train_step.py                    # every registered method, C = 10 (MNIST), B = 256
    python benchmarks/train_step.py --classes 10,1000  # also with 1000 classes
    python benchmarks/train_step.py --quick            # 3 rounds, one method set, for a smoke test
    python benchmarks/train_step.py --json out.json    # machine-readable results ('-': stdout)
    python benchmarks/train_step.py --compile          # also each step with torch.compile'd trunk + embedder
    python benchmarks/train_step.py --whole reduce-overhead  # also trunk + embedder + loss as one compiled graph

For every method the model is ``pml_anchors.app.models.build_backbone("small_cnn", in_channels=1,
input_size=28, embedding_size=d)`` (the small MNIST CNN + a linear embedding head), the loss is
``pml_anchors.get_loss(method, C, d)`` (``reponet`` with ``anchors="spread", margin=0.5``, as in
``loss_speed.py``, since its polytopes force d from C), and one Adam optimizer holds the model's and the
loss's parameters (learnable anchors with the method's lr multiplier). The inputs are MNIST-sized random
images (B x 1 x 28 x 28, standard normal) with uniformly random labels.

* ``step`` -- ``zero_grad``, trunk + embedder forward, loss forward, backward, ``optimizer.step()``: a real
  training step (learnable anchors move, so e.g. CAM's neighbour list does its per-step check, and fixed
  anchors' caches are hit as in training);
* ``loss`` -- the loss alone, forward + backward, on a (B x d) embedding tensor with ``requires_grad``
  (the embeddings of the current model, detached);
* ``share`` -- loss / step.

With ``--compile`` every method is also measured with its trunk and embedder compiled
(:func:`pml_anchors.app.models.compile_models`, inductor; ``pml-anchors train --compile``), in the same rounds as the
eager models; ``x eager`` is its step time over the eager step's. Compiling happens in the warm-up (the first
step, seconds), which is not timed.

With ``--whole MODE`` every method is also measured with its whole forward -- trunk, embedder and loss -- as one
``torch.compile(fullgraph=True, mode=MODE)`` graph (``trunk + embedder`` column ``whole (MODE)``; AOT autograd compiles the
backward with it; the optimizer step stays eager). ``reduce-overhead`` runs forward and backward as CUDA graphs on a
GPU. Its ``loss`` column is the loss alone compiled the same way.

Rounds interleave the methods (rotating order) so that load noise hits them alike; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import torch
from _bench_common import add_common_args, rotated, run_meta, setup_device, timed_ms, write_results

BATCH = 256
METHOD_KWARGS = {"reponet": {"anchors": "spread", "margin": 0.5}}


class Case:
    """One method with its own model, loss, optimizer and data."""

    def __init__(
        self,
        name: str,
        classes: int,
        dim: int,
        batch: int,
        device: torch.device,
        seed: int,
        compiled: bool = False,
        whole: str | None = None,
    ):
        import pml_anchors
        from pml_anchors.app.models import build_backbone, compile_models

        torch.manual_seed(seed)
        self.name, self.device, self.compiled, self.whole = name, device, compiled, whole
        self.trunk, self.embedder = build_backbone("small_cnn", in_channels=1, input_size=28, embedding_size=dim)
        self.trunk.to(device)
        self.embedder.to(device)
        if compiled:
            compile_models(self.trunk, self.embedder)
        self.loss = pml_anchors.get_loss(name, classes, dim, **METHOD_KWARGS.get(name, {})).to(device)
        spec = pml_anchors.get_method(name)
        lr = 1e-3
        groups = [{"params": list(self.trunk.parameters()) + list(self.embedder.parameters()), "lr": lr}]
        for pname, p in self.loss.named_parameters():
            if p.requires_grad:
                groups.append({"params": [p], "lr": lr * spec.lr_multipliers.get(pname, 1.0)})
        self.optimizer = torch.optim.Adam(groups)
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randn(batch, 1, 28, 28, generator=gen).to(device)
        self.labels = torch.randint(0, classes, (batch,), generator=gen).to(device)
        self.emb = None
        self.forward_loss = self.loss_fn = None
        self._refresh()
        if whole is not None:
            kwargs = {} if whole == "default" else {"mode": whole}
            trunk, embedder, loss = self.trunk, self.embedder, self.loss
            self.forward_loss = torch.compile(lambda x, y: loss(embedder(trunk(x)), y), fullgraph=True, **kwargs)
            self.loss_fn = torch.compile(loss, fullgraph=True, **kwargs)

    @property
    def models(self) -> str:
        return f"whole ({self.whole})" if self.whole is not None else "compiled" if self.compiled else "eager"

    def _refresh(self) -> None:
        """What the method's trainer hooks do between steps: CAM's neighbour-list check (K > 4096), outside the
        (compiled) step, as ``pml-anchors train`` runs it."""
        refresh = getattr(self.loss, "refresh_neighbors", None)
        if callable(refresh):
            refresh()

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.forward_loss is not None:
            self.forward_loss(self.images, self.labels).backward()
            self.optimizer.step()
            self._refresh()
            if self.emb is None:
                with torch.no_grad():
                    self.emb = self.embedder(self.trunk(self.images))
            return
        emb = self.embedder(self.trunk(self.images))
        self.loss(emb, self.labels).backward()
        self.optimizer.step()
        self._refresh()
        self.emb = emb.detach()

    def loss_only(self) -> None:
        emb = self.emb.clone().requires_grad_(True)
        for p in self.loss.parameters():
            p.grad = None
        loss = self.loss if self.loss_fn is None else self.loss_fn
        loss(emb, self.labels).backward()


def measure(
    names, classes, dim, batch, device, repeats, warmup, seed, log, compiled=False, whole=None
) -> list[dict[str, Any]]:
    variants: list[tuple[bool, str | None]] = [(False, None)]
    if compiled:
        variants.append((True, None))
    if whole is not None:
        variants.append((False, whole))
    if compiled or whole is not None:
        # every case compiles the same code objects (the forward lambda, the losses' shared forward): a fresh
        # cache per C keeps them under dynamo's recompile limit (8), which fullgraph=True turns into an error
        torch._dynamo.reset()
    cases = [Case(n, classes, dim, batch, device, seed, compiled=v, whole=w) for n in names for v, w in variants]
    slow = compiled or whole is not None
    for _ in range(max(warmup, 3 if slow else 1)):  # compiled: the first step compiles, CUDA graphs record later
        for c in cases:
            c.step()
            c.loss_only()
    steps: dict[Case, list[float]] = {c: [] for c in cases}
    losses: dict[Case, list[float]] = {c: [] for c in cases}
    for r in range(repeats):
        for c in rotated(cases, r):
            steps[c].append(timed_ms(c.step, device))
            losses[c].append(timed_ms(c.loss_only, device))
    rows = []
    for c in cases:
        step_ms, loss_ms = statistics.median(steps[c]), statistics.median(losses[c])
        rows.append(
            {
                "method": c.name,
                "models": c.models,
                "C": classes,
                "d": dim,
                "B": batch,
                "step_ms": step_ms,
                "loss_ms": loss_ms,
                "share": loss_ms / step_ms,
                "step_times_ms": steps[c],
                "loss_times_ms": losses[c],
            }
        )
    eager = {r["method"]: r["step_ms"] for r in rows if r["models"] == "eager"}
    for r in rows:
        r["x_eager"] = r["step_ms"] / eager[r["method"]]
    log(f"  C={classes}: " + ", ".join(f"{r['method']} ({r['models']}) {r['share']:.1%}" for r in rows))
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| C | method | trunk + embedder | train step ms | x eager | loss fwd+bwd ms | loss share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['C']:,} | `{r['method']}` | {r['models']} | {r['step_ms']:.1f} | {r['x_eager']:.2f} "
            f"| {r['loss_ms']:.2f} | {r['share']:.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", help="comma list (default: every registered method)")
    parser.add_argument("--classes", default="10", help="comma list of C (default 10, MNIST)")
    parser.add_argument("--embedding-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=BATCH)
    add_common_args(parser, repeats=7, warmup=2)
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1 warm-up, batch 64")
    parser.add_argument(
        "--compile", action="store_true", help="also measure each method with torch.compile'd trunk and embedder"
    )
    parser.add_argument(
        "--whole",
        metavar="MODE",
        help="also measure each method with trunk + embedder + loss as one torch.compile(fullgraph=True, mode=MODE) "
        "graph (default, reduce-overhead, ...)",
    )
    args = parser.parse_args(argv)

    import pml_anchors

    device = setup_device(args.device, args.threads)
    names = [s.name for s in pml_anchors.list_methods()]
    if args.methods:
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
    classes = [int(float(c)) for c in args.classes.split(",") if c.strip()]
    repeats, warmup, batch = args.repeats, args.warmup, args.batch
    if args.quick:
        repeats, warmup, batch = 3, 1, min(batch, 64)
    to_stdout = args.json == "-"

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(
        f"train_step: device={device} threads={torch.get_num_threads()} B={batch} d={args.embedding_size}"
        + (" (eager and compiled trunk + embedder)" if args.compile else "")
        + (f" (and whole forward compiled, {args.whole})" if args.whole else "")
    )
    rows = []
    for c in classes:
        rows += measure(
            names, c, args.embedding_size, batch, device, repeats, warmup, args.seed, log, args.compile, args.whole
        )
    print(markdown_table(rows), file=sys.stderr if to_stdout else sys.stdout, flush=True)
    if args.json:
        write_results(args.json, run_meta(device, batch=batch, repeats=repeats), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
