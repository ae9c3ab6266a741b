"""Margin-RePoNet at the shared width d=128: the K=10 regular simplex (d=9) zero-padded into R^128.

``pml-anchors bench --embedding-size 128`` cannot train ``reponet``: its simplex fixes d = K - 1 = 9 and the loss
rejects any other width. The same classifier fits in any wider space: pad the 9-d simplex vertices with zeros,
so the rows stay unit vectors with pairwise cos -1/9 and ``margin="auto"`` (the smallest pairwise angle) is again
phi = arccos(-1/9) = 96.38 degrees. This runs that loss with exactly the settings of the ``same_class`` bench
(small_cnn, Adam 1e-3, batch 64, 3 epochs, seed 0, evaluation after every epoch) and writes a ``results.json``
that ``benchmarks/mnist_report.py`` reads.

    python benchmarks/reponet_padded.py --data-root /tmp/mnist-root --output runs/mnist/reponet_d128_padded
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if "--progress" not in sys.argv:
    os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported, which `import torch` already does

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--embedding-size", type=int, default=128)
    p.add_argument("--protocol", default="same_class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true", help="show PML's progress bars")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import pml_anchors
    from pml_anchors.anchors import simplex
    from pml_anchors.data import load_dataset
    from pml_anchors.training import TrainConfig, run

    splits = load_dataset("mnist", data_root=args.data_root, protocol=args.protocol, seed=args.seed)
    k, d = splits.num_classes, args.embedding_size
    vertices = simplex(k, k - 1, dtype=torch.float32)  # (K, K-1), pairwise cos -1/(K-1)
    anchors = torch.zeros(k, d)
    anchors[:, : k - 1] = vertices
    loss = pml_anchors.get_loss("reponet", k, d, anchors=anchors)  # margin "auto" = smallest angle = phi
    config = TrainConfig(
        method="reponet",
        dataset="mnist",
        data_root=args.data_root,
        protocol=args.protocol,
        epochs=args.epochs,
        embedding_size=d,
        seed=args.seed,
        num_threads=args.threads,
        eval_every_epoch=True,
        checkpoint_every_epoch=False,
        output=args.output,
    )
    results = run(config, splits=splits, loss=loss, spec=pml_anchors.get_method("reponet"))
    print(
        f"reponet (simplex d={k - 1} zero-padded to {d}, margin {torch.rad2deg(torch.tensor(loss.margin)):.2f} deg): "
        f"P@1 {results['precision_at_1']:.4f}, MAP@R {results['mean_average_precision_at_r']:.4f}, "
        f"nearest-anchor acc {results['nearest_anchor_accuracy']}, {results['seconds']:.1f} s"
    )
    Path(args.output, "anchors_note.txt").write_text(f"simplex K={k} d={k - 1} zero-padded to d={d}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
