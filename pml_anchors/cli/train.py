"""``pml-anchors train | eval | bench``: train, re-evaluate and benchmark methods.

Building these parsers imports neither torch nor any plugin (``pml-anchors --help`` stays fast);
the work happens in :mod:`pml_anchors.training`, :mod:`pml_anchors.evaluation` and
:mod:`pml_anchors.bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

PROTOCOLS = ("same_class", "open_set")


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"margin\": 0.2}'")
    return value


def _int_list(what: str):
    """An argparse type: comma-separated ints, e.g. ``10,20``; the error names ``what`` (with an example)."""

    def parse(text: str) -> list[int]:
        try:
            return [int(part) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from exc

    return parse


def _add_recall_at(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recall-at",
        type=_int_list("whole numbers such as 1,2,4,8"),
        metavar="K1,K2,...",
        help="the Ks of the Recall@K metrics reported beside PML's (default 1,2,4,8; SOP papers use 1,10,100,1000)",
    )


def _add_common(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    """Options shared by train and bench (default None: TrainConfig's defaults apply)."""
    if data:
        p.add_argument("--data-root", help="dataset folder (mnist: torchvision root; imagefolder: the images)")
        p.add_argument("--protocol", choices=PROTOCOLS, help="same_class (default) or open_set (unseen test classes)")
        p.add_argument(
            "--download",
            action="store_true",
            help="mnist: let torchvision download it into --data-root if it is not there (needs internet)",
        )
        p.add_argument(
            "--dataset-kwargs",
            type=_json_arg,
            help='JSON object of dataset options, e.g. \'{"image_size": 224, "augment": true}\' (imagefolder: '
            "ImageNet-sized crops, random resized crops + flips for training), num_train_classes, test_fraction",
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
        type=_int_list("whole epochs such as 10,20"),
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
        type=_json_arg,
        help='JSON object of trunk options, e.g. \'{"pooling": "avg+max"}\' (ResNets: GAP + GMP as in Proxy '
        "Anchor's official code) or '{\"width\": 64}' (small_cnn)",
    )
    p.add_argument("--device", help="auto (default: CUDA if available), cpu or cuda")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--limit", type=int, help="train on this many items (class-balanced subsample)")
    p.add_argument("--test-limit", type=int, help="evaluate on this many test items")
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
    _add_recall_at(p)
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's; 1 is often fastest for tiny models)"
    )
    p.add_argument(
        "--workers",
        type=int,
        help="DataLoader worker processes for training and evaluation (default 0: load in the main process; "
        "image folders on a GPU want a few)",
    )
    _add_output_flags(p)


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="show PML's log messages")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


_CONFIG_ARGS = {
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
}


def _given(args: argparse.Namespace) -> dict:
    """Config fields given on the command line."""
    given = {
        field: getattr(args, attr) for field, attr in _CONFIG_ARGS.items() if getattr(args, attr, None) is not None
    }
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
    if getattr(args, "compile", None) is not None:
        given["compile"] = True
        given["compile_kwargs"] = {} if args.compile == "default" else {"mode": args.compile}
    return given


def _setup_output(args: argparse.Namespace) -> None:
    if args.no_progress:  # read by tqdm when it is first imported
        os.environ["TQDM_DISABLE"] = "1"
    from .training import set_verbosity

    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    set_verbosity(args.verbose)


def _fmt(value) -> str:
    return "–" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def _recall_text(r: dict) -> str:
    """``R@2 0.9900, R@4 0.9950, `` for the Recall@K metrics in ``r`` beyond K = 1 (which is P@1)."""
    from .recall_at_k import recall_metrics_in

    return "".join(f"R@{k} {_fmt(r[name])}, " for k, name in recall_metrics_in(r) if k > 1)


