"""What the torchrun benchmarks share (run as ``python benchmarks/<script>.py``, so this imports as a top-level
module): the metrics they compare, a free local port for the rendezvous and the environment of a fresh job."""

from __future__ import annotations

import os
import socket

#: the results.json metrics a distributed run is compared on with one process
METRICS = ("precision_at_1", "mean_average_precision_at_r", "r_precision", "nearest_anchor_accuracy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(**extra: str) -> dict[str, str]:
    """This process's environment without any torchrun variable of its own (a job started from inside another one
    would otherwise join it), one OpenMP thread per process, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "TORCHELASTIC", "MASTER_"))}
    env.pop("LOCAL_RANK", None)
    env.update(OMP_NUM_THREADS="1", **extra)
    return env
