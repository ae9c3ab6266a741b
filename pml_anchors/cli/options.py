"""What ``train``, ``eval`` and ``bench`` share: argument types, the common options, the config they give, output
set-up and number formatting. Nothing here imports torch (``pml-anchors --help`` stays fast)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

PROTOCOLS = ("same_class", "open_set")
DATASET_HELP = (
    "digits (default), mnist, fashion_mnist, kmnist, emnist, cifar10, cifar100, svhn, food101, caltech256, cub, "
    "cars196, sop, inaturalist2018, imagefolder, or a plugin's (docs/datasets.md)"
)
KNN_CHOICES = ("auto", "blocked", "faiss")  # pml_anchors.evaluation.knn.KNN_BACKENDS, without importing torch


def json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"margin\": 0.2}'")
    return value


def int_list(what: str) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated ints, e.g. ``10,20``; the error names ``what`` (with an example)."""

    def parse(text: str) -> list[int]:
        try:
            return [int(part) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from exc

    return parse


def add_recall_at(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recall-at",
        type=int_list("whole numbers such as 1,2,4,8"),
        metavar="K1,K2,...",
        help="the Ks of the Recall@K metrics reported beside PML's (default 1,2,4,8; SOP papers use 1,10,100,1000)",
    )
    p.add_argument(
        "--knn",
        choices=KNN_CHOICES,
        help="the exact kNN search of the evaluation: auto (default: faiss on the CPU, blocked on CUDA), faiss "
        "(PML's FaissKNN), blocked (torch on the evaluation device, 256 MiB of distances at a time)",
    )


def add_common(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    """Options shared by train and bench (default None: TrainConfig's defaults apply)."""
    if data:
        p.add_argument(
            "--data-root", help="the folder holding the dataset as its archive extracts (imagefolder: the images)"
        )
        p.add_argument("--protocol", choices=PROTOCOLS, help="same_class (default) or open_set (unseen test classes)")
        p.add_argument(
            "--download",
            action="store_true",
            help="let PML/torchvision download the dataset into --data-root (needs internet)",
        )
        p.add_argument(
            "--dataset-kwargs",
            type=json_arg,
            help='JSON object of dataset options, e.g. \'{"image_size": 224, "resize_size": 256, "augment": true}\' '
            "(image datasets: ImageNet-sized crops, random resized crops + flips for training; CIFAR/SVHN: augment), "
            "num_train_classes, test_fraction, split (emnist)",
        )
    p.add_argument("--epochs", type=int, help="number of epochs (train: 10; bench: 2)")
    p.add_argument(
        "--embedding-size",
        type=int,
        help="embedding width, the same for every method (default: derived by the loss, e.g. reponet's polytope width, else 64)",
    )
    p.add_argument("--batch-size", type=int, help="batch size (default 64)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3; loss parameters × the method's multipliers)")
    p.add_argument("--weight-decay", type=float, help="weight decay (default 0)")
    p.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), help="optimizer (default adam)")
    p.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine", "step", "plateau"),
        help="constant (default); cosine: decay to 0 per iteration; step: times --lr-gamma after each of "
        "--lr-milestones; plateau: times --lr-gamma when the epoch's training loss stalls for --lr-patience epochs",
    )
    p.add_argument(
        "--lr-milestones",
        type=int_list("whole epochs such as 10,20"),
        metavar="E1,E2,...",
        help="step schedule: epochs after which the lr is multiplied by --lr-gamma, e.g. 10,20,30",
    )
    p.add_argument("--lr-gamma", type=float, help="step / plateau schedule: lr factor (default 0.1)")
    p.add_argument(
        "--lr-patience", type=int, help="plateau schedule: epochs without a lower training loss first (default 10)"
    )
    p.add_argument("--backbone", help="small_cnn, lenetpp, ncm_cnn, resnet18, resnet50 (default: by input size)")
    p.add_argument(
        "--backbone-weights",
        metavar="FILE",
        help="local state dict for the trunk, e.g. ImageNet ResNet weights saved once with torch.save (never "
        "downloaded); marks the trunk as pretrained for recipes that depend on it",
    )
    p.add_argument(
        "--backbone-kwargs",
        type=json_arg,
        help='JSON object of trunk options, e.g. \'{"pooling": "avg+max"}\' (ResNets: GAP + GMP as in Proxy '
        "Anchor's official code) or '{\"width\": 64}' (small_cnn)",
    )
    p.add_argument("--device", help="auto (default: CUDA if available), cpu or cuda")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--limit", type=int, help="train on this many items (class-balanced subsample)")
    p.add_argument(
        "--train-per-class",
        type=int,
        metavar="N",
        help="few-shot training: keep N training items of every class (1, 2, 4, ...), the same ones for the same "
        "--seed; a class with fewer is an error naming it; not with --limit",
    )
    p.add_argument("--test-limit", type=int, help="evaluate on this many test items")
    add_select_epoch(p)
    p.add_argument("--amp", action="store_true", default=None, help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    p.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="PyTorch's deterministic mode (and cuBLAS/cuDNN settings), so that a GPU run repeats bit for bit; CPU "
        "runs repeat without it",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        metavar="MODE",
        help="compile the trunk and embedder with torch.compile (MODE: default, reduce-overhead, max-autotune, ...); "
        "the first batches take seconds to compile",
    )
    add_recall_at(p)
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="log with PML's logging presets (record-keeper + TensorBoard) into DIR: losses, the loss's "
        "hyper-parameters and anchor geometry, learning rates and each epoch's metrics (bench: one sub-folder per "
        "run); needs pip install 'pml-anchors[tensorboard]'",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: the CPUs this process may use: OMP_NUM_THREADS, else the CPU affinity and "
        "cgroup quota, less the CPUs other processes keep busy; recorded in results.json with the reason)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="DataLoader worker processes for training and evaluation (default 0: load in the main process; "
        "image folders on a GPU want a few)",
    )
    add_output_flags(p)


