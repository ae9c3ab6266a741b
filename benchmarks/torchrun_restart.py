"""Kill a worker of a 2-node ``torchrun --max-restarts 1`` job mid-run: the job restarts, resumes from its last
checkpoint and ends with the metrics of an uninterrupted run. Prints a markdown table.

    .venv/bin/python benchmarks/torchrun_restart.py                  # proxy_anchor, lenetpp, 4 epochs
    .venv/bin/python benchmarks/torchrun_restart.py --nodes 1        # one torchrun --standalone --nproc-per-node 2

Two ``torchrun --nnodes 2 --nproc-per-node 1`` on this machine (c10d rendezvous on 127.0.0.1, with
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, which multi-node restarts need: docs/distributed.md) train digits; once
rank 0 has written the first epoch's checkpoint, rank 1's worker gets ``SIGKILL``. The uninterrupted run is one
process (``lenetpp`` has no BatchNorm, so it equals the 2-process run up to float rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _torchrun import METRICS, free_port, job_env

#: multi-node restarts need a store per attempt (docs/distributed.md); the agents stop their workers quickly
RESTART_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "5"}


def _worker_of_rank(launchers: list[subprocess.Popen], rank: int) -> int | None:
    """The pid of the worker whose environment says ``RANK=rank``, among the launchers' children."""
    parents = {p.pid for p in launchers}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rfind(")") + 1 :].split()[1]) not in parents:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="proxy_anchor")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--limit", type=int, default=512)
    p.add_argument("--nodes", type=int, choices=(1, 2), default=2)
    args = p.parse_args()
    train = ["--method", args.method, "--dataset", "digits", "--limit", str(args.limit), "--device", "cpu"]
    train += ["--threads", "1", "--backbone", "lenetpp", "--epochs", str(args.epochs), "--batch-size", "64"]
    train += ["--no-progress", "--seed", "0"]
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one"
        started = time.perf_counter()
        cli = [sys.executable, "-m", "pml_anchors.cli", "train"]
        subprocess.run(
            [*cli, *train, "--output", str(one)], check=True, env=job_env(**RESTART_ENV), capture_output=True
        )
        one_s = time.perf_counter() - started

        out = Path(tmp) / "job"
        port = free_port()
        if args.nodes == 2:
            launcher = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
            launcher += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"restart-{port}"]
        else:
            launcher = ["--standalone", "--nproc-per-node", "2"]
        command = [sys.executable, "-m", "torch.distributed.run", *launcher, "--max-restarts", "1"]
        command += ["-m", "pml_anchors.cli", "train", *train, "--output", str(out)]
        started = time.perf_counter()
        logs = [open(Path(tmp) / f"node{n}.log", "wb") for n in range(args.nodes)]  # noqa: SIM115
        jobs = [
            subprocess.Popen(command, env=job_env(**RESTART_ENV), stdout=log, stderr=subprocess.STDOUT) for log in logs
        ]
        try:
            while not (out / "checkpoint.pt").exists():
                if any(j.poll() is not None for j in jobs):
                    raise RuntimeError("torchrun ended before the first checkpoint")
                time.sleep(0.05)
            victim = _worker_of_rank(jobs, 1)  # a child of its node's torchrun
            if victim is None:
                raise RuntimeError("rank 1's worker not found")
            os.kill(victim, signal.SIGKILL)
            killed_at = time.perf_counter() - started
            codes = [j.wait(timeout=600) for j in jobs]
        finally:
            for j in jobs:
                if j.poll() is None:
                    j.terminate()
                    j.wait()
            for log in logs:
                log.close()
        job_s = time.perf_counter() - started
        if any(codes):
            text = "\n".join((Path(tmp) / f"node{n}.log").read_text()[-3000:] for n in range(args.nodes))
            raise RuntimeError(f"torchrun failed {codes}:\n{text}")
        single = json.loads((one / "results.json").read_text())
        job = json.loads((out / "results.json").read_text())
    diff = max(abs(job[k] - single[k]) for k in METRICS)
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(job["history"], single["history"]))
    where = "2 nodes x 1" if args.nodes == 2 else "1 node x 2"
    print(f"{args.method} on digits (limit {args.limit}), lenetpp, {args.epochs} epochs, global batch 64\n")
    print("| run | restart_count | P@1 | MAP@R | R-precision | nearest-anchor acc | max abs diff | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r, seconds, d in (
        ("1 process, uninterrupted", single, one_s, 0.0),
        (f"torchrun {where}", job, job_s, diff),
    ):
        cells = " | ".join(f"{r[k]:.4f}" for k in METRICS)
        print(f"| {name} | {r.get('restart_count', 0)} | {cells} | {d:.2e} | {seconds:.1f} |")
    print(
        f"\nrank 1 killed {killed_at:.1f} s after the start (after epoch 1's checkpoint); per-epoch losses differ by at most {loss_diff:.2e}"
    )


if __name__ == "__main__":
    main()
