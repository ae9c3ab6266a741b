"""Data-parallel runs against one process: ``torchrun --nnodes 2 --nproc-per-node 1`` (two nodes on this machine) and
``train --nproc 2`` (torch's elastic agent) train digits to the one-process metrics; prints a markdown table.

    .venv/bin/python benchmarks/torchrun_parity.py                        # lenetpp and small_cnn, 3 epochs
    .venv/bin/python benchmarks/torchrun_parity.py --backbones lenetpp --epochs 5 --method c_ncm

Every run uses ``--threads 1`` and the same seed. ``lenetpp`` has no BatchNorm: its distributed runs match one
process up to float rounding (DDP sums gradients in another order). ``small_cnn`` normalises with per-process
BatchNorm statistics (as plain DDP does), so its distributed metrics differ a little. Wall times include starting
the processes (importing torch in each).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _torchrun import METRICS, free_port, job_env


def _train(args: list[str], out: Path) -> tuple[dict, float]:
    started = time.perf_counter()
    command = [sys.executable, "-m", "pml_anchors.cli", "train", *args, "--output", str(out)]
    subprocess.run(command, check=True, env=job_env(), capture_output=True)
    return json.loads((out / "results.json").read_text()), time.perf_counter() - started


def _two_nodes(args: list[str], out: Path) -> tuple[dict, float]:
    port = free_port()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    launcher += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"parity-{port}"]
    command = [*launcher, "-m", "pml_anchors.cli", "train", *args, "--output", str(out)]
    started = time.perf_counter()
    nodes = [subprocess.Popen(command, env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in "ab"]
    for node in nodes:
        _, err = node.communicate()
        if node.returncode:
            raise RuntimeError(f"torchrun failed ({node.returncode}):\n{err.decode()[-3000:]}")
    return json.loads((out / "results.json").read_text()), time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="proxy_anchor")
    p.add_argument("--backbones", default="lenetpp,small_cnn")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones.split(","):
            train = ["--method", args.method, "--dataset", "digits", "--limit", str(args.limit), "--device", "cpu"]
            train += ["--threads", "1", "--backbone", backbone, "--epochs", str(args.epochs), "--no-progress"]
            train += ["--batch-size", str(args.batch_size), "--seed", "0"]
            base = Path(tmp) / backbone
            one, one_s = _train(train, base / "one")
            runs = {
                "1 process": (one, one_s),
                "--nproc 2": _train([*train, "--nproc", "2"], base / "nproc"),
                "torchrun 2 nodes x 1": _two_nodes(train, base / "torchrun"),
            }
            for name, (results, seconds) in runs.items():
                diff = max(abs(results[k] - one[k]) for k in METRICS)
                rows.append((backbone, name, *(results[k] for k in METRICS), diff, seconds))
    print(f"{args.method} on digits (limit {args.limit}), {args.epochs} epochs, global batch {args.batch_size}\n")
    print("| backbone | run | P@1 | MAP@R | R-precision | nearest-anchor acc | max abs diff vs 1 process | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for backbone, name, *values, diff, seconds in rows:
        cells = " | ".join(f"{v:.4f}" for v in values)
        print(f"| {backbone} | {name} | {cells} | {diff:.2e} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