def add_select_epoch(p: argparse.ArgumentParser) -> None:
    """Best-epoch selection and early stopping on a validation fold (``TrainConfig.select_epoch``)."""
    p.add_argument(
        "--select-epoch",
        action="store_true",
        help="select the epoch on a validation fold: train on the other folds of the training split (class-disjoint "
        "under open_set, stratified under same_class), evaluate the fold after every epoch, keep the best epoch's "
        "weights and evaluate the test split once, at the end, with them (docs/tuning.md)",
    )
    p.add_argument(
        "--select-folds", type=int, metavar="K", help="--select-epoch: folds of the training split (default 4)"
    )
    p.add_argument("--select-fold", type=int, metavar="F", help="--select-epoch: the fold selected on (default 0)")
    p.add_argument(
        "--select-metric",
        metavar="NAME",
        help="--select-epoch: the validation metric (default mean_average_precision_at_r; any metric the "
        "evaluation reports, e.g. precision_at_1)",
    )
    p.add_argument(
        "--early-stopping",
        type=int,
        metavar="N",
        help="stop once N epochs in a row did not improve the validation metric (implies --select-epoch)",
    )


SELECT_ARGS = {"folds": "select_folds", "fold": "select_fold", "metric": "select_metric", "patience": "early_stopping"}


def add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="show PML's log messages")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="show no progress (default: one progress bar on a terminal; short lines when stderr is a file or a "
        "pipe, or TQDM_DISABLE is set)",
    )


CONFIG_ARGS = {
    "method": "method",
    "dataset": "dataset",
    "data_root": "data_root",
    "protocol": "protocol",
    "epochs": "epochs",
    "embedding_size": "embedding_size",
    "batch_size": "batch_size",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "optimizer": "optimizer",
    "lr_schedule": "lr_schedule",
    "lr_milestones": "lr_milestones",
    "lr_gamma": "lr_gamma",
    "lr_patience": "lr_patience",
    "backbone": "backbone",
    "device": "device",
    "seed": "seed",
    "limit": "limit",
    "train_per_class": "train_per_class",
    "test_limit": "test_limit",
    "amp": "amp",
    "deterministic": "deterministic",
    "num_threads": "threads",
    "dataloader_num_workers": "workers",
    "output": "output",
    "eval_every_epoch": "eval_every_epoch",
    "loss_kwargs": "loss_kwargs",
    "hook_kwargs": "hook_kwargs",
    "recall_at": "recall_at",
    "knn": "knn",
    "tensorboard": "tensorboard",
    "timeout_s": "timeout",
}


