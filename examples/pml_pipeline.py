"""An ordinary pytorch-metric-learning pipeline in which ONE line switches the loss.

    python examples/pml_pipeline.py --method c_ncm
    python examples/pml_pipeline.py --method proxy_anchor --epochs 3

Everything is plain PML — ``trainers.MetricLossOnly``, ``testers.GlobalEmbeddingSpaceTester`` with
an ``AccuracyCalculator``, and an end-of-epoch hook that tests and prints the accuracies — except
the marked line, which takes the loss from ``pml_anchors.get_loss`` instead of
``pytorch_metric_learning.losses``. Runs on sklearn's digits (offline) in seconds on a CPU.

(PML's ``logging_presets.HookContainer`` needs record-keeper, which is optional, so the hook here is
a plain function. ``pml-anchors train`` adds each method's recipe: lr multipliers and trainer hooks.)
"""

from __future__ import annotations

import argparse

import torch
from pytorch_metric_learning import losses, testers, trainers  # noqa: F401 - `losses` for the PML line
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

import pml_anchors
from pml_anchors.app.data import load_dataset
from pml_anchors.app.models import build_backbone


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="c_ncm", help="a registered pml-anchors method (pml-anchors methods)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--embedding-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=None, help="train on this many digits")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load_dataset("digits", limit=args.limit)  # torch datasets of (image, label)
    num_classes, embedding_size = data.num_classes, args.embedding_size

    # ---- the one line that picks the loss: PML's own, or any pml-anchors method ----------------
    # loss = losses.ProxyAnchorLoss(num_classes, embedding_size, margin=0.1, alpha=32)
    loss = pml_anchors.get_loss(args.method, num_classes=num_classes, embedding_size=embedding_size)
    # ---------------------------------------------------------------------------------------------

    trunk, embedder = build_backbone(
        "small_cnn", in_channels=1, input_size=8, embedding_size=getattr(loss, "embedding_size", embedding_size)
    )
    trunk, embedder, loss = trunk.to(device), embedder.to(device), loss.to(device)
    optimizers = {
        "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=args.lr),
        "embedder_optimizer": torch.optim.Adam(embedder.parameters(), lr=args.lr),
    }
    if any(p.requires_grad for p in loss.parameters()):  # learnable proxies/anchors; fixed ones are buffers
        # proxies at 100x the lr, as in Proxy Anchor's recipe
        optimizers["metric_loss_optimizer"] = torch.optim.Adam(loss.parameters(), lr=args.lr * 100)

    tester = testers.GlobalEmbeddingSpaceTester(
        accuracy_calculator=AccuracyCalculator(
            include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count", device=device
        ),
        dataloader_num_workers=0,
        data_device=device,
    )
    history: dict = {}

    def end_of_epoch_hook(trainer):
        accuracies = tester.test({"test": data.test}, trainer.epoch, trunk, embedder)["test"]
        history[trainer.epoch] = accuracies
        print(
            f"epoch {trainer.epoch}: precision_at_1 {accuracies['precision_at_1_level0']:.4f}, "
            f"mean_average_precision_at_r {accuracies['mean_average_precision_at_r_level0']:.4f}"
        )
        return True  # False would stop training

    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers=optimizers,
        batch_size=64,
        loss_funcs={"metric_loss": loss},
        dataset=data.train,
        data_device=device,
        dataloader_num_workers=0,
        end_of_epoch_hook=end_of_epoch_hook,
    )
    trainer.train(num_epochs=args.epochs)
    return history


if __name__ == "__main__":
    main()
