"""Benchmark every registered method and PML's baselines with the same backbone, budget and seed.

:func:`bench` trains each run with :mod:`pml_anchors.app.session` (evaluating after every epoch) and
writes, under ``output``:

* ``results.md``: one row per run (P@1, Recall@K, MAP@R, R-precision, mAP, nearest-anchor accuracy, seconds);
* ``results.json``: the settings and every run's full results (including per-epoch history);
* ``accuracy_vs_time.png``: test P@1 after each epoch against cumulative training seconds (no evaluation
  time), in the style of Proxy Anchor's Figure 1;
* ``accuracy_per_epoch.png``: test P@1 and MAP@R against epoch;
* ``embeddings.png``: the test embeddings in 2-D (t-SNE of at most 2000 points in the space the kNN uses, the
  anchors/proxies embedded with them), coloured by class (:mod:`pml_anchors.app.plots`).

The figures need matplotlib (a dependency): in an environment without it ``bench`` says so once on stderr, before
training, and writes the results without them.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluation.recall_at_k import recall_metrics_in
from ..evaluation.tester import METRICS
from ..plugin.api import get_method, list_methods
from .baselines import BASELINES, PREFIX, get_baseline
from .config import TrainConfig
from .data.validation import validation_folds
from .plots import plot_accuracy_per_epoch, plot_accuracy_vs_time, plot_embeddings, plots_unavailable, project
from .progress import RunProgress
from .results import results_dict, test_classes, write_json
from .session import build, final_metrics, load_config_dataset, train
from .tensorboard import require_tensorboard


def select_methods(methods: str | Sequence[str]) -> list[str]:
    """``"all"`` → every registered method; ``"none"``/``""`` → none; else a comma list (checked)."""
    if isinstance(methods, str):
        if methods.strip().lower() == "all":
            specs = list_methods()
            counts: dict[str, int] = {}
            for s in specs:
                counts[s.name] = counts.get(s.name, 0) + 1
            return [s.name if counts[s.name] == 1 else s.qualified_name for s in specs]
        if methods.strip().lower() in ("", "none"):
            return []
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    for m in methods:
        get_method(m)  # unknown → UnknownMethodError with suggestions
    return list(methods)


def select_baselines(baselines: str | Sequence[str]) -> list[str]:
    """``"all"``, ``"none"`` or a comma list of :data:`pml_anchors.app.baselines.BASELINES` names."""
    if isinstance(baselines, str):
        if baselines.strip().lower() == "all":
            return list(BASELINES)
        if baselines.strip().lower() in ("", "none"):
            return []
        baselines = [b.strip() for b in baselines.split(",") if b.strip()]
    return [get_baseline(b).name for b in baselines]


def bench(
    dataset: str = "digits",
    methods: str | Sequence[str] = "all",
    baselines: str | Sequence[str] = "all",
    *,
    epochs: int = 2,
    output: str | Path = "bench",
    plots: bool = True,
    on_result: Any = None,
    progress: str | None = None,
    threads_from: str | None = None,
    **config: Any,
) -> dict[str, Any]:
    """Train and evaluate each method and baseline; write ``results.md/json`` and plots to ``output``.

    ``config`` holds further :class:`~pml_anchors.app.config.TrainConfig` fields shared by every run
    (``data_root``, ``protocol``, ``seed``, ``device``, ``limit``, ``batch_size``, ``lr``, ...).
    A run that raises is recorded with its error and the others go on. ``on_result(results)`` is
    called after each run (e.g. to print its result). ``progress`` (:mod:`pml_anchors.app.progress`): ``"bar"``, one
    progress bar per run on stderr; ``"lines"``, one line per run on stderr (for a log file); ``"off"`` or ``None``,
    nothing. ``threads_from``: why ``num_threads`` is what it is (:mod:`pml_anchors.app.threads`), recorded.
    """
    names = [*select_methods(methods), *(PREFIX + b for b in select_baselines(baselines))]
    if not names:
        raise ValueError("nothing to benchmark: no methods and no baselines selected")
    output = Path(output)
    base = TrainConfig(method=names[0], dataset=dataset, epochs=epochs, eval_every_epoch=True, **config)
    if base.tensorboard:
        require_tensorboard()  # once, before any run, instead of every run failing on it
    if plots and (note := plots_unavailable()) is not None:
        print(note, file=sys.stderr)  # before training; the results are still written
        plots = False
    splits = load_config_dataset(base)
    if base.select_epoch is not None:  # too few classes or items for the folds: one error now, not one per method
        choice = base.select_epoch
        validation_folds(splits.train_labels, choice["folds"], choice["seed"], splits.protocol)
    runs, projections = [], {}
    for index, name in enumerate(names, 1):
        label = f"[{index}/{len(names)}] {name.removeprefix(PREFIX)}"
        shown = RunProgress("bar", label, epochs) if progress == "bar" else None
        logs = None if base.tensorboard is None else os.path.join(base.tensorboard, name.replace(":", "_"))
        cfg = TrainConfig.from_dict({**base.to_dict(), "method": name, "output": None, "tensorboard": logs})
        started = time.perf_counter()
        try:
            session = build(cfg, splits=splits, progress=shown, threads_from=threads_from)
            try:
                train(session)
            finally:
                if session.tensorboard is not None:
                    session.tensorboard.close()
            result = results_dict(session, final_metrics(session))
        except Exception as exc:  # noqa: BLE001 - one failing method must not stop the benchmark
            result = {"method": name.removeprefix(PREFIX), "error": f"{type(exc).__name__}: {exc}"}
            warnings.warn(f"bench: {name} failed: {result['error']}", stacklevel=2)
        result["baseline"] = name.startswith(PREFIX)
        result["wall_seconds"] = time.perf_counter() - started
        runs.append(result)
        if progress == "lines":
            print(f"{label}: {run_line(result)}", file=sys.stderr, flush=True)
        if on_result is not None:
            on_result(result)
        if plots and "error" not in result:
            try:
                projections[name] = project(session, seed=base.seed)
            except Exception as exc:  # noqa: BLE001 - a figure must not cost the run its results
                warnings.warn(f"bench: {name}: embeddings not projected: {type(exc).__name__}: {exc}", stacklevel=2)
    summary = {
        "dataset": dataset,
        "protocol": base.protocol,
        "epochs": epochs,
        "seed": base.seed,
        "device": runs[0].get("device") if runs else None,
        "threads": next((r["threads"] for r in runs if "threads" in r), base.num_threads),
        "threads_from": next((r["threads_from"] for r in runs if "threads_from" in r), threads_from),
        "test_size": len(splits.test),
        **test_classes(splits.test),
        "settings": {k: v for k, v in base.to_dict().items() if k not in ("method", "output")},
        "runs": runs,
    }
    output.mkdir(parents=True, exist_ok=True)
    write_json(summary, output / "results.json")
    (output / "results.md").write_text(markdown_table(summary))
    summary["figures"] = _draw_figures(summary, projections, output) if plots else []
    return summary


def _draw_figures(summary: dict[str, Any], projections: dict[str, Any], output: Path) -> list[str]:
    """Write the figures that the runs allow; a figure that fails is a warning. Returns the files written."""
    figures: list[tuple[str, Any]] = [("accuracy_vs_time.png", lambda p: plot_accuracy_vs_time(summary, p))]
    if any(r.get("history") for r in summary["runs"]):  # bench evaluates after every epoch
        figures.append(("accuracy_per_epoch.png", lambda p: plot_accuracy_per_epoch(summary, p)))
    if projections:
        figures.append(("embeddings.png", lambda p: plot_embeddings(projections, p, summary)))
    written = []
    for file, draw in figures:
        try:
            draw(output / file)
            written.append(file)
        except Exception as exc:  # noqa: BLE001 - the results are written; a figure must not fail the benchmark
            warnings.warn(f"bench: {file} not written: {type(exc).__name__}: {exc}", stacklevel=3)
    return written


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _fmt_seconds(value: Any) -> str:
    """Seconds to 3 significant digits (a run of 0.04 s is not "0.0"; one of 1234.5 s is "1234")."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


