"""Benchmark every registered method and PML's baselines with the same backbone, budget and seed.

:func:`bench` trains each run with :mod:`pml_anchors.app.session` (evaluating after every epoch) and
writes, under ``output``:

* ``results.md``: one row per run (P@1, Recall@K, MAP@R, R-precision, mAP, nearest-anchor accuracy, seconds);
* ``results.json``: the settings and every run's full results (including per-epoch history);
* ``accuracy_vs_time.png``: test P@1 after each epoch against training time (no evaluation time),
  in the style of Proxy Anchor's Figure 1;
* ``embeddings.png``: the test embeddings in 2-D (PCA when d > 2, in the space the kNN uses)
  coloured by class, with the anchors/proxies projected the same way and marked (:mod:`pml_anchors.app.plots`).
"""

from __future__ import annotations

import math
import os
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
from .plots import plot_accuracy_vs_time, plot_embeddings, project
from .results import results_dict, write_json
from .session import build, evaluate_session, load_config_dataset, train
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
    **config: Any,
) -> dict[str, Any]:
    """Train and evaluate each method and baseline; write ``results.md/json`` and plots to ``output``.

    ``config`` holds further :class:`~pml_anchors.app.config.TrainConfig` fields shared by every run
    (``data_root``, ``protocol``, ``seed``, ``device``, ``limit``, ``batch_size``, ``lr``, ...).
    A run that raises is recorded with its error and the others go on. ``on_result(results)`` is
    called after each run (e.g. to print progress).
    """
    names = [*select_methods(methods), *(PREFIX + b for b in select_baselines(baselines))]
    if not names:
        raise ValueError("nothing to benchmark: no methods and no baselines selected")
    output = Path(output)
    base = TrainConfig(method=names[0], dataset=dataset, epochs=epochs, eval_every_epoch=True, **config)
    if base.tensorboard:
        require_tensorboard()  # once, before any run, instead of every run failing on it
    splits = load_config_dataset(base)
    runs, projections = [], {}
    for name in names:
        logs = None if base.tensorboard is None else os.path.join(base.tensorboard, name.replace(":", "_"))
        cfg = TrainConfig.from_dict({**base.to_dict(), "method": name, "output": None, "tensorboard": logs})
        started = time.perf_counter()
        try:
            session = build(cfg, splits=splits)
            try:
                train(session)
            finally:
                if session.tensorboard is not None:
                    session.tensorboard.close()
            result = results_dict(session, session.history[-1] if session.history else evaluate_session(session))
            if plots:
                projections[name] = project(session)
        except Exception as exc:  # noqa: BLE001 - one failing method must not stop the benchmark
            result = {"method": name.removeprefix(PREFIX), "error": f"{type(exc).__name__}: {exc}"}
            warnings.warn(f"bench: {name} failed: {result['error']}", stacklevel=2)
        result["baseline"] = name.startswith(PREFIX)
        result["wall_seconds"] = time.perf_counter() - started
        runs.append(result)
        if on_result is not None:
            on_result(result)
    summary = {
        "dataset": dataset,
        "protocol": base.protocol,
        "epochs": epochs,
        "seed": base.seed,
        "device": runs[0].get("device") if runs else None,
        "settings": {k: v for k, v in base.to_dict().items() if k not in ("method", "output")},
        "runs": runs,
    }
    output.mkdir(parents=True, exist_ok=True)
    write_json(summary, output / "results.json")
    (output / "results.md").write_text(markdown_table(summary))
    if plots:
        plot_accuracy_vs_time(runs, output / "accuracy_vs_time.png", dataset)
        plot_embeddings(projections, output / "embeddings.png", dataset)
    return summary


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(summary: dict[str, Any]) -> str:
    """The ``results.md`` text: settings line and one row per run."""
    s = summary["settings"]
    lines = [
        f"# pml-anchors bench: {summary['dataset']} ({summary['protocol']})",
        "",
        f"{summary['epochs']} epoch{'' if summary['epochs'] == 1 else 's'}, batch {s['batch_size']}, "
        f"{s['optimizer']} lr {s['lr']}, seed {summary['seed']}, backbone {s['backbone'] or 'default'}, "
        f"device {summary['device']}. Retrieval metrics: PML AccuracyCalculator "
        "(test set against itself), R@K: Recall@K (P@1 is R@1); seconds: training time without evaluation.",
        "",
    ]
    recalls = sorted({kn for r in summary["runs"] for kn in recall_metrics_in(r) if kn[0] > 1})  # R@1 is P@1
    metrics = [METRICS[0], *(name for _, name in recalls), *METRICS[1:], "nearest_anchor_accuracy"]
    header = ["method", "d", "P@1", *(f"R@{k}" for k, _ in recalls), "MAP@R", "R-precision", "mAP"]
    header += ["nearest-anchor acc", "seconds"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in summary["runs"]:
        name = r["method"] + (" (PML baseline)" if r.get("baseline") else "")
        if "error" in r:
            lines.append(f"| {name} | | failed: {r['error'].splitlines()[0]} |" + " |" * (len(header) - 3))
            continue
        cells = [name, str(r.get("embedding_size", "")), *(_fmt(r.get(m)) for m in metrics), _fmt(r.get("seconds"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
