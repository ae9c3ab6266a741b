"""``pml-anchors bench``: every method and PML baseline with the same backbone, budget and seed (:mod:`pml_anchors.app.bench`)."""

from __future__ import annotations

import argparse
import os
import sys

from .options import add_common, fmt, given_config, resolve_threads, setup_output


def add_parser(subparsers: argparse._SubParsersAction) -> None:
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
    add_common(p)
    p.add_argument("--output", default="bench", help="output folder (default ./bench)")
    p.add_argument(
        "--no-plots",
        action="store_true",
        help="skip the figures (accuracy_vs_time.png, accuracy_per_epoch.png, embeddings.png)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mode = setup_output(args)
    from ..app.bench import bench

    config = given_config(args)
    for key in ("dataset", "output", "method", "loss_kwargs", "hook_kwargs"):
        config.pop(key, None)
    epochs = config.pop("epochs", 2)
    threads_from = resolve_threads(config, dict(config))

    def report(r: dict) -> None:
        if "error" in r:
            if mode != "lines":  # in "lines" mode bench's own line says it
                print(f"{r['method']}: FAILED {r['error']}", file=sys.stderr)
        else:
            print(f"{r['method']}: P@1 {fmt(r['precision_at_1'])}, {r['seconds']:.1f} s", flush=True)

    summary = bench(
        args.dataset,
        args.methods,
        args.baselines,
        epochs=epochs,
        output=args.output,
        plots=not args.no_plots,
        on_result=report,
        progress=mode,
        threads_from=threads_from,
        **config,
    )
    written = ["results.md", "results.json", *(os.path.basename(f) for f in summary.get("figures", []))]
    print(f"wrote {', '.join(written)} in {args.output}")
    return 1 if any("error" in r for r in summary["runs"]) else 0
