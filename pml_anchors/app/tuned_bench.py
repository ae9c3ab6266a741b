"""``pml-anchors bench --tuned STUDY_DIR ...``: each method trained with its tuned configuration over several seeds.

Each study folder (``pml-anchors tune``'s ``best.json``; or a parent folder of several) gives a method and its best
configuration. Every method then trains once per seed on the full training split, with the study's data split (its
seed: the test items are the ones no trial saw) and the seed only changing the initialisation and the batches, and
is evaluated once on the test split. The table reports test MAP@R, P@1 and Recall@K as mean ± the 95 % Student-t
interval over the seeds (:mod:`pml_anchors.app.stats`) and, where the method's counterpart was tuned too, the paired
t-test of their per-seed MAP@R. The counterpart is the one the method's spec declares (``MethodSpec.counterpart``,
e.g. CAM → ``baseline:pml_contrastive``, E-NCM → ``baseline:cross_entropy``), else the baseline running its loss's
``pml_counterpart`` (C-NCM → ``NormalizedSoftmaxLoss``). Writes ``results.md`` and ``results.json`` into ``output``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..evaluation.recall_at_k import recall_metrics_in
from .baselines import PREFIX, counterpart_of
from .config import TrainConfig
from .output_folder import write_atomically
from .plots import plot_intervals, plots_unavailable
from .results import results_dict, test_classes, write_json
from .session import build, final_metrics, load_config_dataset, resolve_method, train
from .stats import mean_ci, paired_t
from .tune import BEST_FILE, best_config

__all__ = ["HEADLINE", "bench_tuned", "find_studies"]

HEADLINE = "mean_average_precision_at_r"
#: the settings every tuned method must share, for the comparison to be fair (the same trunk, batch, budget, data)
SHARED: tuple[str, ...] = ("dataset", "data_root", "protocol", "epochs", "batch_size", "backbone", "backbone_kwargs")
SHARED += ("optimizer", "limit", "test_limit", "train_per_class", "dataset_kwargs", "lr_schedule", "amp")


def find_studies(folders: Sequence[str | Path]) -> list[Path]:
    """The ``best.json`` files of ``folders``: a study folder, or a parent folder whose sub-folders are studies."""
    found: list[Path] = []
    for folder in map(Path, folders):
        if (folder / BEST_FILE).is_file():
            found.append(folder / BEST_FILE)
            continue
        if not folder.is_dir():
            raise ValueError(f"--tuned {folder}: no such folder")
        inner = sorted(p / BEST_FILE for p in folder.iterdir() if (p / BEST_FILE).is_file())
        if not inner:
            raise ValueError(
                f"--tuned {folder}: neither a study folder ({BEST_FILE}) nor a folder of them; run pml-anchors tune first"
            )
        found += inner
    return found


def _check_shared(studies: list[dict[str, Any]]) -> None:
    first = studies[0]["config"]
    selected = {s["method"]: s.get("selected_epoch") is not None for s in studies}
    if len(set(selected.values())) > 1:
        chose = ", ".join(m for m, s in selected.items() if s)
        did_not = ", ".join(m for m, s in selected.items() if not s)
        raise ValueError(
            f"some studies were tuned with --select-epoch and some not ({chose} selected their epoch; {did_not} did "
            "not): a fair comparison tunes every method the same way; tune the others the same way into another "
            "--output, or leave their folders out"
        )
    for study in studies[1:]:
        differ = [k for k in SHARED if study["config"].get(k) != first.get(k)]
        if study["config"].get("embedding_size") != first.get("embedding_size"):
            differ.append("embedding_size")
        if differ:
            raise ValueError(
                f"the studies of {studies[0]['method']!r} and {study['method']!r} were tuned with different "
                f"{', '.join(differ)}: a fair comparison trains every method with the same settings"
            )


def _counterpart(method: str) -> str | None:
    """What the method is paired with (:func:`~pml_anchors.app.baselines.counterpart_of`: its spec's
    ``counterpart``, or the baseline running its loss's ``pml_counterpart``)."""
    return counterpart_of(resolve_method(method)[0])


def bench_tuned(
    tuned: Sequence[str | Path],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    output: str | Path = "bench",
    on_result: Callable[[dict[str, Any]], None] | None = None,
    progress: str | None = None,
    plots: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Train every tuned method of ``tuned`` over ``seeds``; write ``results.md``, ``results.json`` and, with
    ``plots`` and matplotlib, ``intervals.png`` (:func:`~pml_anchors.app.plots.plot_intervals`).

    ``overrides``: :class:`TrainConfig` fields applied to every run (``device``, ``num_threads``, ``knn``,
    ``dataloader_num_workers``, ...); not the tuned or shared settings, which come from the studies.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct whole numbers, at least one, got {seeds}")
    studies = [{**json.loads(path.read_text()), "path": str(path.parent)} for path in find_studies(tuned)]
    _check_shared(studies)
    forbidden = sorted(set(overrides) & {*SHARED, "lr", "weight_decay", "loss_kwargs", "loss_lr_multiplier", "seed"})
    if forbidden:
        raise ValueError(f"bench --tuned takes {forbidden} from the studies; leave them out")
    if overrides.get("select_epoch") is not None and any(s.get("selected_epoch") is not None for s in studies):
        raise ValueError(
            "these studies selected their epoch on validation (tune --select-epoch), and bench --tuned trains each "
            "method for it: leave out --select-epoch (it would select again, on a fold taken from the training data)"
        )
    names = [str(s["config"]["method"]) for s in studies]  # as tuned: a method or baseline:<name>
    if len(set(names)) != len(names):
        raise ValueError(f"--tuned names a method twice: {names}")
    splits = None
    methods: list[dict[str, Any]] = []
    for study, name in zip(studies, names):
        config = best_config(study)
        data_config = TrainConfig.from_dict({**config.to_dict(), **overrides})
        if splits is None:  # the studies share the dataset and its seed-drawn split (checked above)
            splits = load_config_dataset(data_config)
        runs = []
        for seed in seeds:
            cfg = TrainConfig.from_dict({**data_config.to_dict(), "seed": seed, "output": None})
            started = time.perf_counter()
            session = train(build(cfg, splits=splits))
            result = results_dict(session, final_metrics(session), wall_seconds=time.perf_counter() - started)
            runs.append(result)
            if progress == "lines":
                print(f"{name} seed {seed}: MAP@R {result[HEADLINE]:.4f}", file=sys.stderr, flush=True)
            if on_result is not None:
                on_result(result)
        methods.append({"name": name, "study": study, "runs": runs})
    assert splits is not None
    summary = _summarise(methods, seeds, splits)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    summary["figures"] = []
    if plots:
        if (note := plots_unavailable()) is not None:
            print(note, file=sys.stderr)
        else:
            plot_intervals(summary, out / "intervals.png")
            summary["figures"].append("intervals.png")
    write_json(summary, out / "results.json")
    text = markdown_table(summary)
    write_atomically(out / "results.md", lambda tmp: tmp.write_text(text))
    return summary


def _summarise(methods: list[dict[str, Any]], seeds: list[int], splits: Any) -> dict[str, Any]:
    by_name = {m["name"]: m for m in methods}
    rows = []
    for m in methods:
        runs = m["runs"]
        metrics = ["precision_at_1", HEADLINE, *(k for _, k in recall_metrics_in(runs[0]))]
        row: dict[str, Any] = {
            "method": m["name"],
            "baseline": m["name"].startswith(PREFIX),
            "study": m["study"]["path"],
            "params": m["study"]["params"],
            "tuned": sorted(m["study"]["tuned"]),
            "budget": m["study"]["budget"],
            "folds": m["study"]["folds"],
            "validation_value": m["study"]["value"],
            "epochs": m["study"].get("selected_epoch", m["study"]["epochs"]),  # trained for: selected, or the budget
            "per_seed": {k: [r.get(k) for r in runs] for k in metrics},
            "stats": {k: mean_ci([r[k] for r in runs]).as_dict() for k in dict.fromkeys(metrics)},
        }
        counterpart = None if row["baseline"] else _counterpart(m["name"])
        row["pml_counterpart"] = counterpart
        if counterpart in by_name:
            other = [r[HEADLINE] for r in by_name[counterpart]["runs"]]
            row["vs_pml_counterpart"] = paired_t([r[HEADLINE] for r in runs], other).as_dict()
        rows.append(row)
    first = methods[0]["study"]
    return {
        "protocol": "tuned on validation folds of the training split, tested once per seed",
        "dataset": first["dataset"],
        "data_protocol": first["protocol"],
        "data_seed": first["seed"],
        "seeds": seeds,
        "epochs": first["epochs"],
        "epoch_selected_on_validation": first.get("selected_epoch") is not None,
        "folds": first["folds"],
        "test_size": len(splits.test),
        **test_classes(splits.test),
        "confidence": 0.95,
        "methods": rows,
        "runs": [r for m in methods for r in m["runs"]],
    }


def _cell(stats: dict[str, Any] | None) -> str:
    if not stats or stats.get("mean") is None:
        return "–"
    return f"{stats['mean']:.4f}" + ("" if stats.get("ci") is None else f" ± {stats['ci']:.4f}")


def _train_items(summary: dict[str, Any]) -> str:
    """``"the N training items"`` (``limit`` / ``--train-per-class`` of the studies included), as the runs report."""
    sizes = sorted({r["train_size"] for r in summary.get("runs", []) if r.get("train_size") is not None})
    return f"the {sizes[0]} training items" if len(sizes) == 1 else "the training split"


def _epochs_text(summary: dict[str, Any]) -> str:
    if summary.get("epoch_selected_on_validation"):
        return f"the epoch its study selected on validation (at most {summary['epochs']}; per row)"
    return f"{summary['epochs']} epoch(s)"


def markdown_table(summary: dict[str, Any]) -> str:
    """The ``results.md`` of a tuned bench: the protocol line, then one row per method."""
    rows = summary["methods"]
    recalls = sorted({(int(k.rsplit("_", 1)[1]), k) for r in rows for k in r["stats"] if k.startswith("recall_at_")})
    recalls = [(k, name) for k, name in recalls if k > 1]
    n, seeds = summary["test_size"], summary["seeds"]
    lines = [
        f"# pml-anchors bench --tuned: {summary['dataset']} ({summary['data_protocol']})",
        "",
        f"Each method trained with its tuned hyper-parameters for {_epochs_text(summary)} on {_train_items(summary)}"
        f", once per seed ({', '.join(map(str, seeds))}), and tested once: {n} test items"
        + (f" in {summary['test_classes']} classes" if summary.get("test_classes") else "")
        + f", the split of data seed {summary['data_seed']}, never read while tuning. Cells: mean ± the 95 % "
        f"Student-t interval over the {len(seeds)} seeds. Tuning: Optuna TPE on {summary['folds']} validation folds "
        "of the training split, mean validation MAP@R; budget and tuned parameters per row. vs counterpart: the paired "
        "t-test of the per-seed test MAP@R against the method's counterpart (MethodSpec.counterpart; difference ± "
        "interval, two-sided p).",
        "",
    ]
    header = [
        "method",
        "MAP@R",
        "P@1",
        *(f"R@{k}" for k, _ in recalls),
        "vs counterpart (Δ MAP@R, p)",
        "budget",
        "tuned",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        name = r["method"].removeprefix(PREFIX) + (" (PML)" if r["baseline"] else "")
        versus = "–"
        if "vs_pml_counterpart" in r:
            test = r["vs_pml_counterpart"]
            p = "–" if test["p"] is None else f"{test['p']:.3g}"
            versus = f"{_cell(test['difference'])} vs {r['pml_counterpart'].removeprefix(PREFIX)}, p {p}"
        elif r["pml_counterpart"]:
            versus = f"({r['pml_counterpart'].removeprefix(PREFIX)} not tuned)"
        tuned = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        if summary.get("epoch_selected_on_validation"):
            tuned = f"{tuned}, epochs={r['epochs']}".lstrip(", ")
        cells = [name, _cell(r["stats"].get(HEADLINE)), _cell(r["stats"].get("precision_at_1"))]
        cells += [_cell(r["stats"].get(m)) for _, m in recalls]
        cells += [versus, f"{r['budget']} trials × {r['folds']} folds", tuned]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
