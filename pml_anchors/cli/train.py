"""``pml-anchors train``: train and evaluate one method with PML's trainer (:mod:`pml_anchors.app.session`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING

from .options import DATASET_HELP, add_common, fmt, given_config, json_arg, metrics_text, resolve_threads, setup_output

if TYPE_CHECKING:
    from ..app.torchrun_env import TorchrunEnv

#: where a run without --output goes, relative to the current directory
DEFAULT_RUNS = "runs"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train and evaluate one method with PML's trainer",
        description="Train a registered method with PML's MetricLossOnly (no miner), evaluate it with PML's "
        "AccuracyCalculator, and write DIR/results.json and DIR/checkpoint.pt.",
    )
    p.add_argument("--method", help="registered method (see `pml-anchors methods`), or baseline:<name>")
    p.add_argument("--dataset", help=DATASET_HELP)
    add_common(p)
    p.add_argument("--loss-kwargs", type=json_arg, help="JSON object of loss keyword arguments")
    p.add_argument("--hook-kwargs", type=json_arg, help="JSON object of trainer-hook keyword arguments")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--output",
        metavar="DIR",
        help=f"folder for results.json and checkpoint.pt (default: a new {DEFAULT_RUNS}/<method>-<YYYYmmdd-HHMMSS> "
        "in the current directory, printed at the start)",
    )
    where.add_argument("--no-output", action="store_true", help="write nothing: print the results only")
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
        "--overwrite",
        action="store_true",
        help="replace the run already in --output (results.json, checkpoint.pt); without it such a folder is refused",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel processes on this machine (gloo on CPU, one GPU each on CUDA); --batch-size stays the "
        "global batch; rank 0 evaluates and writes the files (default 1)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="with --nproc or under torchrun: how long a process waits for the others in a collective before the "
        "whole job fails, naming the process (default 300)",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="K",
        help="with --nproc: restart the processes up to K times after a failure, each time resuming from the last "
        "checkpoint in --output (as torchrun --max-restarts K does; default 0)",
    )
    p.add_argument(
        "--class-parallel",
        action="store_true",
        default=None,
        help="with --nproc or under torchrun: shard the loss's anchors over the processes, each holding C / N "
        "classes (exact; for millions of classes; e_ncm, c_ncm, reponet, fsc, proxy_anchor; docs/class_parallel.md)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    given = given_config(args)
    if getattr(args, "class_parallel", None):
        given["class_parallel"] = True
    if not args.resume and "method" not in given:
        raise ValueError("--method is required (see `pml-anchors methods`), unless --resume is given")
    from ..app.torchrun_env import detect

    torchrun = detect()  # under torchrun: this process is one worker of the job (docs/distributed.md)
    if torchrun is not None and (args.nproc != 1 or args.max_restarts):
        raise ValueError(
            "--nproc and --max-restarts start processes; under torchrun use its --nproc-per-node and --max-restarts"
        )
    mode = setup_output(args, own_progress=args.nproc == 1 and torchrun is None)
    from ..app.checkpoints import load_checkpoint

    values: dict = {}
    done: int | None = None
    checkpoint: dict = {}
    if args.resume:
        checkpoint = load_checkpoint(args.resume)
        values, done = dict(checkpoint["config"]), int(checkpoint["epoch"])
        if values.get("output") is not None:  # the run's folder is where its checkpoint is, wherever we are
            values["output"] = os.path.dirname(os.path.abspath(args.resume))
    for key in ("backbone_kwargs", "dataset_kwargs", "select_epoch"):  # options given on resume add to the run's
        if key in given and isinstance(values.get(key), dict):
            given[key] = {**values[key], **given[key]}
    patience = (values.get("select_epoch") or {}).get("patience")  # the run's, before options given now
    values.update(given)
    selection = checkpoint.get("selection") if args.resume else None
    if isinstance(selection, dict) and selection.get("stopped_at") is not None and done is not None:
        if values.get("epochs", 0) > done:  # train() goes no further: the selection had stopped the run
            print(
                f"this run stopped early at epoch {selection['stopped_at']} (the validation metric did not improve for "
                f"{patience} epoch(s)): --resume trains no further epoch; start a new run to train it longer",
                file=sys.stderr,
            )
    if args.resume and values.get("class_parallel") and args.nproc == 1 and torchrun is None:
        # its checkpoint holds every anchor (docs/class_parallel.md): one process trains on with all of them
        print("resuming a --class-parallel run in one process: this process holds every anchor", file=sys.stderr)
        values["class_parallel"] = False
    if args.no_output:
        values["output"] = None
    created: list[str] = []
    if not args.resume and not args.no_output and values.get("output") is None:
        if torchrun is not None and torchrun.max_restarts:  # a restart must find the folder of the first attempt
            method = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(values["method"]))
            run_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", torchrun.run_id or "job")
            values["output"] = os.path.join(DEFAULT_RUNS, f"{method}-torchrun-{run_id}")
        else:
            values["output"], created = default_output(str(values["method"]))
    threads_from = resolve_threads(values, given, torchrun.local_world_size if torchrun else args.nproc)
    try:
        return _train(args, values, done, checkpoint, mode, threads_from, announce=bool(created), torchrun=torchrun)
    except BaseException:
        for folder in reversed(created):  # a default folder that the failed run left empty is not kept
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


def default_output(method: str, now: float | None = None) -> tuple[str, list[str]]:
    """A new folder for a run of ``method`` (``runs/c_ncm-20250131-142501``, relative to the current directory;
    ``-2``, ``-3``, ... when it exists), and the folders that creating it will make (removed again when the run fails
    before writing anything into them)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = os.path.join(DEFAULT_RUNS, f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', method)}-{stamp}")
    folder, n = base, 1
    while os.path.exists(folder):
        n += 1
        folder = f"{base}-{n}"
    return folder, [p for p in (DEFAULT_RUNS, folder) if not os.path.exists(p)]


def _train(
    args: argparse.Namespace,
    values: dict,
    done: int | None,
    checkpoint: dict,
    mode: str,
    threads_from: str,
    *,
    announce: bool = False,
    torchrun: TorchrunEnv | None = None,
) -> int:
    from ..app.config import TrainConfig
    from ..app.progress import RunProgress
    from ..app.resume import checked_config
    from ..app.session import run as run_training

    config = checked_config(values, checkpoint) if args.resume else TrainConfig.from_dict(values)
    # the default folder is said when training starts (a configuration error is then the only line on stderr)
    header = f"writing the run to {config.output} (--output DIR to choose the folder, --no-output for none)"
    if done is not None and done >= config.epochs:
        print(
            f"nothing left to train: the checkpoint finished epoch {done} of {config.epochs}; evaluating it again "
            "(pass a larger --epochs to train on)",
            file=sys.stderr,
        )
    if torchrun is not None:
        from ..app.launch import train_torchrun  # one worker of torchrun's job, DDP + DistributedLoss

        worker_results = train_torchrun(
            config, torchrun, resume=args.resume, verbose=args.verbose, overwrite=args.overwrite
        )
        if worker_results is None:  # rank != 0: rank 0 prints and writes the results
            return 0
        results = worker_results
    elif args.nproc != 1 or args.max_restarts:
        from ..app.launch import launch  # N processes under torch's elastic agent, DDP + DistributedLoss

        results = launch(
            config,
            args.nproc,
            resume=args.resume,
            verbose=args.verbose,
            overwrite=args.overwrite,
            max_restarts=args.max_restarts,
        )
    else:
        progress = None
        if mode != "off":
            progress = RunProgress(
                mode, config.method, config.epochs, epoch_lines=True, header=header if announce else None
            )
        results = run_training(
            config, resume=args.resume, overwrite=args.overwrite, progress=progress, threads_from=threads_from
        )
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
        f"{r['seconds']:.1f} s on {r['device']}: {metrics_text(r)}" + _selection_text(r.get("selection"))
    )


def _selection_text(selection: dict | None) -> str:
    """What ``--select-epoch`` chose, after the test metrics (which are the selected epoch's)."""
    if not selection:
        return ""
    stopped = f", stopped early at epoch {selection['stopped_at_epoch']}" if selection["stopped_early"] else ""
    return (
        f"\n  tested once with epoch {selection['best_epoch']}, selected on {selection['selected_on'].split(' of the')[0]}"
        f" ({selection['metric']} {fmt(selection['best_value'])}{stopped})"
    )