# -- train ----------------------------------------------------------------------------------------
def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train and evaluate one method with PML's trainer",
        description="Train a registered method with PML's MetricLossOnly (no miner), evaluate it with PML's "
        "AccuracyCalculator, and write DIR/results.json and DIR/checkpoint.pt.",
    )
    p.add_argument("--method", help="registered method (see `pml-anchors methods`), or baseline:<name>")
    p.add_argument("--dataset", help="digits (default), mnist or imagefolder")
    _add_common(p)
    p.add_argument("--loss-kwargs", type=_json_arg, help="JSON object of loss keyword arguments")
    p.add_argument("--hook-kwargs", type=_json_arg, help="JSON object of trainer-hook keyword arguments")
    p.add_argument("--output", help="folder for results.json and checkpoint.pt")
    p.add_argument(
        "--eval-every-epoch",
        action="store_true",
        default=None,
        help="evaluate after every epoch too; the metrics go into results.json's history and each epoch's "
        "checkpoint (default: only after the last epoch)",
    )
    p.add_argument(
        "--resume", help="continue from this checkpoint: its config and output folder; options given here override"
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel processes on this machine (gloo on CPU, one GPU each on CUDA); --batch-size stays the "
        "global batch; rank 0 evaluates and writes the files (default 1)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    given = _given(args)
    if not args.resume and "method" not in given:
        raise ValueError("--method is required (see `pml-anchors methods`), unless --resume is given")
    _setup_output(args)
    from .checkpoints import load_checkpoint
    from .training import TrainConfig, run

    values, done = {}, None
    if args.resume:
        checkpoint = load_checkpoint(args.resume)
        values, done = dict(checkpoint["config"]), int(checkpoint["epoch"])
        if values.get("output") is not None:  # the run's folder is where its checkpoint is, wherever we are
            values["output"] = os.path.dirname(os.path.abspath(args.resume))
    for key in ("backbone_kwargs", "dataset_kwargs"):  # e.g. --backbone-weights adds to the checkpoint's options
        if key in given:
            given[key] = {**values.get(key, {}), **given[key]}
    values.update(given)
    config = TrainConfig.from_dict(values)
    if done is not None and done >= config.epochs:
        print(
            f"nothing left to train: the checkpoint finished epoch {done} of {config.epochs}; evaluating it again "
            "(pass a larger --epochs to train on)",
            file=sys.stderr,
        )
    if args.nproc != 1:
        from .launch import launch  # N processes, DDP + DistributedLoss (pml_anchors/launch.py)

        results = launch(config, args.nproc, resume=args.resume, verbose=args.verbose)
    else:
        results = run(config, resume=args.resume)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        print(_summary(results))
        if config.output:
            print(
                f"wrote {os.path.join(config.output, 'results.json')} and {os.path.join(config.output, 'checkpoint.pt')}"
            )
    return 0


def _summary(r: dict) -> str:
    return (
        f"{r['method']} on {r['dataset']} [{r['protocol']}], {r['epochs']} epoch{'' if r['epochs'] == 1 else 's'}, "
        f"{r['seconds']:.1f} s on {r['device']}: "
        f"P@1 {_fmt(r['precision_at_1'])}, {_recall_text(r)}MAP@R {_fmt(r['mean_average_precision_at_r'])}, "
        f"R-precision {_fmt(r['r_precision'])}, mAP {_fmt(r['mean_average_precision'])}, "
        f"nearest-anchor acc {_fmt(r['nearest_anchor_accuracy'])}"
    )


# -- eval -----------------------------------------------------------------------------------------
def add_eval_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="re-evaluate a checkpoint",
        description="Rebuild a run from its checkpoint's saved config and evaluate it again.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by `pml-anchors train`")
    p.add_argument("--dataset", help="evaluate on another dataset (default: the checkpoint's)")
    p.add_argument("--data-root", help="dataset folder (default: the checkpoint's)")
    p.add_argument("--protocol", choices=PROTOCOLS, help="default: the checkpoint's")
    p.add_argument("--test-limit", type=int, help="evaluate on this many test items")
    p.add_argument("--device", help="auto, cpu or cuda (default: the checkpoint's)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default: the checkpoint's)")
    _add_recall_at(p)
    p.add_argument("--output", help="also write the metrics to this JSON file")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_output_flags(p)
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    _setup_output(args)
    from .results import write_json
    from .training import evaluate_checkpoint

    results = evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        data_root=args.data_root,
        protocol=args.protocol,
        test_limit=args.test_limit,
        device=args.device,
        dataloader_num_workers=args.workers,
        recall_at=args.recall_at,
    )
    if args.output:
        write_json(results, args.output)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        from .recall_at_k import recall_metrics_in

        names = ("precision_at_1", *(name for _, name in recall_metrics_in(results)), "mean_average_precision_at_r")
        names += ("r_precision", "mean_average_precision", "nearest_anchor_accuracy")
        print(
            f"{results['method']} (epoch {results['epoch']}) on {results['dataset']} [{results['protocol']}]: "
            + ", ".join(f"{k} {_fmt(results[k])}" for k in names)
        )
    return 0


# -- bench ----------------------------------------------------------------------------------------
def add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark methods and PML baselines",
        description="Train every selected method and PML baseline with the same backbone, budget and seed; write "
        "DIR/results.md, DIR/results.json, DIR/accuracy_vs_time.png and DIR/embeddings.png.",
    )
    p.add_argument("--dataset", default="digits", help="digits (default), mnist or imagefolder")
    p.add_argument("--methods", default="all", help="all (default), none, or a comma-separated list")
    p.add_argument(
        "--baselines",
        default="all",
        help="all (default), none, or a comma list of pml_proxy_anchor, pml_arcface, pml_normalized_softmax, "
        "pml_soft_triple, pml_contrastive, cross_entropy",
    )
    _add_common(p)
    p.add_argument("--output", default="bench", help="output folder (default ./bench)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=run_bench)


def run_bench(args) -> int:
    _setup_output(args)
    from .bench import bench

    config = _given(args)
    for key in ("dataset", "output", "method", "loss_kwargs", "hook_kwargs"):
        config.pop(key, None)
    epochs = config.pop("epochs", 2)

    def report(r: dict) -> None:
        if "error" in r:
            print(f"{r['method']}: FAILED {r['error']}", file=sys.stderr)
        else:
            print(f"{r['method']}: P@1 {_fmt(r['precision_at_1'])}, {r['seconds']:.1f} s", flush=True)

    summary = bench(
        args.dataset,
        args.methods,
        args.baselines,
        epochs=epochs,
        output=args.output,
        plots=not args.no_plots,
        on_result=report,
        **config,
    )
    print(f"wrote {os.path.join(args.output, 'results.md')}, results.json" + ("" if args.no_plots else " and plots"))
    return 1 if any("error" in r for r in summary["runs"]) else 0
