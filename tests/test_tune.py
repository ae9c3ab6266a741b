"""pml-anchors tune (pml_anchors.app.tune): Optuna TPE on validation folds, resumable, the test split sealed."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
from torch.utils.data import Dataset
from toy_loss import LearnableToyLoss, ToyCosineLoss
from training_toys import (
    single_thread,  # noqa: F401 - autouse fixture
    tiny,
)

from pml_anchors import MethodSpec, hookimpl
from pml_anchors.app import tune as tune_module
from pml_anchors.app.data.validation import HeldOutTestSplitError
from pml_anchors.app.session import build, load_config_dataset
from pml_anchors.app.tune import BEST_FILE, STUDY_FILE, best_config, tune
from pml_anchors.cli import main
from pml_anchors.plugin.search_space import log_uniform, uniform

optuna = pytest.importorskip("optuna")  # the [test] extra installs it; without it, test_cli_without_optuna below

TINY = {
    k: v for k, v in tiny().to_dict().items() if k in ("epochs", "limit", "batch_size", "device", "backbone_kwargs")
}


class SpacedToys:
    @hookimpl
    def register_methods(self, register):
        register(
            MethodSpec(
                name="toy_tuned",
                loss=ToyCosineLoss,
                initializer="one_hot",
                search_space={"lr": log_uniform(1e-4, 1e-2), "scale": uniform(2.0, 20.0)},
            )
        )
        register(
            MethodSpec(
                name="toy_learnable_tuned",
                loss=LearnableToyLoss,
                search_space={"loss_lr_multiplier": log_uniform(1.0, 100.0)},
            )
        )
        register(MethodSpec(name="toy_untuned", loss=ToyCosineLoss, initializer="one_hot"))


@pytest.fixture
def spaced(pml_registry):
    pml_registry.add_plugin(SpacedToys(), name="spaced-toys")
    return pml_registry


def _tune(folder, trials=2, **kw):
    lines: list[str] = []
    values = {**TINY, "folds": 2, **kw}
    best = tune(values.pop("method", "toy_tuned"), output=folder, trials=trials, on_trial=lines.append, **values)
    return best, lines


def _study(folder):
    return optuna.load_study(study_name=tune_module.STUDY_NAME, storage=f"sqlite:///{folder / STUDY_FILE}")


def _params(folder):
    return [t.params for t in _study(folder).get_trials() if t.state == optuna.trial.TrialState.COMPLETE]


def test_tiny_tune_writes_best_json_and_the_study(spaced, tmp_path):
    best, lines = _tune(tmp_path / "s")
    assert (tmp_path / "s" / STUDY_FILE).is_file()
    assert json.loads((tmp_path / "s" / BEST_FILE).read_text()) == json.loads(json.dumps(best))
    assert best["method"] == "toy_tuned" and best["budget"] == 2 and best["trials_complete"] == 2
    assert set(best["params"]) == {"lr", "scale"} and set(best["tuned"]) == {"lr", "scale"}
    assert best["folds"] == 2 and best["seed"] == 0 and best["dataset"] == "digits"
    assert best["protocol"] == "same_class" and best["epochs"] == 1
    study = _study(tmp_path / "s")
    assert best["value"] == max(t.value for t in study.get_trials())
    best_trial = study.best_trial
    folds = best_trial.user_attrs["folds"]
    assert best["value"] == pytest.approx(sum(f["mean_average_precision_at_r"] for f in folds) / 2)
    assert [v["fold"] for v in best["validation"]] == [0, 1]
    assert sum(v["validation_size"] for v in best["validation"]) == 64  # the folds partition the 64 training items
    assert best["test_split"] == "sealed, never read"
    assert len(lines) == 2 and lines[0].startswith("trial 1/2 (#0): MAP@R ") and "| best " in lines[1]
    config = best_config(tmp_path / "s")
    assert config.lr == best["params"]["lr"] and config.loss_kwargs == {"scale": best["params"]["scale"]}
    assert config.validation is None and config.output is None


def test_rerunning_resumes_to_the_budget(spaced, tmp_path):
    _tune(tmp_path / "s", trials=2)
    first = _params(tmp_path / "s")
    best, lines = _tune(tmp_path / "s", trials=3)
    assert len(lines) == 1 and lines[0].startswith("trial 3/3")
    assert best["trials_complete"] == 3 and _params(tmp_path / "s")[:2] == first
    _, lines = _tune(tmp_path / "s", trials=3)  # budget reached: nothing to do
    assert lines == [] and len(_study(tmp_path / "s").get_trials()) == 3


def test_same_seed_same_first_trials(spaced, tmp_path):
    _tune(tmp_path / "a", seed=3)
    _tune(tmp_path / "b", seed=3)
    _tune(tmp_path / "c", seed=4)
    assert _params(tmp_path / "a") == _params(tmp_path / "b")
    assert _params(tmp_path / "a") != _params(tmp_path / "c")


def test_an_interrupted_trial_is_redone_not_counted(spaced, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_train = tune_module.train

    def interrupted(session):
        calls["n"] += 1
        if calls["n"] == 3:  # trial 2, fold 0: Ctrl-C
            raise KeyboardInterrupt
        return real_train(session)

    monkeypatch.setattr(tune_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _tune(tmp_path / "s", trials=2)
    states = [t.state for t in _study(tmp_path / "s").get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert not (tmp_path / "s" / ".pml-anchors.lock").exists()
    best, _ = _tune(tmp_path / "s", trials=2)
    assert (best["trials_complete"], best["trials_interrupted"], best["trials_failed"]) == (2, 1, 0)


def test_a_trial_left_running_by_a_killed_run_is_failed_on_resume(spaced, tmp_path):
    _tune(tmp_path / "s", trials=1)
    study = _study(tmp_path / "s")
    study.ask()  # what SIGKILL leaves: a RUNNING trial nobody will finish
    best, lines = _tune(tmp_path / "s", trials=2)
    assert len(lines) == 1 and best["trials_complete"] == 2 and best["trials_interrupted"] == 1
    assert not [t for t in _study(tmp_path / "s").get_trials() if t.state == optuna.trial.TrialState.RUNNING]


def test_the_test_split_is_never_read(spaced, tmp_path):
    class Watched(Dataset):
        """A test split that records every read."""

        def __init__(self, base):
            self.base, self.reads = base, []

        def __len__(self):
            self.reads.append("len")
            return len(self.base)

        def __getitem__(self, i):
            self.reads.append(i)
            return self.base[i]

        def __getattr__(self, name):
            if name in ("labels", "targets"):
                self.reads.append(name)
                return getattr(self.base, name)
            raise AttributeError(name)

    splits = load_config_dataset(tiny("toy_tuned"))
    watched = Watched(splits.test)
    splits.test = watched
    best, _ = _tune(tmp_path / "s", splits=splits)
    assert watched.reads == [] and best["test_split"] == "sealed, never read"


def test_an_objective_that_read_the_test_split_would_trip_the_seal(spaced, tmp_path, monkeypatch):
    """The seal is wired into tune: a bug that evaluated on the test split fails every trial, naming the seal."""

    def evaluates_on_the_test_split(splits, fold, folds, seed):
        return dataclasses.replace(splits, info={"validation": {"fold": fold, "folds": folds, "seed": seed}})

    monkeypatch.setattr(tune_module, "validation_split", evaluates_on_the_test_split)
    with pytest.raises((RuntimeError, HeldOutTestSplitError), match="sealed"):
        _tune(tmp_path / "s", trials=1)
    (trial,) = _study(tmp_path / "s").get_trials()
    assert "the test split is sealed" in trial.user_attrs["error"]


def test_a_study_of_other_settings_is_refused(spaced, tmp_path):
    _tune(tmp_path / "s", trials=1)
    with pytest.raises(ValueError, match=r"holds a study of other settings \(folds differ\)"):
        _tune(tmp_path / "s", trials=2, folds=3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "toy_untuned"}, "declares no search space"),
        ({"loss_kwargs": {"scale": 3.0}}, r"loss_kwargs fix \['scale'\]"),
        ({"folds": 1}, "folds must be"),
        ({"folds": 7}, "fewer than folds=7"),
        ({"trials": 0}, "trials must be a positive int, got 0"),
    ],
)
def test_bad_requests_fail_before_any_trial(spaced, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _tune(tmp_path / "s", **kwargs)
    assert not (tmp_path / "s" / STUDY_FILE).exists()


def test_loss_lr_multiplier_sets_the_loss_parameters_lr(spaced):
    session = build(tiny("toy_learnable_tuned", lr=1e-3, loss_lr_multiplier=7.0))
    (group,) = session.optimizers["metric_loss_optimizer"].param_groups
    assert group["lr"] == pytest.approx(7e-3)
    from pml_anchors.app.results import lr_multipliers

    assert lr_multipliers(session) == {"anchors": 7.0}  # what results.json records: the multiplier trained with
    with pytest.raises(ValueError, match="loss_lr_multiplier"):
        tiny(loss_lr_multiplier=0.0)


def test_cli_tune_and_its_resume(spaced, tmp_path, capsys):
    argv = ["tune", "--method", "toy_tuned", "--folds", "2", "--epochs", "1", "--limit", "64", "--batch-size", "32"]
    argv += ["--device", "cpu", "--backbone-kwargs", '{"width": 8}', "--output", str(tmp_path / "s")]
    assert main([*argv, "--trials", "1"]) == 0
    captured = capsys.readouterr()
    assert "best mean validation MAP@R" in captured.out and "trial 1/1" in captured.err
    assert main([*argv, "--trials", "2", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["trials_complete"] == 2 and "trial 2/2" in captured.err


def test_cli_without_optuna_is_one_line_naming_the_extra(spaced, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    assert main(["tune", "--method", "toy_tuned", "--output", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "pml-anchors[tune]"' in err
    assert not (tmp_path / "s").exists()


@pytest.mark.slow  # spawns a second process (it imports torch and loads the data: about 10 s)
def test_two_jobs_search_one_study_to_the_budget(tmp_path):
    lines: list[str] = []
    best = tune("c_ncm", output=tmp_path / "s", trials=4, folds=2, jobs=2, on_trial=lines.append, num_threads=1, **TINY)
    study = optuna.load_study(study_name=tune_module.STUDY_NAME, storage=f"sqlite:///{tmp_path / 's' / STUDY_FILE}")
    states = optuna.trial.TrialState
    assert [t.state for t in study.trials].count(states.RUNNING) == 0
    assert sum(t.state == states.COMPLETE for t in study.trials) == best["trials_complete"] == 4  # the budget, once
    assert {t.user_attrs["job"] for t in study.trials} <= {0, 1}
    assert len(lines) == sum(t.user_attrs["job"] == 0 for t in study.trials)  # the spawned job prints its own


def test_jobs_are_checked(spaced, tmp_path):
    with pytest.raises(ValueError, match="jobs must be"):
        tune("toy_tuned", output=tmp_path / "a", trials=1, folds=2, jobs=0, **TINY)
    splits = load_config_dataset(tiny())
    with pytest.raises(ValueError, match="loads the dataset in every process"):
        tune("toy_tuned", output=tmp_path / "b", trials=1, folds=2, jobs=2, splits=splits, **TINY)


# -- select_epoch: each trial scored at its best epoch ---------------------------------------------------------


def test_select_epoch_scores_each_trial_at_its_best_epoch(spaced, tmp_path):
    """Every fold evaluates its validation fold after every epoch; the trial scores the epoch whose mean over the
    folds is best (the earlier on a tie); best.json records it and best_config trains for it."""
    best, lines = _tune(tmp_path / "s", trials=2, epochs=3, select_epoch=True)
    study = _study(tmp_path / "s")
    for trial in study.get_trials():
        folds = trial.user_attrs["folds"]
        curves = [f["curve"] for f in folds]
        assert [len(c) for c in curves] == [3, 3]
        mean = [(a + b) / 2 for a, b in zip(*curves)]
        assert trial.user_attrs["curve"] == pytest.approx(mean)
        epoch = trial.user_attrs["epoch"]
        assert trial.value == pytest.approx(max(mean)) == pytest.approx(mean[epoch - 1])
        assert all(m < trial.value for m in mean[: epoch - 1])  # the earliest of the best
        assert [f["mean_average_precision_at_r"] for f in folds] == [c[-1] for c in curves]  # the last epoch's too
    best_trial = max(study.get_trials(), key=lambda t: (t.value, -t.number))
    assert best["selected_epoch"] == best_trial.user_attrs["epoch"] and best["epochs"] == 3  # selected; the budget
    assert best["best_curve"] == pytest.approx(best_trial.user_attrs["curve"])
    assert "at the trial's best epoch" in best["objective"] and best["test_split"] == "sealed, never read"
    assert best["config"]["eval_every_epoch"] is False  # a marker of the trials, not a setting of the tuned run
    config = best_config(tmp_path / "s")
    assert config.epochs == best["selected_epoch"] and config.eval_every_epoch is False
    assert config.lr == best["params"]["lr"]


def test_a_study_without_epoch_selection_is_not_continued_with_it(spaced, tmp_path):
    _tune(tmp_path / "s", trials=1)
    with pytest.raises(ValueError, match=r"other settings \(--select-epoch: False in the study, True now\)"):
        _tune(tmp_path / "s", trials=2, select_epoch=True)
    with pytest.raises(ValueError, match=r"other settings \(settings.epochs: 1 in the study, 2 now\)"):
        _tune(tmp_path / "s", trials=2, epochs=2)


def test_cli_tune_select_epoch(spaced, tmp_path, capsys):
    argv = ["tune", "--method", "toy_tuned", "--folds", "2", "--epochs", "2", "--limit", "64", "--batch-size", "32"]
    argv += ["--device", "cpu", "--backbone-kwargs", '{"width": 8}', "--trials", "1", "--select-epoch"]
    assert main([*argv, "--output", str(tmp_path / "s"), "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["selected_epoch"] in (1, 2)
    assert main([*argv, "--early-stopping", "1", "--select-folds", "3", "--output", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "tune takes no --select-folds, --early-stopping: with --select-epoch it scores every trial" in err
    assert "--select-folds" in err and "--early-stopping" in err
    with pytest.raises(ValueError, match="tune does not take 'eval_every_epoch'"):
        _tune(tmp_path / "u", eval_every_epoch=True)
    with pytest.raises(TypeError, match="select_epoch must be True or False"):
        _tune(tmp_path / "u", select_epoch={"folds": 2})