#: a Recall@K column is left out of ``results.md`` when even a random ranking scores at least this for the smallest
#: test class (with 450 test items in 10 classes, R@100 and R@1000 are 1.0000 for any embedding)
TRIVIAL_RECALL = 0.99


def chance_recall(k: int, n_items: int, class_size: int) -> float:
    """Recall@K of a random ranking for a query whose class has ``class_size`` of the ``n_items`` test items: the
    chance that ``k`` of the other ``n_items - 1`` items include one of its ``class_size - 1`` classmates (1.0 once
    ``k`` exceeds the number of items of other classes)."""
    others, classmates = n_items - 1, class_size - 1
    if classmates <= 0 or others <= 0:
        return 0.0
    none = 1.0
    for i in range(min(k, others)):
        if others - classmates - i <= 0:
            return 1.0
        none *= (others - classmates - i) / (others - i)
    return 1.0 - none


def run_line(r: dict[str, Any]) -> str:
    """One run in a line, for a log file: ``P@1 0.9844, 2 epochs in 1.2 s (0.60 s/epoch), 1.6 s with evaluation``."""
    if "error" in r:
        return f"FAILED {r['error'].splitlines()[0] if r['error'] else ''}"
    epochs = r.get("epochs") or 0
    per_epoch = f" ({r['seconds'] / epochs:.2f} s/epoch)" if epochs else ""
    text = f"P@1 {_fmt(r.get('precision_at_1'))}, {epochs} epoch{'' if epochs == 1 else 's'} in {r['seconds']:.1f} s"
    return text + per_epoch + (f", {r['wall_seconds']:.1f} s with evaluation" if r.get("wall_seconds") else "")


