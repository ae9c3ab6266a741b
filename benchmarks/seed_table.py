"""Mean ± standard deviation over seeds of ``pml-anchors bench`` runs, each method against its PML counterpart.

    python benchmarks/seed_table.py runs/fashion_mnist/same_class_s0 runs/fashion_mnist/same_class_s1 ...
    python benchmarks/seed_table.py --json runs/fashion_mnist/open_set_s*     # the same numbers as JSON

Each folder is one ``bench`` run (its ``results.json``) at one seed, with the same settings otherwise. The table has,
per method and baseline, P@1 and MAP@R (PML's ``precision_at_1`` and ``mean_average_precision_at_r``, in %) as
mean ± sample standard deviation over the seeds, and for each method the difference to its PML counterpart
(``mnist_report.COUNTERPART``) paired by seed (same data order, initialisation seed and budget): mean ± std of
(method − counterpart). Methods missing from a seed's run (failed or not selected) are left out, and said so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from mnist_report import COUNTERPART

METRICS = {"P@1": "precision_at_1", "MAP@R": "mean_average_precision_at_r"}


def load_runs(folders: list[Path]) -> tuple[list[dict], list[dict[str, dict]]]:
    """The settings and ``{method: run}`` of each bench folder (failed runs have an ``error``)."""
    settings, runs = [], []
    for folder in folders:
        data = json.loads((folder / "results.json").read_text())
        settings.append(data.get("settings", {}))
        runs.append({r["method"]: r for r in data["runs"]})
    return settings, runs


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def summarize(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """Per method present at every seed: mean/sd of each metric, and the paired difference to its counterpart."""
    everywhere = [
        m for m in dict.fromkeys(m for r in runs for m in r) if all(m in r and "error" not in r[m] for r in runs)
    ]
    out: dict[str, dict] = {}
    for m in everywhere:
        row: dict = {key: _mean_sd([100 * r[m][metric] for r in runs]) for key, metric in METRICS.items()}
        counterpart = COUNTERPART.get(m)
        if counterpart in everywhere:
            row["counterpart"] = counterpart
            for key, metric in METRICS.items():
                row[f"delta {key}"] = _mean_sd([100 * (r[m][metric] - r[counterpart][metric]) for r in runs])
        out[m] = row
    return out


def markdown(summary: dict[str, dict], seeds: int) -> str:
    def cell(mean_sd: tuple[float, float], signed: bool = False) -> str:
        return f"{mean_sd[0]:{'+' if signed else ''}.2f} ± {mean_sd[1]:.2f}"

    lines = [
        f"| method | P@1 % ({seeds} seeds) | MAP@R % | PML counterpart | Δ P@1 per seed | Δ MAP@R per seed |",
        "|---|---|---|---|---|---|",
    ]
    for m, row in summary.items():
        cells = [m, cell(row["P@1"]), cell(row["MAP@R"])]
        if "counterpart" in row:
            cells += [row["counterpart"], cell(row["delta P@1"], True), cell(row["delta MAP@R"], True)]
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="bench output folders, one per seed")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args(argv)
    settings, runs = load_runs(args.folders)
    seeds = [s.get("seed") for s in settings]
    if len(set(seeds)) != len(seeds):
        parser.error(f"the folders must be runs at different seeds, got seeds {seeds}")
    summary = summarize(runs)
    missing = sorted({m for r in runs for m in r} - set(summary))
    if args.json:
        print(json.dumps({"seeds": seeds, "methods": summary, "left_out": missing}, indent=2))
    else:
        print(markdown(summary, len(runs)))
        if missing:
            print(f"\nLeft out (not in every seed's run): {', '.join(missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
