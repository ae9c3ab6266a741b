"""``pml-anchors eval``: rebuild a run from its checkpoint and evaluate it again (:mod:`pml_anchors.app.reload`)."""

from __future__ import annotations

import argparse
import json
import sys

from .options import PROTOCOLS, add_output_flags, add_recall_at, metrics_text, setup_output


def add_parser(subparsers: argparse._SubParsersAction) -> None:
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
    p.add_argument("--threads", type=int, help="torch.set_num_threads for the evaluation (default: the checkpoint's)")
    add_recall_at(p)
    p.add_argument("--output", help="also write the metrics to this JSON file")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_output_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_output(args, own_progress=False)  # on a terminal, PML's tester bar is the one display
    from ..app.reload import evaluate_checkpoint
    from ..app.results import write_json

    results = evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        data_root=args.data_root,
        protocol=args.protocol,
        test_limit=args.test_limit,
        device=args.device,
        dataloader_num_workers=args.workers,
        num_threads=args.threads,
        recall_at=args.recall_at,
        knn=args.knn,
    )
    if results.get("note"):
        print(f"note: {results['note']}", file=sys.stderr)
    if args.output:
        write_json(results, args.output)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        print(
            f"{results['method']} ({_epoch_text(results)}) on {results['dataset']} [{results['protocol']}]: {metrics_text(results)}"
        )
    return 0


def _epoch_text(results: dict) -> str:
    """``epoch 7``, or for a run that selected its epoch on validation ``epoch 6, selected on validation; 7 trained``."""
    if results["epoch"] == results.get("epochs_trained", results["epoch"]):
        return f"epoch {results['epoch']}"
    return f"epoch {results['epoch']}, selected on validation; {results['epochs_trained']} trained"
