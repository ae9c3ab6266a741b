"""pml-anchors train | eval | bench."""

import json
import subprocess
import sys

import pytest
import torch
from training_toys import (
    single_thread,  # noqa: F401 - autouse fixture
)

from pml_anchors.cli import main

TINY = ["--epochs", "1", "--limit", "64", "--test-limit", "120", "--batch-size", "32", "--device", "cpu"]


def test_help_lists_train_eval_bench_without_importing_torch():
    code = (
        "import sys\nfrom pml_anchors.cli import main\n"
        "for cmd in (['--help'], ['train', '--help'], ['eval', '--help'], ['bench', '--help']):\n"
        "    try:\n        main(cmd)\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
    assert "train" in out and "bench" in out and "--resume" in out and "--baselines" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--method", "toy_fixd"], "unknown method 'toy_fixd'; did you mean 'toy_fixed'"),
        (["train", "--method", "toy_fixed", "--dataset", "mnst"], "Unknown dataset 'mnst'. Did you mean 'mnist'"),
        (
            ["train", "--method", "toy_fixed", "--dataset", "mnist", "--data-root", "/nonexistent/mnist"],
            "MNIST not found",
        ),
        (["train", "--epochs", "1"], "--method is required"),
        (["bench", "--methods", "toy_fixed", "--baselines", "arcfce"], "did you mean 'pml_arcface'"),
        (["eval", "--checkpoint", "/nonexistent/checkpoint.pt"], "checkpoint not found"),
        (["train", "--method", "toy_fixed", "--workers", "-1"], "dataloader_num_workers must be an int >= 0, got -1"),
        (["train", "--method", "toy_fixed", *TINY, "--compile", "fastest"], "Unrecognized mode=fastest"),
    ],
)
def test_errors_exit_2_with_one_line(toys, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith(f"pml-anchors {argv[0]}: error:") and "\n" not in err


def test_train_writes_results_and_checkpoint_and_eval_reproduces(toys, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "toy_learnable", *TINY, "--output", str(out)]) == 0
    assert "P@1" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    expected = {
        "method", "dataset", "protocol", "epochs", "seconds", "device", "precision_at_1",
        "mean_average_precision_at_r", "r_precision", "mean_average_precision", "nearest_anchor_accuracy",
        "intra_class_spread", "min_anchor_angle_deg", "target_min_anchor_angle_deg", "plugins", "history",
    }  # fmt: skip
    assert expected <= set(results)
    assert results["method"] == "toy_learnable" and results["dataset"] == "digits" and results["epochs"] == 1
    assert any(p["name"] == "toys" for p in results["plugins"])

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--json", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1  # --threads, as train's
    finally:
        torch.set_num_threads(before)
    again = json.loads(capsys.readouterr().out)
    assert (again["epoch"], again["epochs_trained"]) == (1, 1)
    for key in ("precision_at_1", "mean_average_precision_at_r", "r_precision", "mean_average_precision"):
        assert again[key] == pytest.approx(results[key], abs=1e-9), key
    assert again["nearest_anchor_accuracy"] == pytest.approx(results["nearest_anchor_accuracy"])

    assert main(["train", "--resume", str(out / "checkpoint.pt"), "--epochs", "2", "--output", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["epochs"] == 2


def test_eval_under_another_protocol_says_what_the_numbers_mean(toys, tmp_path, capsys):
    """A same_class checkpoint evaluated under open_set trained on the held-out classes: eval says so (stderr and
    the JSON's "note"), and the other way round that classes were never trained; the same protocol adds nothing."""
    out = tmp_path / "run"
    assert main(["train", "--method", "toy_fixed", *TINY, "--output", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    checkpoint = str(out / "checkpoint.pt")
    assert main(["eval", "--checkpoint", checkpoint, "--json", "--protocol", "open_set"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert results["protocol"] == "open_set" and "not a held-out-class (zero-shot) result" in results["note"]
    assert f"note: {results['note']}" in captured.err
    assert main(["eval", "--checkpoint", checkpoint, "--json"]) == 0
    captured = capsys.readouterr()
    assert "note" not in json.loads(captured.out) and "note:" not in captured.err

    out = tmp_path / "open"
    assert main(["train", "--method", "toy_fixed", *TINY, "--protocol", "open_set", "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--json", "--protocol", "same_class"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert "classes training never saw" in results["note"] and results["nearest_anchor_accuracy"] is None


def test_resume_from_another_directory_continues_the_run_in_its_own_folder(toys, tmp_path, monkeypatch, capsys):
    """A relative --output is where the checkpoint was written, not where a later resume happens to run."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--method", "toy_fixed", *TINY, "--output", "runs/a", "--no-progress"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(tmp_path / "runs/a/checkpoint.pt"), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((tmp_path / "runs/a/results.json").read_text())["epochs"] == 2
    assert not (elsewhere / "runs").exists()
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "runs/a/checkpoint.pt"), "--epochs", "2", "--no-progress"]) == 0
    assert "nothing left to train: the checkpoint finished epoch 2 of 2" in capsys.readouterr().err


def test_relative_paths_are_stored_absolute_and_download_reaches_the_dataset(tmp_path, monkeypatch):
    import argparse

    from pml_anchors.cli.options import given_config as _given

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(data_root="imgs", backbone_weights="w.pt", download=True, compile=None)
    given = _given(args)
    assert given["data_root"] == str(tmp_path / "imgs")
    assert given["backbone_kwargs"] == {"weights_path": str(tmp_path / "w.pt")}
    assert given["dataset_kwargs"] == {"download": True}
    args.backbone_kwargs = {"pooling": "avg+max"}  # --backbone-kwargs and --backbone-weights together
    assert _given(args)["backbone_kwargs"] == {"pooling": "avg+max", "weights_path": str(tmp_path / "w.pt")}
    args.dataset_kwargs = {"image_size": 224}  # --dataset-kwargs and --download together
    assert _given(args)["dataset_kwargs"] == {"image_size": 224, "download": True}


def test_dataset_kwargs_flag_reaches_the_dataset(toys, tmp_path, capsys):
    argv = ["train", "--method", "toy_fixed", "--epochs", "0", "--batch-size", "32", "--device", "cpu", "--json"]
    argv += ["--no-output"]
    assert main([*argv, "--dataset-kwargs", '{"test_fraction": 0.5}']) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["config"]["dataset_kwargs"] == {"test_fraction": 0.5}
    assert results["test_size"] in (898, 899) and results["train_size"] + results["test_size"] == 1797  # digits
    assert main([*argv, "--dataset-kwargs", '{"image_size": 224}']) == 2  # an image-folder option
    err = capsys.readouterr().err
    assert "dataset 'digits'" in err and "'image_size'" in err and "got options ['image_size']" in err


def test_backbone_kwargs_flag_builds_the_trunk_and_the_checkpoint_rebuilds_it(toys, tmp_path, capsys):
    import pml_anchors
    from pml_anchors.app.models import GlobalAvgMaxPool

    out = tmp_path / "run"
    argv = ["train", "--method", "toy_fixed", *TINY, "--epochs", "0", "--backbone", "resnet18", "--output", str(out)]
    assert main([*argv, "--backbone-kwargs", '{"pooling": "avg+max"}']) == 0
    assert json.loads((out / "results.json").read_text())["config"]["backbone_kwargs"] == {"pooling": "avg+max"}
    assert isinstance(pml_anchors.load_trained(out / "checkpoint.pt").trunk.avgpool, GlobalAvgMaxPool)
    capsys.readouterr()
    assert main([*argv, "--backbone-kwargs", '{"pooling": "gem"}', "--overwrite"]) == 2
    assert "pooling must be one of 'avg', 'max', 'avg+max', got 'gem'" in capsys.readouterr().err


def test_workers_load_training_and_evaluation_batches_without_changing_the_results(toys, tmp_path, monkeypatch):
    import pml_anchors.evaluation.tester as evaluation

    tester_workers = []
    make_tester = evaluation.make_tester
    monkeypatch.setattr(evaluation, "make_tester", lambda *a, **k: tester_workers.append(a[3]) or make_tester(*a, **k))
    results = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        assert main(["train", "--method", "toy_learnable", *TINY, "--workers", str(workers), "--output", str(out)]) == 0
        results[workers] = json.loads((out / "results.json").read_text())
        assert results[workers]["config"]["dataloader_num_workers"] == workers
    assert tester_workers == [0, 2]  # PML's tester got them too
    for key in ("precision_at_1", "mean_average_precision_at_r", "nearest_anchor_accuracy"):
        assert results[2][key] == results[0][key], key  # no random transforms: the same batches
    assert [h["loss"] for h in results[2]["history"]] == [h["loss"] for h in results[0]["history"]]
    assert main(["eval", "--checkpoint", str(tmp_path / "w0" / "checkpoint.pt"), "--workers", "1", "--json"]) == 0
    assert tester_workers[-1] == 1


def test_compile_trains_the_compiled_models_to_the_eager_results(toys, tmp_path):
    """--compile (inductor, real code generation): the same metrics as eager, the compiled forward really ran,
    and the checkpoint's state dicts are the plain modules' (loadable without compiling)."""
    import torch

    from pml_anchors.app.models import build_backbone

    results = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / ("compiled" if flag else "eager")
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        assert main(["train", "--method", "toy_fixed", *TINY, *flag, "--output", str(out)]) == 0
        results[bool(flag)] = json.loads((out / "results.json").read_text())
        compiled_frames = torch._dynamo.utils.counters["frames"]["ok"]
        assert (compiled_frames > 0) == bool(flag), dict(torch._dynamo.utils.counters["frames"])
    torch._dynamo.reset()
    assert results[True]["config"]["compile"] is True and results[False]["config"]["compile"] is False
    for key in ("precision_at_1", "mean_average_precision_at_r", "nearest_anchor_accuracy"):
        assert results[True][key] == pytest.approx(results[False][key], abs=0.02), key
    losses = [[h["loss"] for h in results[c]["history"]] for c in (False, True)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    state = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=True)
    trunk, embedder = build_backbone(
        "small_cnn", in_channels=1, input_size=8, embedding_size=results[True]["embedding_size"]
    )
    trunk.load_state_dict(state["trunk"])  # strict: no "_orig_mod." prefixes
    embedder.load_state_dict(state["embedder"])


def test_backbone_weights_flag_loads_the_trunk(toys, tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    assert main(["train", "--method", "toy_fixed", *TINY, "--output", str(out)]) == 0
    trained = torch.load(out / "checkpoint.pt", weights_only=True)["trunk"]
    torch.save(trained, tmp_path / "trunk.pt")
    again = tmp_path / "again"
    argv = ["train", "--method", "toy_fixed", *TINY, "--epochs", "0", "--backbone-weights", str(tmp_path / "trunk.pt")]
    assert main([*argv, "--output", str(again)]) == 0
    loaded = torch.load(again / "checkpoint.pt", weights_only=True)["trunk"]
    assert loaded.keys() == trained.keys() and all(torch.equal(loaded[k], trained[k]) for k in trained)
    results = json.loads((again / "results.json").read_text())
    assert results["config"]["backbone_kwargs"]["weights_path"] == str(tmp_path / "trunk.pt")
    (tmp_path / "trunk.pt").unlink()  # eval reads the trained weights from the checkpoint, not that file
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(again / "checkpoint.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision_at_1"] == pytest.approx(results["precision_at_1"], abs=1e-9)
    missing = ["train", "--method", "toy_fixed", *TINY, "--backbone-weights", str(tmp_path / "nope.pt")]
    assert main(missing) == 2
    assert "weights file not found" in capsys.readouterr().err


def test_resume_with_backbone_weights_keeps_the_checkpoints_backbone_options(toys, tmp_path):
    import torch

    from pml_anchors.app.config import TrainConfig
    from pml_anchors.app.session import run

    out = tmp_path / "run"
    config = TrainConfig(
        method="toy_fixed", dataset="digits", epochs=1, limit=64, test_limit=120, batch_size=32, device="cpu",
        backbone="small_cnn", backbone_kwargs={"width": 4}, output=str(out),
    )  # fmt: skip
    run(config)
    torch.save(torch.load(out / "checkpoint.pt", weights_only=True)["trunk"], tmp_path / "trunk.pt")
    argv = ["train", "--resume", str(out / "checkpoint.pt"), "--epochs", "2", "--no-progress"]
    assert main([*argv, "--backbone-weights", str(tmp_path / "trunk.pt")]) == 0  # a width-4 trunk again
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 2
    assert results["config"]["backbone_kwargs"] == {"width": 4, "weights_path": str(tmp_path / "trunk.pt")}


def test_eval_every_epoch_puts_each_epochs_metrics_in_history_and_checkpoint(toys, tmp_path, capsys):
    argv = ["train", "--method", "toy_fixed", *TINY, "--epochs", "2", "--json"]
    assert main([*argv, "--no-output"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert [h["epoch"] for h in plain["history"]] == [1, 2]
    assert all("precision_at_1" not in h for h in plain["history"])  # default: evaluated once, at the end

    out = tmp_path / "run"
    assert main([*argv, "--eval-every-epoch", "--output", str(out)]) == 0
    each = json.loads(capsys.readouterr().out)
    assert [h["epoch"] for h in each["history"]] == [1, 2]
    assert all(0.0 <= h["precision_at_1"] <= 1.0 for h in each["history"])
    assert each["history"][-1]["precision_at_1"] == each["precision_at_1"] == plain["precision_at_1"]
    from pml_anchors.app.checkpoints import load_checkpoint

    saved = load_checkpoint(str(out / "checkpoint.pt"))
    assert saved["config"]["eval_every_epoch"] is True  # a resumed run keeps evaluating every epoch
    assert [h["precision_at_1"] for h in saved["history"]] == [h["precision_at_1"] for h in each["history"]]


def test_train_open_set_has_no_nearest_anchor_accuracy(toys, tmp_path, capsys):
    assert main(["train", "--method", "toy_fixed", *TINY, "--protocol", "open_set", "--json", "--no-output"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["protocol"] == "open_set" and results["nearest_anchor_accuracy"] is None


def test_bench_two_methods_two_baselines_writes_md_json_png(toys, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--dataset", "digits", "--methods", "toy_fixed,pml_proxy"]
    argv += ["--baselines", "cross_entropy,pml_contrastive", *TINY, "--output", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in summary["runs"]] == ["toy_fixed", "pml_proxy", "cross_entropy", "pml_contrastive"]
    assert all(len(r["history"]) == 1 and "precision_at_1" in r["history"][0] for r in summary["runs"])
    table = (out / "results.md").read_text()
    header = (
        "| method | d | P@1 | R@2 | R@4 | R@8 | MAP@R | R-precision | mAP | nearest-anchor acc | seconds | s/epoch |"
    )
    assert header in table
    assert "cross_entropy (PML baseline)" in table and "| toy_fixed |" in table
    for run in summary["runs"]:  # seconds to 3 significant digits: a tiny run's are not "0.0"
        row = next(line for line in table.splitlines() if line.startswith(f"| {run['method']}"))
        seconds = float(row.strip("|").split("|")[-2])
        assert seconds > 0 and seconds == pytest.approx(run["seconds"], rel=5e-3, abs=0.5)
    for png in ("accuracy_vs_time.png", "embeddings.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_gives_every_method_the_explicit_width(tmp_path):
    """An explicit --embedding-size applies to every method: reponet holds its 9-d simplex zero-padded; a width
    too narrow for the simplex is that run's recorded error (the others go on); without one, reponet derives d."""
    out = tmp_path / "bench"
    argv = ["bench", "--dataset", "digits", "--methods", "reponet,c_ncm", "--baselines", "none", *TINY, "--no-plots"]
    assert main([*argv, "--embedding-size", "16", "--output", str(out)]) == 0
    runs = {r["method"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert "error" not in runs["reponet"] and runs["reponet"]["embedding_size"] == 16
    assert runs["c_ncm"]["embedding_size"] == 16
    assert "| reponet | 16 |" in (out / "results.md").read_text()
    with pytest.warns(UserWarning, match="reponet failed"):
        assert main([*argv, "--embedding-size", "4", "--output", str(tmp_path / "narrow")]) == 1  # a run failed
    runs = {r["method"]: r for r in json.loads((tmp_path / "narrow" / "results.json").read_text())["runs"]}
    assert "needs embedding_size >= num_classes - 1 = 9, got 4" in runs["reponet"]["error"]
    assert "error" not in runs["c_ncm"] and runs["c_ncm"]["embedding_size"] == 4
    assert main([*argv[:-1], "--output", str(tmp_path / "own")]) == 0
    runs = {r["method"]: r for r in json.loads((tmp_path / "own" / "results.json").read_text())["runs"]}
    assert runs["reponet"]["embedding_size"] == 9 and runs["c_ncm"]["embedding_size"] == 64


def test_example_pipeline_runs_with_a_registered_method(toys, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "pml_pipeline.py"
    spec = importlib.util.spec_from_file_location("pml_pipeline_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    history = module.main(["--method", "toy_fixed", "--epochs", "1", "--limit", "128"])
    assert 0.0 <= history[1]["precision_at_1_level0"] <= 1.0
    assert "epoch 1: precision_at_1" in capsys.readouterr().out


def _registered_methods() -> list:
    from pml_anchors.plugin.api import list_methods

    try:
        return sorted({spec.name for spec in list_methods()})
    except Exception:  # noqa: BLE001 - collection must not fail; the test is then skipped
        return []


@pytest.mark.slow
@pytest.mark.parametrize(
    "method", _registered_methods() or [pytest.param("-", marks=pytest.mark.skip(reason="no method plugins installed"))]
)
def test_every_registered_method_learns_digits_in_two_epochs(method, tmp_path, capsys):
    out = tmp_path / method
    argv = ["train", "--method", method, "--dataset", "digits", "--epochs", "2", "--device", "cpu"]
    assert main([*argv, "--output", str(out), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    print(f"{method}: P@1 {results['precision_at_1']:.4f} in {results['seconds']:.1f} s")
    assert results["precision_at_1"] >= 0.9, results
    assert results["seconds"] < 60
