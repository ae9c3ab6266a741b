"""Peak memory and time of the evaluation's kNN metrics at large N: faiss (PML's FaissKNN) against BlockedKNN.

    python benchmarks/eval_memory.py                       # N = 10k, 60k, 200k; d = 512; 1 thread
    python benchmarks/eval_memory.py --sizes 10000 --device cuda --threads 4

``--knn pml`` measures PML's own ``AccuracyCalculator`` (faiss, PML's label counting) as a PML user runs it.
Each (N, search) pair runs in a fresh interpreter: N seeded embeddings (d = 512, L2-normalised, classes of
``--class-size`` items like SOP's) are scored by pml_anchors' ``RecallAtKCalculator`` (PML's AccuracyCalculator:
P@1, MAP@R, R-precision, mAP, R@1/2/4/8, ``k="max_bin_count"``). Printed per pair: the process's peak resident
memory (``VmHWM``: Python, torch, the embeddings and the search), the search's share of it (peak minus the
memory held before the metrics started), the wall time of ``get_accuracy``, the largest difference of any metric
to faiss's exact search at the same N, and how many queries BlockedKNN searched again with more candidates (its
float64 confirmation). On CUDA, the peak GPU memory (``torch.cuda.max_memory_allocated``) too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _memory import status_mb


def measure(n: int, d: int, class_size: int, knn: str, device: str, threads: int, block_mib: int) -> dict:
    import faiss
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from pml_anchors.evaluation import METRICS, RecallAtKCalculator
    from pml_anchors.evaluation.knn import BlockedKNN
    from pml_anchors.evaluation.recall_at_k import recall_metric

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) // class_size
    centres = torch.randn(int(labels[-1]) + 1, d, generator=g)
    x = centres[labels]
    x.add_(torch.randn(n, d, generator=g), alpha=2.5)  # overlapping classes: metrics neither 0 nor 1
    x = torch.nn.functional.normalize(x, dim=1).to(device)
    del centres
    knn_func = BlockedKNN(block_mib * 2**20) if knn == "blocked" else None  # None: PML's FaissKNN
    if knn == "pml":  # PML's own AccuracyCalculator, as a PML user runs it (faiss, PML's label counting)
        calculator = AccuracyCalculator(include=METRICS, k="max_bin_count", device=torch.device(device))
    else:
        include = (*METRICS, *map(recall_metric, (1, 2, 4, 8)))
        calculator = RecallAtKCalculator(
            include=include, k="max_bin_count", device=torch.device(device), knn_func=knn_func
        )
    before = status_mb("VmRSS")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    metrics = calculator.get_accuracy(x, labels.to(device))
    seconds = time.perf_counter() - t0
    out = {
        "n": n,
        "knn": knn,
        "seconds": seconds,
        "peak_mib": status_mb("VmHWM"),
        "before_mib": before,
        "metrics": metrics,
    }
    out["retried"] = knn_func.last_retried_rows if knn_func is not None else None
    if device.startswith("cuda"):
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,60000,200000", help="comma-separated N (default 10k, 60k, 200k)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--class-size", type=int, default=10, help="items per class (SOP: 2-12)")
    parser.add_argument(
        "--knn",
        default="faiss,blocked",
        help="what to compare: faiss, blocked (RecallAtKCalculator with that search), pml (PML's AccuracyCalculator)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--block-mib", type=int, default=256, help="BlockedKNN's budget for one block of distances")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: N,knn measured in this process
    args = parser.parse_args()
    if args.one:
        n, knn = args.one.split(",")
        print(json.dumps(measure(int(n), args.dim, args.class_size, knn, args.device, args.threads, args.block_mib)))
        return
    print(f"d = {args.dim}, classes of {args.class_size}, device {args.device}, {args.threads} thread(s)")
    print(
        "| N | search | peak RSS MiB | search's share MiB | GPU peak MiB | seconds | max |Δ metric| vs faiss | queries re-searched |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in map(int, args.sizes.split(",")):
        results = {}
        for knn in args.knn.split(","):  # each in a fresh interpreter: its own peak memory
            cmd = [sys.executable, __file__, "--one", f"{n},{knn}", *_passthrough(args)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"N = {n}, {knn} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            results[knn] = json.loads(proc.stdout.splitlines()[-1])
        reference = results.get("faiss", {}).get("metrics")
        for knn, r in results.items():
            common = [] if reference is None else [k for k in reference if k in r["metrics"]]
            delta = f"{max(abs(r['metrics'][k] - reference[k]) for k in common):.1e}" if common else "-"
            gpu = f"{r['gpu_peak_mib']:.0f}" if "gpu_peak_mib" in r else "-"
            print(
                f"| {n} | {knn} | {r['peak_mib']:.0f} | {r['peak_mib'] - r['before_mib']:.0f} | {gpu} | "
                f"{r['seconds']:.1f} | {delta} | {_dash(r['retried'])} |",
                flush=True,
            )
        print(f"<!-- N = {n} metrics: {json.dumps({knn: r['metrics'] for knn, r in results.items()})} -->", flush=True)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _passthrough(args: argparse.Namespace) -> list[str]:
    return [
        f"--dim={args.dim}",
        f"--class-size={args.class_size}",
        f"--device={args.device}",
        f"--threads={args.threads}",
        f"--block-mib={args.block_mib}",
    ]


if __name__ == "__main__":
    main()
