"""``pml-anchors bench``: every method and PML baseline with the same backbone, budget and seed (:mod:`pml_anchors.app.bench`)."""

from __future__ import annotations

import argparse
import os
import sys

from .options import DATASET_HELP, add_common, fmt, given_config, int_list, resolve_threads, setup_output


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark methods and PML baselines",
        description="Train every selected method and PML baseline with the same backbone, budget and seed; write "
        "DIR/results.md, DIR/results.json, DIR/accuracy_vs_time.png and DIR/embeddings.png.",
    )
    p.add_argument("--dataset", default="digits", help=DATASET_HELP)
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
    p.add_argument(
        "--tuned",
        nargs="+",
        metavar="STUDY_DIR",
        help="train each method of these `pml-anchors tune` studies (a study folder, or a folder of them) with its "
        "tuned configuration over --seeds; report test MAP@R, P@1 and R@K as mean ± 95%% CI and the paired t-test "
        "against the method's PML counterpart (--methods, --baselines and the training settings come from the studies)",
    )
    p.add_argument(
        "--seeds",
        type=int_list("whole numbers such as 0,1,2"),
        metavar="S1,S2,...",
        help="with --tuned: the training seeds (default 0,1,2)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mode = setup_output(args)
    if args.tuned:
        return _run_tuned(args)
    if args.seeds:
        raise ValueError("--seeds goes with --tuned STUDY_DIR (a plain bench trains each method once, with --seed)")
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


def _run_tuned(args: argparse.Namespace) -> int:
    """``bench --tuned``: :func:`pml_anchors.app.tuned_bench.bench_tuned`."""
    from ..app.tuned_bench import bench_tuned

    config = given_config(args)
    for key in ("dataset", "output", "method", "loss_kwargs", "hook_kwargs"):
        config.pop(key, None)
    resolve_threads(config, dict(config))

    def report(r: dict) -> None:
        print(
            f"{r['method']} seed {r['seed']}: MAP@R {fmt(r['mean_average_precision_at_r'])}, P@1 {fmt(r['precision_at_1'])}"
        )

    seeds = args.seeds or (0, 1, 2)
    plots = not args.no_plots
    summary = bench_tuned(args.tuned, seeds=seeds, output=args.output, on_result=report, plots=plots, **config)
    print(f"wrote {', '.join(['results.md', 'results.json', *summary['figures']])} in {args.output}")
    return 0
