"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this imports as a
top-level module): device setup and sync, the run's metadata and the JSON results file."""

from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any

import torch


def setup_device(name: str, threads: int | None) -> torch.device:
    """``torch.device(name)`` after ``torch.set_num_threads(threads)`` (when given); exits if CUDA is asked for
    but absent."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    return device


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_meta(device: torch.device, **extra: Any) -> dict[str, Any]:
    """Where and how the numbers were measured: device, threads, versions, the command line, plus ``extra``."""
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        **extra,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }


def write_results(path: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``{"meta": ..., "results": rows}`` as JSON to ``path``, or to stdout when ``path`` is ``"-"``."""
    payload = json.dumps({"meta": meta, "results": rows}, indent=1)
    if path == "-":
        print(payload, flush=True)
    else:
        with open(path, "w") as fh:
            fh.write(payload + "\n")