def given_config(args: argparse.Namespace) -> dict:
    """Config fields given on the command line."""
    given = {field: getattr(args, attr) for field, attr in CONFIG_ARGS.items() if getattr(args, attr, None) is not None}
    if "tensorboard" in given:
        given["tensorboard"] = os.path.abspath(os.path.expanduser(given["tensorboard"]))
    if "data_root" in given:  # stored in the checkpoint: `eval` and `--resume` may run from another directory
        given["data_root"] = os.path.abspath(os.path.expanduser(given["data_root"]))
    if getattr(args, "backbone_kwargs", None) is not None:
        given["backbone_kwargs"] = dict(args.backbone_kwargs)
    if getattr(args, "backbone_weights", None):
        weights = os.path.abspath(os.path.expanduser(args.backbone_weights))
        given["backbone_kwargs"] = {**given.get("backbone_kwargs", {}), "weights_path": weights}
    if getattr(args, "dataset_kwargs", None) is not None:
        given["dataset_kwargs"] = dict(args.dataset_kwargs)
    if getattr(args, "download", False):
        given["dataset_kwargs"] = {**given.get("dataset_kwargs", {}), "download": True}
    select = {key: getattr(args, attr) for key, attr in SELECT_ARGS.items() if getattr(args, attr, None) is not None}
    if getattr(args, "select_epoch", False) or select:
        given["select_epoch"] = select
    if getattr(args, "compile", None) is not None:
        given["compile"] = True
        given["compile_kwargs"] = {} if args.compile == "default" else {"mode": args.compile}
    return given


def progress_mode(args: argparse.Namespace) -> str:
    """How a command shows progress (:mod:`pml_anchors.app.progress`): ``"off"`` with ``--no-progress``; ``"lines"``
    when stderr is not a terminal (a log file, a pipe) or ``TQDM_DISABLE`` is set (to anything but an empty string,
    as tqdm reads it); ``"bar"`` otherwise."""
    if getattr(args, "no_progress", False):
        return "off"
    if os.environ.get("TQDM_DISABLE"):
        return "lines"
    try:
        return "bar" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):  # replaced or closed
        return "lines"


def setup_output(args: argparse.Namespace, *, own_progress: bool = True) -> str:
    """Logging and progress for a command that trains or evaluates; returns the :func:`progress_mode`.

    PML's own tqdm bars (its trainer's per epoch, its tester's per evaluation) are turned off with ``TQDM_DISABLE``,
    which tqdm reads when it is imported (so this runs before anything imports PML): with ``own_progress`` the
    command shows a :class:`~pml_anchors.app.progress.RunProgress` instead; without it (``eval``, ``train --nproc``),
    PML's bars stay on a terminal."""
    mode = progress_mode(args)
    if own_progress or mode != "bar":
        os.environ["TQDM_DISABLE"] = "1"
    from ..app.trainer import set_verbosity

    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    set_verbosity(args.verbose)
    return mode


def resolve_threads(values: dict, given: dict, processes: int = 1) -> str:
    """Set ``values["num_threads"]`` (a config's fields) to the default thread count when neither the command line
    (``given``) nor a resumed checkpoint (already in ``values``) sets it; returns why it is what it is, for
    ``results.json`` (:mod:`pml_anchors.app.threads`). ``processes``: ``--nproc``, which shares the CPUs."""
    from ..app.threads import THREADS_GIVEN, default_threads, split_threads

    if given.get("num_threads") is not None:
        return THREADS_GIVEN
    if values.get("num_threads") is not None:
        return "the resumed checkpoint's config"
    values["num_threads"], why = split_threads(default_threads(), processes)
    return why


def fmt(value: Any) -> str:
    return "–" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def metrics_text(r: dict) -> str:
    """``P@1 0.9900, R@2 ..., MAP@R ..., R-precision ..., mAP ..., nearest-anchor acc ...``: a run's test metrics,
    as ``train`` and ``eval`` print them."""
    return (
        f"P@1 {fmt(r['precision_at_1'])}, {recall_text(r)}MAP@R {fmt(r['mean_average_precision_at_r'])}, "
        f"R-precision {fmt(r['r_precision'])}, mAP {fmt(r['mean_average_precision'])}, "
        f"nearest-anchor acc {fmt(r['nearest_anchor_accuracy'])}"
    )


def recall_text(r: dict) -> str:
    """``R@2 0.9900, R@4 0.9950, `` for the Recall@K metrics in ``r`` beyond K = 1 (which is P@1)."""
    from ..evaluation.recall_at_k import recall_metrics_in

    return "".join(f"R@{k} {fmt(r[name])}, " for k, name in recall_metrics_in(r) if k > 1)
