"""``pml-anchors tune``: a method's hyper-parameters searched on validation folds of the training classes.

The protocol of Musgrave et al. ("A Metric Learning Reality Check", ECCV 2020): the training split is cut into
``folds`` seeded folds (:mod:`pml_anchors.app.data.validation`: class-disjoint under ``open_set``, stratified under
``same_class``); a trial trains the method once per fold on the other folds, with the trial's hyper-parameters and
otherwise the same trunk, batch size, embedding size and epochs for every method, and scores the mean validation
MAP@R over the folds. Optuna's TPE sampler (Bergstra et al., NeurIPS 2011; seeded) proposes the trials from the
method's :attr:`~pml_anchors.MethodSpec.search_space`, for a fixed budget of ``trials``. The test split is sealed
(:class:`~pml_anchors.app.data.validation.SealedTestSplit`): the search never reads it.

The study lives in ``OUTPUT/study.db`` (SQLite): running the same command again continues it until ``trials``
trials have finished (a trial cut short by an interruption is recorded as failed and not counted; a trial whose
training raised is counted, with its error). ``OUTPUT/best.json`` holds the best configuration
(:func:`best_config` rebuilds its :class:`~pml_anchors.app.config.TrainConfig`).

``jobs=N`` runs N processes on the one study (this one and N - 1 spawned ones, each its own trials, sharing the
SQLite storage): Optuna's TPE with ``constant_liar`` so that parallel proposals spread out, and the budget counts the
trials every process has finished or is running. The spawned processes die with this one (``PR_SET_PDEATHSIG`` on
Linux); a trial left running by a killed process is failed, uncounted, when the study is next opened.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..plugin.lazy import accepts_keyword
from ..plugin.search_space import RESERVED, Param
from ..plugin.spec import MethodSpec
from .config import TrainConfig
from .data.validation import seal_test_split, validation_folds, validation_split
from .output_folder import claimed
from .results import write_json
from .session import build, evaluate_session, load_config_dataset, resolve_method, train

__all__ = ["OBJECTIVE", "STUDY_FILE", "BEST_FILE", "best_config", "require_optuna", "tune"]

#: the validation metric a trial maximises (PML's name), averaged over the folds
OBJECTIVE = "mean_average_precision_at_r"
STUDY_FILE = "study.db"
BEST_FILE = "best.json"
STUDY_NAME = "pml-anchors-tune"
#: the config fields a study is tied to: resuming with other values would mix incomparable trials
IDENTITY = ("method", "dataset", "folds", "seed", "settings")


def require_optuna() -> Any:
    """The ``optuna`` module, or an ``ImportError`` naming the extra to install."""
    try:
        import optuna
    except ImportError as exc:
        raise ImportError(f'tune needs Optuna ({exc}); install it with pip install "pml-anchors[tune]"') from None
    return optuna


def _distribution(optuna: Any, param: Param) -> Any:
    d = optuna.distributions
    if param.kind == "categorical":
        return d.CategoricalDistribution(param.choices)
    low, high = param.low, param.high
    assert low is not None and high is not None  # a range (Param checked it)
    if param.kind == "int":
        return d.IntDistribution(int(low), int(high), log=param.log)
    return d.FloatDistribution(float(low), float(high), log=param.log)


def _check_space(spec: MethodSpec, loss_kwargs: Mapping[str, Any]) -> dict[str, Param]:
    space = dict(spec.search_space)
    if not space:
        raise ValueError(f"method {spec.name!r} declares no search space (MethodSpec.search_space); nothing to tune")
    loss = spec.resolve_loss()
    unknown = [k for k in space if k not in RESERVED and not accepts_keyword(loss, k)]
    if unknown:
        raise ValueError(
            f"method {spec.name!r}: search_space names {unknown}, not keyword arguments of {loss.__name__}"
        )
    both = sorted(set(space) & set(loss_kwargs))
    if both:
        raise ValueError(f"loss_kwargs fix {both}, which the search space of {spec.name!r} tunes; leave them out")
    return space


def trial_config(base: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """``base`` with a trial's ``params``: the :data:`RESERVED` ones set their config field (``lr``, ``weight_decay``,
    ``loss_lr_multiplier``), the others are loss keyword arguments."""
    values = base.to_dict()
    values["loss_kwargs"] = dict(values["loss_kwargs"])
    for name, value in params.items():
        if name in RESERVED:
            values[name] = value
        else:
            values["loss_kwargs"][name] = value
    return TrainConfig.from_dict(values)


def best_config(best: Mapping[str, Any] | str | Path) -> TrainConfig:
    """The :class:`TrainConfig` of a study's best trial (``best.json``, its path or its folder), without output; a
    study tuned with ``select_epoch`` trains for its ``selected_epoch``."""
    if isinstance(best, Mapping):
        data: Mapping[str, Any] = best
    else:
        path = Path(best)
        data = json.loads((path / BEST_FILE if path.is_dir() else path).read_text())
    config = trial_config(TrainConfig.from_dict(data["config"]), data["params"])
    if data.get("selected_epoch") is not None:  # tune(select_epoch=True): the best trial's epoch, chosen on validation
        config = TrainConfig.from_dict({**config.to_dict(), "epochs": data["selected_epoch"]})
    return config


def _counted(trial: Any, optuna: Any) -> bool:
    """A finished trial that counts against the budget: complete, or failed with its own error (not interrupted)."""
    state = optuna.trial.TrialState
    return trial.state == state.COMPLETE or (trial.state == state.FAIL and "error" in trial.user_attrs)


def _storage(optuna: Any, folder: Path) -> Any:
    """The study's SQLite storage; a process waits up to a minute for another one's write."""
    url = f"sqlite:///{(folder / STUDY_FILE).resolve()}"
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def _sampler(optuna: Any, seed: int, jobs: int) -> Any:
    # constant_liar: with several processes, a running trial counts as a poor result, so the others look elsewhere
    return optuna.samplers.TPESampler(seed=seed, constant_liar=jobs > 1)


def _open_study(optuna: Any, folder: Path, seed: int, identity: dict[str, Any], jobs: int = 1) -> Any:
    storage = _storage(optuna, folder)
    probe = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True)
    recorded = probe.user_attrs.get("identity")
    if recorded is None:
        probe.set_user_attr("identity", identity)
    elif recorded != identity:
        raise ValueError(
            f"{folder / STUDY_FILE} holds a study of other settings ({_differences(recorded, identity)}); resume it "
            "with the command that started it, or tune into another --output"
        )
    running = optuna.trial.TrialState.RUNNING
    for trial in probe.get_trials(deepcopy=False, states=(running,)):  # left by a killed run (the folder is locked)
        probe.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    # a resumed search draws anew (the same seed would propose the first trials' points again)
    sampler = _sampler(optuna, seed + len(probe.trials), jobs)
    return optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler)


def _differences(recorded: Mapping[str, Any], identity: Mapping[str, Any]) -> str:
    """``folds differ`` / ``settings.epochs: 3 in the study, 5 now`` (``eval_every_epoch`` named as
    ``--select-epoch``, which sets it)."""
    parts = []
    for key in identity:
        old, new = recorded.get(key), identity[key]
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            for inner in sorted({*old, *new}):
                if old.get(inner) != new.get(inner):
                    name = "--select-epoch" if inner == "eval_every_epoch" else f"{key}.{inner}"
                    parts.append(f"{name}: {old.get(inner)!r} in the study, {new.get(inner)!r} now")
        else:
            parts.append(f"{key} differ")
    return "; ".join(parts)


def _line(done: int, budget: int, trial: Any, value: float | None, best: Any, seconds: float) -> str:
    """``trial 2/4 (#2): MAP@R 0.4587 [lr=0.0006431] | best 0.4587 (#2) | 0.4 s`` (``#``: Optuna's trial number)."""
    params = trial.params
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    score = "failed" if value is None else f"MAP@R {value:.4f}"
    best_text = "no trial finished yet" if best is None else f"best {best.value:.4f} (#{best.number})"
    return f"trial {done + 1}/{budget} (#{trial.number}): {score} [{shown}] | {best_text} | {seconds:.1f} s"


def _best(study: Any, optuna: Any) -> Any:
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def tune(
    method: str,
    *,
    output: str | Path,
    trials: int = 20,
    folds: int = 4,
    dataset: str = "digits",
    splits: Any = None,
    on_trial: Callable[[str], None] | None = None,
    threads_from: str | None = None,
    jobs: int = 1,
    select_epoch: bool = False,
    **config: Any,
) -> dict[str, Any]:
    """Search ``method``'s hyper-parameters on ``folds`` validation folds of the training split; see the module.

    :param output: the study folder (``study.db``, ``best.json``); a study already there is continued.
    :param trials: the budget: finished trials in the study, those of earlier runs included.
    :param splits: the dataset (default: loaded from the config); its test split is sealed and never read.
    :param on_trial: called with one line per trial (default: printed on stderr; the spawned processes print theirs).
    :param jobs: processes searching the study together (this one included; see the module).
    :param select_epoch: score each trial at its best epoch (the mean validation MAP@R over the folds, evaluated after
        every epoch; ``epochs`` is then the largest budget) instead of its last; ``best.json``'s ``selected_epoch``
        is the best trial's, which :func:`best_config` (and so ``bench --tuned``) trains for.
    :param config: further :class:`TrainConfig` fields shared by every trial (``epochs``, ``batch_size``,
        ``embedding_size``, ``backbone``, ``seed``, ``limit``, ``loss_kwargs``, ...).
    :returns: the ``best.json`` dict.
    """
    optuna = require_optuna()
    from ..validators import check_int

    trials = check_int(trials, "trials", minimum=1)
    folds = check_int(folds, "folds", minimum=2)
    jobs = check_int(jobs, "jobs", minimum=1)
    splits_given = splits is not None
    for key in ("output", "validation", "tensorboard", "eval_every_epoch"):
        if config.get(key) is not None:
            raise ValueError(f"tune does not take {key!r}: each trial trains on validation folds and writes no run")
    if not isinstance(select_epoch, bool):
        raise TypeError(
            f"select_epoch must be True or False (a trial selects its epoch on tune's own folds), got {select_epoch!r}"
        )
    if select_epoch:
        config["eval_every_epoch"] = True  # the trials' marker: evaluate the validation fold after every epoch
    base = TrainConfig(method=method, dataset=dataset, output=None, checkpoint_every_epoch=False, **config)
    spec, space, distributions = _search_space(optuna, base)
    splits = seal_test_split(splits if splits is not None else load_config_dataset(base))
    validation_folds(splits.train_labels, folds, base.seed, splits.protocol)  # too few classes/items: fail now
    settings = {k: v for k, v in base.to_dict().items() if k not in ("method", "dataset", "seed", "num_threads")}
    identity = {"method": spec.qualified_name, "dataset": dataset, "folds": folds, "seed": base.seed}
    identity["settings"] = json.loads(json.dumps(settings, default=str))
    say = on_trial or (lambda line: print(line, file=sys.stderr, flush=True))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(output)
    with claimed(folder, resume=True):
        study = _open_study(optuna, folder, base.seed, identity, jobs)
        others = _start_jobs(jobs, method, dataset, base, folder, trials, folds, splits_given=splits_given)
        try:
            _search(optuna, study, distributions, base, splits, folds, trials, say, job=0)
        finally:
            _join(others)
        best = _summary(study, optuna, spec, base, space, trials, folds, splits, threads_from)
        write_json(best, folder / BEST_FILE)
    return best


def _search(
    optuna: Any,
    study: Any,
    distributions: Mapping[str, Any],
    base: TrainConfig,
    splits: Any,
    folds: int,
    trials: int,
    say: Callable[[str], None],
    job: int,
) -> None:
    """Ask, train and tell trials until the study's finished and running trials (every process's) reach ``trials``."""
    running = optuna.trial.TrialState.RUNNING
    while True:
        existing = study.get_trials(deepcopy=False)
        done = sum(_counted(t, optuna) for t in existing)
        if done + sum(t.state == running for t in existing) >= trials:
            return
        trial = study.ask(distributions)
        trial.set_user_attr("job", job)
        started = time.perf_counter()
        try:
            value = _objective(trial, base, splits, folds)
        except Exception as exc:  # noqa: BLE001 - a trial that raises is a failed point of the search, not its end
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            value = None
        except BaseException:  # interrupted (Ctrl-C): recorded as failed, not counted; the next run redoes it
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
        done = sum(_counted(t, optuna) for t in study.get_trials(deepcopy=False))
        say(_line(done - 1, trials, trial, value, _best(study, optuna), time.perf_counter() - started))


def _start_jobs(
    jobs: int,
    method: str,
    dataset: str,
    base: TrainConfig,
    folder: Path,
    trials: int,
    folds: int,
    *,
    splits_given: bool,
) -> list[Any]:
    """Spawn ``jobs - 1`` processes searching the study beside this one (each loads the dataset itself)."""
    if jobs == 1:
        return []
    if splits_given:
        raise ValueError("tune with jobs > 1 loads the dataset in every process: pass the dataset's name, not splits")
    context = multiprocessing.get_context("spawn")
    config = {**base.to_dict(), "method": method, "dataset": dataset}
    processes = [
        context.Process(
            target=_job, args=(index, config, str(folder), trials, folds, os.getpid()), name=f"pml-anchors-tune-{index}"
        )
        for index in range(1, jobs)
    ]
    for process in processes:
        process.start()
    return processes


def _join(processes: list[Any]) -> None:
    """Wait for the spawned processes; one that failed is an error naming it (the others are stopped first)."""
    failed = []
    for process in processes:
        process.join()
        if process.exitcode != 0:
            failed.append(f"{process.name} (pid {process.pid}) exited with {process.exitcode}")
    if failed:
        raise RuntimeError("tune: " + "; ".join(failed) + " (its error is above)")


def _die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when the process that spawned it dies (even by ``kill -9``); a parent that
    died while this one was starting ends it now."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(1)


def _job(index: int, config: dict[str, Any], folder: str, trials: int, folds: int, parent: int) -> None:
    """A spawned search process: the same study, its own trials (its lines on stderr)."""
    _die_with_parent(parent)
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = TrainConfig.from_dict(config)
    if base.num_threads:
        import torch

        torch.set_num_threads(base.num_threads)
    _, _, distributions = _search_space(optuna, base)
    splits = seal_test_split(load_config_dataset(base))
    storage = _storage(optuna, Path(folder))
    seed = base.seed + 7919 * index + len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=_sampler(optuna, seed, jobs=2))
    say = lambda line: print(f"[job {index}] {line}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        _search(optuna, study, distributions, base, splits, folds, trials, say, job=index)
    except KeyboardInterrupt:
        sys.exit(130)


def _search_space(optuna: Any, base: TrainConfig) -> tuple[MethodSpec, Mapping[str, Param], dict[str, Any]]:
    """``base.method``'s spec, its checked search space and the Optuna distributions of it."""
    spec, _ = resolve_method(base.method)
    space = _check_space(spec, base.loss_kwargs)
    return spec, space, {name: _distribution(optuna, param) for name, param in space.items()}


def _objective(trial: Any, base: TrainConfig, splits: Any, folds: int) -> float:
    """Mean validation MAP@R over the folds of one trial's configuration (per-fold scores in its user attrs).

    With epoch selection (``base.eval_every_epoch``, set by ``tune(select_epoch=True)``) every fold evaluates its
    validation fold after every epoch, and the trial scores the epoch whose mean over the folds is best (the
    earlier on a tie), recorded as its ``epoch`` user attribute with the mean ``curve``."""
    config = trial_config(base, trial.params)
    curves, per_fold = [], []
    for fold in range(folds):
        fold_splits = validation_split(splits, fold, folds, base.seed)
        choice = {k: fold_splits.info["validation"][k] for k in ("fold", "folds", "seed")}
        fold_config = TrainConfig.from_dict({**config.to_dict(), "validation": choice})
        session = train(build(fold_config, splits=fold_splits))
        epochs = session.history if base.eval_every_epoch else [evaluate_session(session, geometry=False)]
        scores = [entry.get(OBJECTIVE) for entry in epochs]
        bad = [score for score in scores if score is None or not math.isfinite(score)]
        if not scores or bad:
            raise ValueError(f"fold {fold}: validation {OBJECTIVE} is {bad[0] if bad else None!r}")
        curve = [float(score) for score in scores if score is not None]
        curves.append(curve)
        record = {"fold": fold, OBJECTIVE: curve[-1], "precision_at_1": epochs[-1].get("precision_at_1")}
        per_fold.append({**record, "seconds": session.train_seconds, **({"curve": curve} if len(curve) > 1 else {})})
    trial.set_user_attr("folds", per_fold)
    if len(set(map(len, curves))) != 1:  # every fold trains the same epochs (no early stopping in a trial)
        raise ValueError(f"the folds trained different numbers of epochs: {[len(c) for c in curves]}")
    mean = [sum(scores) / folds for scores in zip(*curves)]
    best = max(range(len(mean)), key=lambda e: (mean[e], -e))
    if base.eval_every_epoch:
        trial.set_user_attr("epoch", best + 1)
        trial.set_user_attr("curve", mean)
    return mean[best]


def _summary(
    study: Any,
    optuna: Any,
    spec: MethodSpec,
    base: TrainConfig,
    space: Mapping[str, Param],
    trials: int,
    folds: int,
    splits: Any,
    threads_from: str | None,
) -> dict[str, Any]:
    all_trials = study.get_trials(deepcopy=False)
    best = _best(study, optuna)
    if best is None:
        errors = sorted({t.user_attrs.get("error", "interrupted") for t in all_trials})
        raise RuntimeError(f"no trial of {spec.name!r} finished; their errors: {errors}")
    states = optuna.trial.TrialState
    records = [validation_split(splits, f, folds, base.seed).info["validation"] for f in range(folds)]
    sealed = splits.test
    selected = base.eval_every_epoch
    objective = f"mean validation {OBJECTIVE} over {folds} folds" + (" at the trial's best epoch" if selected else "")
    return {
        "method": spec.name,
        "qualified_method": spec.qualified_name,
        "dataset": base.dataset,
        "protocol": base.protocol,
        "objective": objective,
        "value": best.value,
        "params": dict(best.params),
        **({"selected_epoch": best.user_attrs["epoch"], "best_curve": best.user_attrs["curve"]} if selected else {}),
        "best_trial": best.number,
        "best_folds": best.user_attrs.get("folds"),
        "budget": trials,
        "trials_complete": sum(t.state == states.COMPLETE for t in all_trials),
        "trials_failed": sum(t.state == states.FAIL and "error" in t.user_attrs for t in all_trials),
        "trials_interrupted": sum(t.state == states.FAIL and "error" not in t.user_attrs for t in all_trials),
        "folds": folds,
        "seed": base.seed,
        "epochs": base.epochs,
        "tuned": {name: param.as_dict() for name, param in space.items()},
        "fixed": {k: v for k, v in base.to_dict().items() if k not in space and k not in ("method", "output")},
        "config": {**base.to_dict(), "output": None, "eval_every_epoch": False},  # the trials' marker, not a setting
        "validation": records,
        "test_split": f"sealed, read {sealed.reads} times" if sealed.reads else "sealed, never read",
        "sampler": f"optuna {optuna.__version__} TPESampler (seed {base.seed} + trials already in the study)",
        "threads_from": threads_from,
        "study": STUDY_FILE,
    }
