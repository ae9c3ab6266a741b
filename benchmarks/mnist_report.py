"""Tables for docs/results.md from the runs of ``benchmarks/mnist_report.sh``.

    python benchmarks/mnist_report.py runs/mnist                  # print every table (markdown)
    python benchmarks/mnist_report.py --eval-both-ways CKPT [--output JSON]
        # evaluate a `pml-anchors train` checkpoint with raw and with L2-normalised embeddings

Reads ``OUT/<stage>/results.json`` (``pml-anchors bench`` or ``train``), ``OUT/<stage>.seconds`` (wall clock of
the whole command) and ``OUT/<stage>.cmd`` (the command).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from pml_anchors.evaluation.recall_at_k import recall_metric, recall_metrics_in

METRICS = ("precision_at_1", "mean_average_precision_at_r", "r_precision")


def _counterparts() -> dict[str, str]:
    """method -> the baseline it is paired with in the same run: what its plugin declares
    (``MethodSpec.counterpart``, e.g. e_ncm: the NCM paper's own comparison, softmax cross-entropy)."""
    from pml_anchors import list_methods
    from pml_anchors.app.baselines import PREFIX, counterpart_of

    pairs = ((spec.name, counterpart_of(spec)) for spec in list_methods())
    return {name: other.removeprefix(PREFIX) for name, other in pairs if other is not None}


COUNTERPART = _counterparts()


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


@functools.cache
def _read(path: Path) -> str:
    """A results file's text, read from disk once per report (the tables look at some stages several times)."""
    return path.read_text()


def load(out: Path, stage: str) -> dict | None:
    """A fresh copy of ``OUT/<stage>/results.json`` (callers may change it) with ``wall`` and ``cmd`` added."""
    path = out / stage / "results.json"
    if not path.is_file():
        return None
    data = json.loads(_read(path))
    if "runs" not in data:  # `pml-anchors train`: one run
        data = {"runs": [data], "settings": data.get("config", {})}
    seconds = out / f"{stage}.seconds"
    data["wall"] = int(seconds.read_text()) if seconds.is_file() else None
    cmd = out / f"{stage}.cmd"
    data["cmd"] = cmd.read_text().strip() if cmd.is_file() else None
    return data


def load_merged(out: Path, stage: str, *reruns: str) -> dict | None:
    """``stage`` with each method's run replaced by its run in a later stage (a re-run after a code change)."""
    data = load(out, stage)
    if data is None:
        return None
    newer = {r["method"]: dict(r, note=f" (re-run: {name})") for name in reruns for r in ok_runs(load(out, name))}
    data["runs"] = [newer.get(r["method"], r) for r in data["runs"]]
    return data


def ok_runs(data: dict | None) -> list[dict]:
    return [r for r in (data or {}).get("runs", []) if "error" not in r]


def retrieval_table(
    data: dict, extra: list[dict] = (), checks: bool = True, anchor_acc: bool = True, threshold: float | None = 0.99
) -> str:
    runs = ok_runs(data) + list(extra)
    by_name = {r["method"]: r for r in runs}
    # Recall@K beyond K = 1 (= P@1), where every run has it (runs from before it was reported do not)
    ks = sorted(set.intersection(*({k for k, _ in recall_metrics_in(r) if k > 1} for r in runs)) if runs else ())
    metrics = (METRICS[0], *(recall_metric(k) for k in ks), *METRICS[1:])
    head = "| method | d | P@1 | " + "".join(f"R@{k} | " for k in ks) + "MAP@R | R-precision |"
    sep = "|---|---|---|" + "---|" * len(ks) + "---|---|"
    if anchor_acc:
        head += " nearest-anchor acc |"
        sep += "---|"
    head += " train s |"
    sep += "---|"
    if checks:
        head += " PML counterpart (P@1) |" + (f" ≥ {100 * threshold:.1f} |" if threshold else "") + " ≥ counterpart |"
        sep += "---|---|" + ("---|" if threshold else "")
    lines = [head, sep]
    for r in runs:
        name = r["method"] + (" (PML)" if r.get("baseline") else "") + r.get("note", "")
        cells = [name, str(r["embedding_size"]), *(pct(r[m]) for m in metrics)]
        if anchor_acc:
            cells.append(pct(r.get("nearest_anchor_accuracy")))
        cells.append(f"{r['seconds']:.0f}")
        if checks:
            cp = by_name.get(COUNTERPART.get(r["method"].split(" ")[0], ""), None)
            if r.get("baseline") or cp is None:
                cells += ["", "", ""] if threshold else ["", ""]
            else:
                p1, q = r["precision_at_1"], cp["precision_at_1"]
                cells.append(f"{cp['method']} ({pct(q)})")
                if threshold:
                    cells.append("yes" if p1 >= threshold else "**no**")
                cells.append("yes" if p1 >= q else "**no**")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def history_table(data: dict) -> str:
    lines = [
        "| method | epoch | train s | P@1 | nearest-anchor acc | loss | next lr |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ok_runs(data):
        for h in r.get("history", []):
            lr = "–" if h.get("lr") is None else f"{h['lr']:.3g}"  # recorded since the lr schedules were added
            lines.append(
                f"| {r['method']} | {h['epoch']} | {h['seconds']:.0f} | {pct(h.get('precision_at_1'))} | "
                f"{pct(h.get('nearest_anchor_accuracy'))} | {h['loss']:.4f} | {lr} |"
            )
    return "\n".join(lines)


def section(title: str, data: dict | None, body: str) -> str:
    if data is None:
        return f"## {title}\n\n(not run)\n"
    return f"## {title}\n\n```bash\n{data['cmd']}\n```\n\nwall clock: {data['wall']} s\n\n{body}\n"


def seed_stages(seed: int, width: int) -> tuple[str, ...]:
    """The stages holding seed ``seed`` at ``width`` (128: every method; 9: reponet and ArcFace at the simplex's
    own width). A later stage in the tuple overrides an earlier one's run of the same method."""
    if width == 9:
        return ("reponet_d9",) if seed == 0 else (f"seed{seed}_reponet_d9",)
    if seed == 0:  # proxy_anchor re-run after its recipe changed; reponet and ArcFace at d = 128
        return ("same_class", "seed0_proxy_anchor", "reponet_d128_s0")
    return (f"seed{seed}", f"seed{seed}_ce", f"reponet_d128_s{seed}")


def seeds_run(out: Path, width: int) -> list[int]:
    """Seeds 0, 1, ... up to the first one whose main stage has no results."""
    seeds = []
    while (out / seed_stages(len(seeds), width)[0] / "results.json").is_file():
        seeds.append(len(seeds))
    return seeds


def report(out: Path) -> str:
    parts = []
    same = load_merged(out, "same_class", "seed0_proxy_anchor", "reponet_d128_s0")
    parts.append(section("same_class, d=128", same, retrieval_table(same) if same else ""))
    d9 = load(out, "reponet_d9")
    if d9:
        parts.append(section("reponet at its own width d=9 (+ ArcFace at d=9)", d9, retrieval_table(d9)))
    for name in ("pa_off", "pa_nowarmup", "pa_nofreezebn", "cam_train"):
        data = load(out, name)
        if data:
            parts.append(section(name, data, retrieval_table(data, checks=False)))
    opn = load_merged(out, "open_set", "open_set_pa", "open_set_reponet_d128")
    if opn:
        parts.append(section("open_set, d=128", opn, retrieval_table(opn, anchor_acc=False, threshold=None)))
    opr = load(out, "open_set_reponet")
    if opr:
        parts.append(section("open_set reponet d=4", opr, retrieval_table(opr, anchor_acc=False, threshold=None)))
    longer = sorted(p.parent.name for p in out.glob("reponet_long_s*/results.json"))
    ncm = sorted(p.parent.name for p in out.glob("ncm_paper*_*/results.json"))  # ncm_paper[TAG|_step]_METHOD
    for name in (*ncm, "ncm_2d_paper", "reponet_paper", *longer):
        data = load(out, name)
        if data:
            parts.append(section(name, data, retrieval_table(data, checks=False) + "\n\n" + history_table(data)))
    seeds = {width: seeds_run(out, width) for width in (128, 9)}
    for width, width_seeds in seeds.items():
        for seed in width_seeds:
            for name in seed_stages(seed, width):
                data = load(out, name)
                if data and name not in ("same_class", "reponet_d9"):
                    parts.append(section(name, data, retrieval_table(data)))
    table = seed_table(out, seeds)
    if table:
        parts.append(f"## P@1 over seeds {', '.join(map(str, seeds[128]))}\n\n" + table + "\n")
    recall = recall_table(out, seeds[128])
    if recall:
        parts.append(recall + "\n")
    return "\n".join(parts)


def recall_table(out: Path, seeds: list[int]) -> str:
    """Mean Recall@K (%) per method at d = 128 over the seeds whose runs report it (runs made before pml-anchors
    reported Recall@K do not), methods in the order of the runs."""
    import statistics

    by_seed = {seed: _runs_by_method(out, *seed_stages(seed, 128)) for seed in seeds}
    with_recall = [
        seed
        for seed, runs in by_seed.items()
        if runs and all(recall_metrics_in(r) for r in runs.values() if r["embedding_size"] == 128)
    ]
    if not with_recall:
        return ""
    runs = [by_seed[seed] for seed in with_recall]
    methods = [m for m in runs[0] if all(m in r and r[m]["embedding_size"] == 128 for r in runs)]
    ks = sorted(set.intersection(*({k for k, _ in recall_metrics_in(r[m])} for r in runs for m in methods)))
    lines = [
        f"## Recall@K at d=128, mean over seeds {', '.join(map(str, with_recall))}",
        "",
        "| method | " + " | ".join(f"R@{k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for m in methods:
        means = [100 * statistics.mean(r[m][recall_metric(k)] for r in runs) for k in ks]
        lines.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in means) + " |")
    return "\n".join(lines)


def _runs_by_method(out: Path, *stages: str) -> dict[str, dict]:
    """Successful runs of ``stages`` by method name; a later stage replaces an earlier one's run."""
    merged: dict[str, dict] = {}
    for stage in stages:
        merged.update({r["method"]: r for r in ok_runs(load(out, stage))})
    return merged


def seed_table(out: Path, seeds_by_width: dict[int, list[int]]) -> str:
    """P@1 per seed with mean ± std, and each method's mean against its PML counterpart's mean, with the
    per-seed difference (method − counterpart in the same seed's run); methods that ran at every seed only."""
    import statistics

    seeds = seeds_by_width[128]
    cols = " | ".join(f"seed {s}" for s in seeds)
    lines = [
        f"| method | d | {cols} | mean ± std | PML counterpart: mean | Δ per seed: mean ± std | ≥ counterpart |",
        "|---|---|" + "---|" * len(seeds) + "---|---|---|---|",
    ]
    for width, width_seeds in seeds_by_width.items():
        runs = [_runs_by_method(out, *seed_stages(seed, width)) for seed in width_seeds]
        if len(runs) != len(seeds):
            continue
        names = list(dict.fromkeys(name for r in runs for name in r))
        means = {}
        for m in names:
            got = [r[m]["precision_at_1"] for r in runs if m in r and r[m]["embedding_size"] == width]
            if len(got) == len(seeds):
                means[m] = (statistics.mean(got), statistics.stdev(got))
        for m, (mean, sd) in means.items():
            vals = [pct(r[m]["precision_at_1"]) for r in runs]
            cp = COUNTERPART.get(m)
            cells = ["", "", ""]
            if cp in means:  # paired by seed: same data order, initialisation seed and budget
                delta = [100 * (r[m]["precision_at_1"] - r[cp]["precision_at_1"]) for r in runs]
                cells = [
                    f"{cp} {100 * means[cp][0]:.2f}",
                    f"{statistics.mean(delta):+.2f} ± {statistics.stdev(delta):.2f}",
                    "yes" if mean >= means[cp][0] else "**no**",
                ]
            lines.append(
                f"| {m} | {width} | "
                + " | ".join(vals)
                + f" | {100 * mean:.2f} ± {100 * sd:.2f} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def eval_both_ways(checkpoint: str) -> dict:
    """Evaluate a checkpoint's test embeddings with raw and with L2-normalised embeddings (same model)."""
    from pml_anchors.app.reload import session_from_checkpoint
    from pml_anchors.app.session import evaluate_session

    session = session_from_checkpoint(checkpoint)
    results = {}
    for normalize in (False, True):
        m = evaluate_session(session, normalize_embeddings=normalize, geometry=False)
        results["l2_normalised" if normalize else "raw"] = {k: m[k] for k in (*METRICS, "nearest_anchor_accuracy")}
    results["spec_normalize_embeddings"] = bool(session.spec.normalize_embeddings)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", default="runs/mnist")
    p.add_argument("--eval-both-ways", metavar="CHECKPOINT")
    p.add_argument("--output")
    args = p.parse_args(argv)
    if args.eval_both_ways:
        import os

        os.environ.setdefault("TQDM_DISABLE", "1")
        import torch

        torch.set_num_threads(1)
        results = eval_both_ways(args.eval_both_ways)
        text = json.dumps(results, indent=2)
        if args.output:
            Path(args.output).write_text(text + "\n")
        print(text)
        return 0
    print(report(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
