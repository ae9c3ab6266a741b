"""How many kernels one loss step launches, and how many values it reads back to the host: what bounds a step on a
GPU at the sizes where its matrix products take microseconds.

    python benchmarks/launch_count.py                      # B = 256, d = 128, C = 1000, every method, PML, floors
    python benchmarks/launch_count.py --sizes 128x10000 --methods c_ncm,NormalizedSoftmaxLoss
    python benchmarks/launch_count.py --device cuda        # the same count on the GPU's code path

The same contestants as ``loss_speed.py`` (every registered method, the PML losses doing the same job, the GEMM +
cross-entropy floors). Each runs one untimed warm-up step (``loss(x, y).backward()``), then one step under a
``TorchDispatchMode`` that sees every ATen operation of the forward and the backward:

* ``kernels``: the operations that compute (views, ``detach``, ``expand`` and the like only relabel memory and
  launch nothing; they are left out). On a GPU each is at least one kernel launch, a few microseconds of host
  time whatever its size, so a step of N kernels costs N launches even when its products are tiny: the eager
  step's floor on the GPU's launch-bound sizes.
* ``host reads``: ``_local_scalar_dense`` (``.item()``, ``int(t)``, ``if t:``) and data-dependent shapes
  (``nonzero``, ``unique``, ``masked_select``): each a host-device synchronisation per step on a GPU, where the
  host waits for the device before it can queue the next kernel. (``.tolist()`` reads memory directly, without
  an ATen operation: on the CPU it is not counted.)
* ``x floor``: kernels / the matching floor's kernels (the floor as in ``loss_speed.py``).

On the CPU the counts are those of its code path: eager CPU losses may read the host where that is free (CAM's
neighbour list, the input checks' reads), which their GPU path does not; run with ``--device cuda`` for the
GPU's. ``torch.compile`` fuses the elementwise kernels into a few and CUDA graphs replay them with one launch:
``loss_speed.py --compile reduce-overhead`` measures that.
"""

from __future__ import annotations

import argparse
import collections
import sys

from _bench_common import add_lse_path_arg, set_lse_path, setup_device
from loss_speed import PML_LOSSES, build_contestants, parse_sizes
from torch.utils._python_dispatch import TorchDispatchMode

#: ATen operations that only relabel memory (no kernel).
NO_KERNEL = {
    "alias", "as_strided", "detach", "expand", "expand_as", "lift_fresh", "narrow", "permute", "promote_types",
    "reshape", "result_type", "select", "slice", "split", "split_with_sizes", "squeeze", "t", "transpose",
    "unbind", "unsqueeze", "view", "_reshape_alias", "_unsafe_view",
}  # fmt: skip
#: ATen operations that read a value back to the host or size their result by the data.
HOST_READS = {"_local_scalar_dense", "nonzero", "unique", "_unique", "_unique2", "unique_dim", "masked_select"}


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while active, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func._schema.name.split("::")[-1]] += 1
        return func(*args, **(kwargs or {}))

    @property
    def kernels(self) -> int:
        return sum(n for op, n in self.ops.items() if op not in NO_KERNEL)

    @property
    def host_reads(self) -> int:
        return sum(n for op, n in self.ops.items() if op in HOST_READS)


def count_step(con) -> OpCounter:
    """The operations of one forward + backward of ``con`` (after one warm-up step)."""
    con.reset()
    con.step()
    con.reset()
    with OpCounter() as counter:
        con.step()
    return counter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128x1000", help="comma list of d x C (default 128x1000)")
    parser.add_argument("--methods", default=None, help="comma list of methods and PML losses (default: all)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    add_lse_path_arg(parser)
    args = parser.parse_args(argv)
    import pml_anchors

    device = setup_device(args.device, None)
    set_lse_path(args.lse_path)
    names = args.methods.split(",") if args.methods else [s.name for s in pml_anchors.list_methods()]
    if not args.methods:
        names += list(PML_LOSSES)
    print(f"launch_count: device={device} B={args.batch} lse-path={args.lse_path}", file=sys.stderr)
    print("| d | C | loss | kernels | x floor | host reads | most frequent |")
    print("|---|---|---|---|---|---|---|")
    for d, c in parse_sizes(args.sizes):
        contestants = build_contestants(names, args.batch, d, c, device, args.seed, None)
        counts = {con.name: count_step(con) for con in contestants}
        for con in contestants:
            counter = counts[con.name]
            floor = "" if con.floor is None else f"{counter.kernels / counts[con.floor].kernels:.1f} ({con.floor})"
            top = ", ".join(f"{op} {n}" for op, n in counter.ops.most_common() if op not in NO_KERNEL)
            top = ", ".join(top.split(", ")[:5])
            print(f"| {d} | {c:,} | `{con.name}` | {counter.kernels} | {floor} | {counter.host_reads} | {top} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