def _settings_text(summary: dict[str, Any], dropped: list[int]) -> str:
    s = summary["settings"]
    epochs = summary["epochs"]
    text = (
        f"{epochs} epoch{'' if epochs == 1 else 's'}, batch {s['batch_size']}, {s['optimizer']} lr {s['lr']}, "
        f"seed {summary['seed']}, backbone {s['backbone'] or 'default'}, device {summary['device']}"
    )
    if s.get("train_per_class"):
        text += f", few-shot: {s['train_per_class']} training items per class"
    if s.get("select_epoch"):  # docs/tuning.md: the epoch is chosen on a validation fold, the test split read once
        chosen = ", ".join(
            f"{r['method']} {r['selection']['best_epoch']}" for r in summary["runs"] if r.get("selection")
        )
        text += (
            f", the epoch selected on validation fold {s['select_epoch']['fold']} of {s['select_epoch']['folds']} by "
            f"{s['select_epoch']['metric']} and tested once ({chosen})"
        )
    threads = summary.get("threads")
    if threads:
        why = f" ({summary['threads_from']})" if summary.get("threads_from") else ""
        text += f", {threads} CPU thread{'' if threads == 1 else 's'}{why}"
    text += "."
    n = summary.get("test_size")
    if n:
        classes, smallest = summary.get("test_classes"), summary.get("smallest_test_class")
        within = f" in {classes} classes (the smallest has {smallest})" if classes and smallest else ""
        text += (
            f" Test set: {n} items{within}, each queried against the other {n - 1} (PML AccuracyCalculator): one "
            f"query is 1/{n} = {1 / n:.4f} of P@1, the resolution of every accuracy below."
        )
    else:
        text += " Retrieval metrics: PML AccuracyCalculator (test set against itself)."
    text += " R@K: Recall@K (P@1 is R@1)"
    if dropped:
        ks = ", ".join(f"R@{k}" for k in dropped)
        text += (
            f"; {ks} left out: on this test set even a random ranking scores at least {TRIVIAL_RECALL} (they are in "
            "results.json)"
        )
    return text + (
        ". seconds: the training time of one run, without evaluation (a single measurement, not an average; it "
        "varies with the machine's load); s/epoch: seconds / epochs."
    )


def markdown_table(summary: dict[str, Any]) -> str:
    """The ``results.md`` text: settings line and one row per run."""
    found = sorted({kn for r in summary["runs"] for kn in recall_metrics_in(r) if kn[0] > 1})  # R@1 is P@1
    n, smallest = summary.get("test_size"), summary.get("smallest_test_class")
    recalls = [(k, m) for k, m in found if not (n and smallest and chance_recall(k, n, smallest) >= TRIVIAL_RECALL)]
    dropped = [k for k, m in found if (k, m) not in recalls]
    lines = [
        f"# pml-anchors bench: {summary['dataset']} ({summary['protocol']})",
        "",
        _settings_text(summary, dropped),
        "",
    ]
    metrics = [METRICS[0], *(name for _, name in recalls), *METRICS[1:], "nearest_anchor_accuracy"]
    header = ["method", "d", "P@1", *(f"R@{k}" for k, _ in recalls), "MAP@R", "R-precision", "mAP"]
    header += ["nearest-anchor acc", "seconds", "s/epoch"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in summary["runs"]:
        name = r["method"] + (" (PML baseline)" if r.get("baseline") else "")
        if "error" in r:
            lines.append(f"| {name} | | failed: {r['error'].splitlines()[0]} |" + " |" * (len(header) - 3))
            continue
        per_epoch = r["seconds"] / r["epochs"] if r.get("epochs") and r.get("seconds") is not None else None
        cells = [name, str(r.get("embedding_size", "")), *(_fmt(r.get(m)) for m in metrics)]
        cells += [_fmt_seconds(r.get("seconds")), _fmt_seconds(per_epoch)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
