"""``pml-anchors tune``: search a method's hyper-parameters on validation folds of the training classes
(:mod:`pml_anchors.app.tune`; needs ``pip install "pml-anchors[tune]"``)."""

from __future__ import annotations

import argparse
import json
import os

from .options import (
    DATASET_HELP,
    SELECT_ARGS,
    add_common,
    fmt,
    given_config,
    json_arg,
    resolve_threads,
    setup_output,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune",
        help="tune a method's hyper-parameters on validation folds (Optuna TPE)",
        description="Search the method's declared hyper-parameters (MethodSpec.search_space) with Optuna's seeded "
        "TPE sampler: each trial trains on k-1 validation folds of the training split and scores the mean "
        "validation MAP@R over the k folds; the test split is never read. The study is kept in DIR/study.db: the "
        "same command continues it until --trials trials have finished; with --select-epoch a trial scores its best "
        "epoch (validation evaluated after every epoch) and best.json records it. Writes DIR/best.json. Needs "
        'pip install "pml-anchors[tune]".',
    )
    p.add_argument("--method", required=True, help="registered method (see `pml-anchors methods`), or baseline:<name>")
    p.add_argument("--dataset", default="digits", help=DATASET_HELP)
    p.add_argument("--trials", type=int, default=20, help="the budget: finished trials in the study (default 20)")
    p.add_argument(
        "--folds",
        type=int,
        default=4,
        help="validation folds of the training split (default 4): class-disjoint under --protocol open_set, "
        "stratified under same_class",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="processes searching the study together, each training its own trials (default 1; the threads are "
        "shared out among them); `tune` run again on the same --output also continues it",
    )
    add_common(p)
    for action in p._actions:  # train's selection flags: tune selects on its own --folds by MAP@R, or not at all
        if action.dest == "select_epoch":
            action.help = (
                "score every trial at its best epoch (each fold evaluates its validation fold after every epoch; "
                "--epochs is the budget) instead of its last; best.json records the epoch and bench --tuned trains "
                "for it (docs/tuning.md)"
            )
        elif action.dest in SELECT_ARGS.values():
            action.help = argparse.SUPPRESS
    p.add_argument("--loss-kwargs", type=json_arg, help="JSON object of fixed loss keyword arguments (not tuned)")
    p.add_argument("--hook-kwargs", type=json_arg, help="JSON object of trainer-hook keyword arguments")
    p.add_argument("--output", required=True, metavar="DIR", help="the study folder (study.db, best.json)")
    p.add_argument("--json", action="store_true", help="print best.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_output(args)
    from ..app.tune import BEST_FILE, require_optuna, tune

    require_optuna()  # before loading any data: one line naming the extra to install
    config = given_config(args)
    if "tensorboard" in config:
        raise ValueError("tune does not take --tensorboard: its trials write no runs")
    for key in ("method", "dataset", "output"):
        config.pop(key, None)
    select = config.pop("select_epoch", None)
    if select:  # --select-folds / --select-fold / --select-metric / --early-stopping
        given = ", ".join(f"--{SELECT_ARGS[key].replace('_', '-')}" for key in select)
        raise ValueError(
            f"tune takes no {given}: with --select-epoch it scores every trial at its best epoch on its own --folds, "
            "by MAP@R, without early stopping"
        )
    threads_from = resolve_threads(config, dict(config), max(1, args.jobs))
    quiet = args.no_progress
    best = tune(
        args.method,
        output=args.output,
        trials=args.trials,
        folds=args.folds,
        dataset=args.dataset,
        on_trial=(lambda line: None) if quiet else None,
        threads_from=threads_from,
        jobs=args.jobs,
        select_epoch=select is not None,
        **config,
    )
    if args.json:
        print(json.dumps(best, indent=2))
    else:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        at = f" at epoch {best['selected_epoch']}" if best.get("selected_epoch") else ""
        print(f"{best['method']}: best mean validation MAP@R {fmt(best['value'])}{at} (#{best['best_trial']}) {params}")
        print(f"wrote {BEST_FILE} and the study in {os.path.abspath(args.output)}")
    return 0
