"""The first hour of a new user: what the commands print, where a run goes, how many threads, what results.md says,
how plugin problems and a core-only install are reported (issue "The first hour")."""

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import warnings
from pathlib import Path

import pytest
from folder_plugins import PLUGIN
from training_toys import (
    single_thread,  # noqa: F401 - autouse fixture
)

import pml_anchors
from pml_anchors.cli import main

TINY = ["--epochs", "1", "--limit", "64", "--test-limit", "120", "--batch-size", "32", "--device", "cpu"]
#: a bench of a plain-file plugin's method and one PML baseline (self-contained: no installed plugin needed)
BENCH = ["bench", "--dataset", "digits", "--methods", "folder_cosine", "--baselines", "cross_entropy", "--epochs", "2"]
BENCH += ["--limit", "64", "--test-limit", "60", "--batch-size", "32", "--device", "cpu", "--no-plots"]
BUILTINS = "pip install pml-anchors-ncm pml-anchors-cam pml-anchors-reponet pml-anchors-fsc pml-anchors-proxy-anchor"


def _env(plugins_dir: Path, **extra: str) -> dict:
    """A command's environment: only the plugins of ``plugins_dir``, and no TQDM_DISABLE inherited from this process
    (an in-process command with --no-progress sets it)."""
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env.update(PML_ANCHORS_LOAD_PLUGINS="", PML_ANCHORS_PLUGINS_DIR=str(plugins_dir), PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def _cli(argv: list[str], env: dict, cwd: Path) -> tuple[int, str, str]:
    """Run the command with stderr (and stdout) redirected to files, as in ``pml-anchors ... 2> err.txt``."""
    with open(cwd / "out.txt", "w") as out, open(cwd / "err.txt", "w") as err:
        code = subprocess.run(
            [sys.executable, "-m", "pml_anchors.cli", *argv], stdout=out, stderr=err, env=env, cwd=cwd, timeout=600
        ).returncode
    return code, (cwd / "out.txt").read_text(), (cwd / "err.txt").read_text()


def _cli_on_a_terminal(argv: list[str], env: dict, cwd: Path) -> tuple[int, str]:
    """Run the command with stderr on a pseudo-terminal (an interactive user); returns what the terminal got."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pml_anchors.cli", *argv],
            stdout=subprocess.DEVNULL,
            stderr=slave,
            env=env,
            cwd=cwd,
            timeout=600,
        )
    finally:
        os.close(slave)
    reader.join(timeout=30)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


@pytest.fixture
def plugins_dir(tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "folder_method.py").write_text(PLUGIN)
    return d


# -- 1. progress: one display on a terminal, a line per run (or epoch) in a log file --------------------------------
def test_bench_into_a_log_file_writes_one_line_per_run_and_no_bars(plugins_dir, tmp_path):
    code, out, err = _cli([*BENCH, "--output", "bench"], _env(plugins_dir), tmp_path)
    assert code == 0, err[-3000:]
    assert "\r" not in err and "it/s" not in err and "total_loss" not in err  # no tqdm bar, PML's or ours
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("[1/2] folder_cosine: P@1 ") and lines[1].startswith("[2/2] cross_entropy: P@1 ")
    assert all("2 epochs in" in line and "s/epoch" in line for line in lines)
    assert len(err) < 1000
    assert out.splitlines()[0].startswith("folder_cosine: P@1 ")  # the results stay on stdout


def test_train_into_a_log_file_writes_a_short_line_per_epoch(plugins_dir, tmp_path):
    argv = ["train", "--method", "folder_cosine", *TINY, "--epochs", "2", "--no-output"]
    code, out, err = _cli(argv, _env(plugins_dir), tmp_path)
    assert code == 0, err[-3000:]
    assert "\r" not in err and "it/s" not in err
    lines = err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"], err
    assert all(" loss " in line and line.endswith(" s") for line in lines)
    assert "folder_cosine on digits" in out


def test_on_a_terminal_each_run_has_one_labelled_bar_and_pmls_bars_are_gone(plugins_dir, tmp_path):
    code, screen = _cli_on_a_terminal([*BENCH, "--output", "bench"], _env(plugins_dir), tmp_path)
    assert code == 0, screen[-3000:]
    assert "[1/2] folder_cosine" in screen and "[2/2] cross_entropy" in screen and "it/s" in screen
    assert "total_loss=" not in screen  # PML's trainer bar (its description is the loss)
    assert "[1/2] folder_cosine: P@1" not in screen  # the log-file lines are for files


def test_tqdm_disable_and_no_progress_are_respected(plugins_dir, tmp_path):
    argv = ["train", "--method", "folder_cosine", *TINY, "--epochs", "2", "--no-output"]
    code, screen = _cli_on_a_terminal(argv, _env(plugins_dir, TQDM_DISABLE="1"), tmp_path)
    assert code == 0, screen[-3000:]
    assert "it/s" not in screen and "epoch 1/2: loss" in screen  # no bar, even on a terminal: lines instead
    code, screen = _cli_on_a_terminal([*argv, "--no-progress"], _env(plugins_dir), tmp_path)
    assert code == 0, screen[-3000:]
    assert screen.strip() == ""


def test_progress_mode_follows_the_flag_the_variable_and_the_terminal(monkeypatch):
    import argparse
    import io

    from pml_anchors.cli.options import progress_mode

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress_mode(argparse.Namespace(no_progress=False)) == "bar"
    assert progress_mode(argparse.Namespace(no_progress=True)) == "off"
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_mode(argparse.Namespace(no_progress=False)) == "lines"
    monkeypatch.delenv("TQDM_DISABLE")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_mode(argparse.Namespace(no_progress=False)) == "lines"


# -- 2. train without --output writes a run folder, and says where ---------------------------------------------------
def test_train_without_output_writes_a_new_folder_under_runs_and_says_so(toys, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--method", "toy_fixed", *TINY]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("toy_fixed-") and len(run.name) == len("toy_fixed-YYYYmmdd-HHMMSS")
    assert (run / "results.json").is_file() and (run / "checkpoint.pt").is_file()
    out, err = capsys.readouterr()
    assert f"writing the run to {Path('runs') / run.name}" in err and "--no-output" in err
    assert f"wrote {Path('runs') / run.name / 'results.json'}" in out
    assert main(["train", "--method", "toy_fixed", *TINY]) == 0  # the next run gets its own folder
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_no_output_writes_nothing_and_a_failed_run_leaves_no_empty_folder(toys, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--method", "toy_fixed", *TINY, "--no-output", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["output"] is None
    assert main(["train", "--method", "toy_fixed", *TINY, "--dataset", "mnst"]) == 2
    assert "Unknown dataset 'mnst'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):
        main(["train", "--method", "toy_fixed", "--no-output", "--output", "x"])


def test_default_output_is_unique(tmp_path, monkeypatch):
    from pml_anchors.cli.train import default_output

    monkeypatch.chdir(tmp_path)
    folder, created = default_output("baseline:pml_arcface", now=0.0)
    assert folder.startswith(os.path.join("runs", "baseline_pml_arcface-")) and created == ["runs", folder]
    os.makedirs(folder)
    again, created = default_output("baseline:pml_arcface", now=0.0)
    assert again == f"{folder}-2" and created == [again]


# -- 3. threads: not more than the CPUs this process may use, recorded with the reason -------------------------------
def test_thread_default_respects_omp_quota_affinity_and_load():
    from pml_anchors.app.threads import choose_threads, split_threads

    idle = dict(environ={}, cpu_count=8, affinity=8, cpu_limit=None, load=0.2)
    assert choose_threads(**idle) == (8, "8 CPUs")
    assert choose_threads(**{**idle, "environ": {"OMP_NUM_THREADS": "3"}}) == (3, "OMP_NUM_THREADS")
    assert choose_threads(**{**idle, "environ": {"OMP_NUM_THREADS": "x"}}) == (8, "8 CPUs")  # not a number: ignored
    assert choose_threads(**{**idle, "cpu_limit": 1.5}) == (1, "cgroup quota (1.5 CPUs)")
    assert choose_threads(**{**idle, "affinity": 2}) == (2, "CPU affinity (2 of 8 CPUs)")
    assert choose_threads(**{**idle, "cpu_limit": 4.0, "affinity": 2})[0] == 2
    # a busy machine: the load average takes CPUs away (the bench on a busy 2-core machine: 2.8x faster with 1)
    assert choose_threads(environ={}, cpu_count=2, affinity=2, cpu_limit=None, load=2.1) == (
        1,
        "load average 2.1 on 2 CPUs",
    )
    assert choose_threads(environ={}, cpu_count=16, affinity=16, cpu_limit=None, load=6.0)[0] == 10
    # under a quota the load average (the host's) says nothing about this container's CPUs
    assert choose_threads(environ={}, cpu_count=64, affinity=64, cpu_limit=2.0, load=40.0) == (
        2,
        "cgroup quota (2 CPUs)",
    )
    assert split_threads((8, "8 CPUs"), 2) == (4, "8 CPUs, shared by 2 processes")


def test_cgroup_quota_is_read_from_v2_and_v1_files(tmp_path):
    from pml_anchors.app.threads import cgroup_cpu_limit

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_results_record_the_thread_count_and_why(toys, tmp_path, monkeypatch, capsys):
    from pml_anchors.app import threads

    monkeypatch.setattr(threads, "default_threads", lambda: (1, "cgroup quota (1 CPUs)"))
    assert main(["train", "--method", "toy_fixed", *TINY, "--no-output", "--json", "--no-progress"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["threads"] == 1 and results["threads_from"] == "cgroup quota (1 CPUs)"
    assert results["config"]["num_threads"] == 1  # in the checkpoint's config too: a resumed run keeps it
    assert main(["train", "--method", "toy_fixed", *TINY, "--no-output", "--json", "--threads", "2"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["threads"] == 2 and results["threads_from"] == "--threads"


# -- 4. results.md: the test set's size, trivial Recall@K left out, what the seconds are ------------------------------
def test_results_md_names_the_test_set_and_leaves_out_trivial_recall(toys, tmp_path, monkeypatch):
    from pml_anchors.app import threads

    monkeypatch.setattr(threads, "default_threads", lambda: (1, "load average 2.1 on 2 CPUs"))
    out = tmp_path / "bench"
    argv = ["bench", "--methods", "toy_fixed", "--baselines", "none", *TINY, "--no-plots", "--no-progress"]
    assert main([*argv, "--recall-at", "1,2,100,1000", "--output", str(out)]) == 0
    table = (out / "results.md").read_text()
    summary = json.loads((out / "results.json").read_text())
    (run,) = summary["runs"]
    n = run["test_size"]
    assert n == summary["test_size"] == 120 and summary["threads"] == 1
    assert f"Test set: {n} items in {run['test_classes']} classes (the smallest has {run['smallest_test_class']})" in (
        table
    )
    assert f"1/{n} = {1 / n:.4f} of P@1" in table
    assert "1 CPU thread (load average 2.1 on 2 CPUs)" in table
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert "R@2" in header and "R@100" not in header and "R@1000" not in header
    assert "R@100, R@1000 left out" in table and run["recall_at_1000"] == 1.0  # still in results.json
    assert header.endswith("| seconds | s/epoch |") and "the training time of one run" in table
    assert run["seconds_per_epoch"] == pytest.approx(run["seconds"] / run["epochs"])


def test_chance_recall_marks_what_a_random_ranking_already_scores():
    from pml_anchors.app.bench import TRIVIAL_RECALL, chance_recall

    assert chance_recall(1000, 450, 44) == 1.0  # the whole gallery
    assert chance_recall(100, 450, 44) > TRIVIAL_RECALL  # digits: 10 classes of ~45 test items
    assert chance_recall(8, 450, 44) < 0.6
    assert chance_recall(1000, 60502, 2) < 0.02  # SOP: classes of 2-12 images, R@1000 is informative
    assert chance_recall(1, 3, 1) == 0.0  # a lone query has no classmate


# -- 5. plugin problems: one line once, ambiguous names marked, consistent validate counts, sentences ----------------
def test_a_broken_plugin_is_one_warning_line_without_the_loaders_source(tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "broken.py").write_text("raise ImportError('needs the foo package')\n")
    (d / "folder_method.py").write_text(PLUGIN)
    code, out, err = _cli(["methods"], _env(d), tmp_path)
    assert code == 0
    assert err.splitlines()[0] == (
        f"pml-anchors: warning: skipping plugin broken ({d / 'broken.py'}): ImportError: needs the foo package "
        f"(at {d / 'broken.py'}:1)"
    )
    assert err.count("needs the foo package") == 1 and "self." not in err and "manager.py" not in err


def test_the_library_warning_points_at_the_callers_line(folder):
    (folder / "broken.py").write_text("raise ImportError('needs the foo package')\n")
    pml_anchors.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pml_anchors.list_methods()
    (warning,) = [w for w in caught if issubclass(w.category, pml_anchors.PluginLoadWarning)]
    assert warning.filename == __file__


@pytest.fixture
def twins(folder):
    """Two plain-file plugins registering the same method name."""
    (folder / "folder_twin.py").write_text(PLUGIN)
    pml_anchors.reset()
    return folder


def test_methods_marks_an_ambiguous_name_and_prints_the_qualified_ones(twins, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["methods"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if not line.startswith(" ")]
    assert lines == [
        "folder_method:folder_cosine  [folder_method]  AMBIGUOUS: 'folder_cosine' is also in folder_twin",
        "folder_twin:folder_cosine  [folder_twin]  AMBIGUOUS: 'folder_cosine' is also in folder_method",
    ]
    assert "'folder_cosine' is registered by several plugins" in err
    assert main(["methods", "--json"]) == 0
    assert [m["ambiguous"] for m in json.loads(capsys.readouterr().out)] == [True, True]


def test_validate_counts_a_conflict_once_and_says_what_it_means(twins, capsys):
    assert main(["validate"]) == 1
    out, err = capsys.readouterr()
    assert out.count("CLASH   folder_cosine") == 2 and "FAILED" not in out
    assert "select this one as 'folder_twin:folder_cosine'" in out
    assert "2 checked, 0 failed, 2 clashing" in err and "the short name is refused as ambiguous" in err
    assert main(["validate", "folder_twin:folder_cosine", "--json"]) == 1
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "conflict" and row["plugin"] == "folder_twin"


def test_unknown_method_error_is_made_of_sentences(toys):
    with pytest.raises(pml_anchors.UnknownMethodError) as info:
        pml_anchors.get_method("zzz_qqq")
    assert str(info.value).startswith("unknown method 'zzz_qqq'. Available methods: ")
    with pytest.raises(pml_anchors.UnknownMethodError, match=r"^unknown method 'toy_fixd'; did you mean 'toy_fixed'"):
        pml_anchors.get_method("toy_fixd")


# -- 6. the core alone: say that no method plugin is installed, and which distribution has which method ---------------
def test_core_only_methods_says_how_to_install_the_built_ins(pml_registry, capsys):
    assert main(["methods"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "the core provides none, and no method plugin is loaded" in err and BUILTINS in err
    assert "pml-anchors-ncm: c_ncm, e_ncm" in err


def test_core_only_validate_fails_with_nothing_to_check(pml_registry, capsys):
    assert main(["validate", "--run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pml-anchors validate: nothing to check: ") and BUILTINS in err


def test_core_only_unknown_builtin_method_names_its_distribution(pml_registry, capsys):
    assert main(["train", "--method", "c_ncm", "--no-output"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'c_ncm'. No method is registered" in err
    assert "'c_ncm' is a built-in method of the pml-anchors-ncm distribution: pip install pml-anchors-ncm." in err
    with pytest.raises(pml_anchors.UnknownMethodError, match="pip install pml-anchors-reponet"):
        pml_anchors.get_method("margin_reponet")  # an alias
    with pytest.raises(pml_anchors.UnknownMethodError) as info:
        pml_anchors.get_method("my_method")  # not a built-in: how to install them all
    assert BUILTINS in str(info.value)


def test_the_builtin_map_matches_the_built_in_plugins():
    from pml_anchors.plugin.builtins import BUILTIN_ALIASES, BUILTIN_METHODS
    from pml_anchors.plugin.manager import BUILTIN_DISTRIBUTIONS

    assert set(BUILTIN_METHODS) == BUILTIN_DISTRIBUTIONS
    root = Path(__file__).resolve().parents[1] / "plugins"
    for dist, names in BUILTIN_METHODS.items():
        (source,) = root.glob(f"*/{dist.replace('-', '_')}/__init__.py")
        text = source.read_text()
        for name in names:
            assert f'name="{name}"' in text, (dist, name)
    for alias, name in BUILTIN_ALIASES.items():
        (source,) = [p for p in root.glob("*/pml_anchors_*/__init__.py") if f'name="{name}"' in p.read_text()]
        assert f'"{alias}"' in source.read_text()


def test_python_m_pml_anchors_is_the_command(tmp_path):
    """``python -m pml_anchors`` runs the ``pml-anchors`` command, as ``python -m pml_anchors.cli`` does."""
    out = subprocess.run(
        [sys.executable, "-m", "pml_anchors", "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"pml-anchors {pml_anchors.__version__}"
