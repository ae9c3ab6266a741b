"""The report scripts behind docs/results.md and docs/evaluation.md: benchmarks/seed_table.py (mean ± std over
seeds, paired differences) and benchmarks/eval_memory.py (kNN search memory and agreement with faiss)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench_folder(tmp_path: Path, seed: int, results: dict[str, tuple[float, float]]) -> Path:
    """A folder as ``pml-anchors bench`` writes it: ``results.json`` with one run per method."""
    folder = tmp_path / f"s{seed}"
    folder.mkdir()
    runs = [
        {"method": m, "precision_at_1": p1, "mean_average_precision_at_r": mapr} for m, (p1, mapr) in results.items()
    ]
    runs.append({"method": "fsc", "error": f"failed at seed {seed}"})  # a failed run is left out
    (folder / "results.json").write_text(json.dumps({"settings": {"seed": seed}, "runs": runs}))
    return folder


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, check=True)


def test_seed_table_means_stds_and_paired_differences(tmp_path):
    per_seed = [
        {"c_ncm": (0.90, 0.60), "pml_normalized_softmax": (0.88, 0.50)},
        {"c_ncm": (0.91, 0.62), "pml_normalized_softmax": (0.90, 0.55)},
        {"c_ncm": (0.86, 0.58), "pml_normalized_softmax": (0.87, 0.52)},
    ]
    folders = [str(bench_folder(tmp_path, seed, r)) for seed, r in enumerate(per_seed)]
    out = json.loads(run_script("benchmarks/seed_table.py", "--json", *folders).stdout)
    c_ncm = out["methods"]["c_ncm"]
    p1 = [100 * r["c_ncm"][0] for r in per_seed]
    delta = [100 * (r["c_ncm"][1] - r["pml_normalized_softmax"][1]) for r in per_seed]
    assert c_ncm["P@1"] == pytest.approx([statistics.mean(p1), statistics.stdev(p1)])
    assert c_ncm["delta MAP@R"] == pytest.approx([statistics.mean(delta), statistics.stdev(delta)])
    assert c_ncm["counterpart"] == "pml_normalized_softmax" and out["left_out"] == ["fsc"]
    table = run_script("benchmarks/seed_table.py", *folders).stdout
    assert "| c_ncm | 89.00 ± 2.65 | 60.00 ± 2.00 | pml_normalized_softmax | +0.67 ± 1.53 | +7.67 ± 2.08 |" in table


def test_seed_table_refuses_two_runs_of_one_seed(tmp_path):
    a = bench_folder(tmp_path, 0, {"c_ncm": (0.9, 0.6)})
    b = tmp_path / "again"
    b.mkdir()
    (b / "results.json").write_text((a / "results.json").read_text())
    proc = subprocess.run(
        [sys.executable, "benchmarks/seed_table.py", str(a), str(b)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and "different seeds, got seeds [0, 0]" in proc.stderr


def test_eval_memory_compares_both_searches_at_a_small_size():
    out = run_script("benchmarks/eval_memory.py", "--sizes", "400", "--dim", "16", "--class-size", "4").stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 400 ")]
    assert [r[1].strip() for r in rows] == ["faiss", "blocked"]
    faiss, blocked = rows
    assert float(blocked[6]) < 1e-6 and int(blocked[7]) >= 0  # the same metrics; queries re-searched counted
    assert all(float(r[2]) > 0 and float(r[5]) >= 0 for r in rows)  # peak memory and time measured
