"""CAM's repeller at large K: time and peak memory of the first step (the neighbour list's full pair search) and
of a later step, each K in its own process.

Usage::

    python benchmarks/cam_large_k.py                            # K = 10k, 50k, 200k, 1M at d = 128
    python benchmarks/cam_large_k.py --ks 10000,50000 --baseline 3d8235a   # also the repeller of a git revision
    python benchmarks/cam_large_k.py --ks 3000000               # above MAX_SEARCH_MACS: refused at construction
    python benchmarks/cam_large_k.py --json out.json            # also write machine-readable results

What is measured
----------------
``pml_anchors.get_loss("cam", K, d)`` with its defaults (margin 2, anchors ``standard_normal``, L_R over all K
anchors through the exact neighbour list), trained by Adam (lr 1e-3, the paper's) on random embeddings (B x d,
standard normal) with uniformly random labels. One step is ``loss(embeddings, labels).backward()``; the
optimizer step after it is not timed. ``first step`` is the first one: it snapshots the anchors and runs the
full pair search (K^2 / 2 x (d + 2) multiply-adds). ``later step`` is the median of ``--steps`` steps after it:
an O(K d) displacement check plus the listed pairs. ``first step +RSS`` is how far the process's high-water
mark (``VmHWM``: torch's allocations included, which ``tracemalloc`` does not see) rose above the RSS of the
built loss during the first forward and backward: the snapshot (K x d), the search's buffers and the anchors'
gradient (K x d). ``peak RSS`` is the high-water mark from then on, through the later steps (also Adam's two
K x d states, the anchors, torch itself). The mark is reset after construction (``/proc/self/clear_refs``), whose
float64 draw of the anchors is not the repeller's. Every (K, code) runs in a fresh subprocess (``--timeout``
seconds at most, killed beyond ``--max-rss-gb``), so that one measurement cannot inflate the next one's peak.

``--baseline REV`` also runs the neighbour list of ``plugins/cam/pml_anchors_cam/repeller.py`` as of git
revision REV (read with ``git show``) for K up to ``--baseline-max-k``, side by side: same loss, same data.
``L_R`` is the repeller of the first batch, to check that both agree. The machine's load average is printed
before and after: the numbers are wall-clock times.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _memory import reset_peak, status_mb

ROOT = Path(__file__).resolve().parent.parent
REPELLER = "plugins/cam/pml_anchors_cam/repeller.py"


def _load_baseline(rev: str) -> Any:
    """The repeller module as of git revision ``rev``."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{REPELLER}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_repeller.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_repeller", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process (printed as one JSON line)."""
    import torch
    from pytorch_metric_learning.reducers import DoNothingReducer

    import pml_anchors

    if args.threads:
        torch.set_num_threads(args.threads)
    cap = args.max_rss_gb * 1024

    def watchdog() -> None:
        while True:
            rss = status_mb("VmRSS")
            if rss > cap:
                print(json.dumps({"killed_at_mb": round(rss)}), flush=True)
                os._exit(3)
            time.sleep(0.05)

    threading.Thread(target=watchdog, daemon=True).start()
    if args.code != "new":
        from pml_anchors_cam import cam_loss

        cam_loss.NeighborList = _load_baseline(args.code).NeighborList  # type: ignore[misc]
    k, d = args.k, args.dim
    t0 = time.perf_counter()
    try:
        loss = pml_anchors.get_loss("cam", k, d, seed=0, anchor_kwargs={"std": args.std})
    except ValueError as err:
        return {"refused": str(err), "refuse_s": time.perf_counter() - t0}
    optimizer = torch.optim.Adam(loss.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(args.batch, d, generator=g), torch.randint(0, k, (args.batch,), generator=g))
        for _ in range(args.steps + 1)
    ]
    reset_peak()  # the anchors' float64 draw at construction must not count as the steps' peak
    base = status_mb("VmRSS")
    hwm = []

    def step(i: int) -> float:
        emb, labels = batches[i]
        start = time.perf_counter()
        loss(emb, labels).backward()
        took = time.perf_counter() - start
        hwm.append(status_mb("VmHWM"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return took

    first = step(0)
    later = [step(i) for i in range(1, args.steps + 1)]
    peak = status_mb("VmHWM")
    neighbors = loss._neighbors
    listed = None if neighbors is None or neighbors.list is None else int(neighbors.list.shape[1])
    loss.reducer = DoNothingReducer()
    with torch.no_grad():
        repeller = float(loss(*batches[0])["repeller_loss"]["losses"])
    return {
        "first_s": first,
        "later_s": statistics.median(later),
        "peak_mb": peak,
        "first_extra_mb": hwm[0] - base,
        "base_mb": base,
        "listed_pairs": listed,
        "stats": None if neighbors is None else dict(neighbors.stats),
        "repeller": repeller,
    }


def run_one(args: argparse.Namespace, k: int, code: str) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--k",
        str(k),
        "--code",
        code,
        "--dim",
        str(args.dim),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--std",
        str(args.std),
        "--max-rss-gb",
        str(args.max_rss_gb),
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"k": k, "code": code, "timeout_s": args.timeout}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"error": done.stderr.strip().splitlines()[-1:]}
    return {"k": k, "code": code, "wall_s": time.perf_counter() - start, **result}


def _fmt(row: dict[str, Any]) -> str:
    code = "this tree" if row["code"] == "new" else f"`{row['code']}`"
    if "refused" in row:
        message = row["refused"].split(". Use")[0]
        return f"| {row['k']:,} | {code} | refused in {row['refuse_s']:.1f} s | | | | | | ValueError: {message} |"
    if "timeout_s" in row:
        return f"| {row['k']:,} | {code} | > {row['timeout_s']} s (stopped) | | | | | | |"
    if "killed_at_mb" in row:
        return f"| {row['k']:,} | {code} | killed | | > {row['killed_at_mb']:,} | | | | RSS cap reached |"
    if "error" in row:
        return f"| {row['k']:,} | {code} | error | | | | | | {row['error']} |"
    listed = "overflow" if row["listed_pairs"] is None else f"{row['listed_pairs']:,}"
    return (
        f"| {row['k']:,} | {code} | {row['first_s']:.2f} | {row['later_s'] * 1e3:.1f} | {row['first_extra_mb']:,.0f} | "
        f"{row['peak_mb']:,.0f} | {listed} | {row['repeller']:.6g} | |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="10000,50000,200000,1000000", help="numbers of classes K, comma-separated")
    parser.add_argument("--dim", type=int, default=128, help="embedding width d (default 128)")
    parser.add_argument("--batch", type=int, default=256, help="batch size B (default 256)")
    parser.add_argument("--steps", type=int, default=5, help="later steps timed, median reported (default 5)")
    parser.add_argument("--std", type=float, default=1.0, help="std of the standard_normal anchors (default 1)")
    parser.add_argument("--baseline", metavar="REV", help="also run the repeller of this git revision")
    parser.add_argument("--baseline-max-k", type=int, default=50000, help="largest K for --baseline (50000)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per measurement (default 1800)")
    parser.add_argument("--max-rss-gb", type=float, default=16.0, help="kill a measurement above this RSS (16)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in every measurement")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--code", default="new", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return

    import torch

    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "threads": args.threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "d": args.dim,
        "batch": args.batch,
        "load_before": os.getloadavg(),
    }
    print(
        f"CAM repeller at large K: d={args.dim}, B={args.batch}, {meta['machine']}, torch {meta['torch']}, "
        f"threads {meta['threads']}, load average {meta['load_before'][0]:.2f}",
        flush=True,
    )
    header = (
        "| K | code | first step s (full build) | later step ms | first step +RSS MB | peak RSS MB | listed pairs "
        "| L_R | note |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|---|"
    )
    print(header, flush=True)
    rows = []
    for k in (int(v) for v in args.ks.split(",")):
        codes = ["new"] + ([args.baseline] if args.baseline and k <= args.baseline_max_k else [])
        for code in codes:
            row = run_one(args, k, code)
            rows.append(row)
            print(_fmt(row), flush=True)
    meta["load_after"] = os.getloadavg()
    print(f"load average after: {meta['load_after'][0]:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
