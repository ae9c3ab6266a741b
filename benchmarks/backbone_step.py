"""A training step of each small MNIST trunk in channels-last against contiguous memory format.

Usage::

    python benchmarks/backbone_step.py                  # small_cnn and ncm_cnn, batch 256, one thread
    python benchmarks/backbone_step.py --threads 2 --batch 64
    python benchmarks/backbone_step.py --quick          # 2 rounds, batch 32, for a smoke test
    python benchmarks/backbone_step.py --json out.json  # machine-readable results ('-': stdout)

Each case is ``pml_anchors.app.models.build_backbone(name, in_channels=1, input_size=28, embedding_size=d,
channels_last=...)`` with an SGD optimizer over trunk and head; a step is ``zero_grad``, forward, a mean-square
loss on the embeddings, backward and ``optimizer.step()`` on a fixed batch of MNIST-sized random images. The two
formats of one trunk start from the same weights. Rounds interleave all cases (rotating order) so that load noise
hits them alike; the table gives the median ms per step and ``speed-up`` = contiguous / channels-last.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from _bench_common import add_common_args, rotated, run_meta, setup_device, timed_ms, write_results

BACKBONES = ("small_cnn", "ncm_cnn")


class Case:
    def __init__(self, backbone: str, channels_last: bool, batch: int, dim: int, device: torch.device, seed: int):
        from pml_anchors.app.models import build_backbone

        torch.manual_seed(seed)
        self.backbone, self.channels_last, self.device = backbone, channels_last, device
        kw = dict(in_channels=1, input_size=28, embedding_size=dim, channels_last=channels_last)
        self.trunk, self.head = (m.to(device) for m in build_backbone(backbone, **kw))
        params = [*self.trunk.parameters(), *self.head.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        self.x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed)).to(device)
        self.times: list[float] = []

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.head(self.trunk(self.x)).pow(2).mean().backward()
        self.optimizer.step()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma list (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--embedding-size", type=int, default=128)
    add_common_args(parser, repeats=5, warmup=1, threads=1)
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1 warm-up, batch 32")
    args = parser.parse_args(argv)
    device = setup_device(args.device, args.threads)
    batch, repeats = (32, 2) if args.quick else (args.batch, args.repeats)
    names = [b.strip() for b in args.backbones.split(",") if b.strip()]
    cases = [Case(b, cl, batch, args.embedding_size, device, args.seed) for b in names for cl in (False, True)]
    for case in cases:
        for _ in range(args.warmup):
            case.step()
    for r in range(repeats):
        for case in rotated(cases, r):
            case.times.append(timed_ms(case.step, device))

    rows = []
    for contiguous, channels_last in zip(cases[::2], cases[1::2]):
        a, b = statistics.median(contiguous.times), statistics.median(channels_last.times)
        rows.append({"backbone": contiguous.backbone, "contiguous_ms": a, "channels_last_ms": b, "speed_up": a / b})
    if args.json:
        write_results(args.json, run_meta(device, batch=batch, repeats=repeats), rows)
        if args.json == "-":
            return 0
    print(f"training step, batch {batch}, d = {args.embedding_size}, {device}, threads {torch.get_num_threads()}, "
          f"median of {repeats}")  # fmt: skip
    print("| backbone | contiguous ms | channels-last ms | speed-up |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['backbone']} | {row['contiguous_ms']:.0f} | {row['channels_last_ms']:.0f} | "
              f"{row['speed_up']:.2f}× |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
