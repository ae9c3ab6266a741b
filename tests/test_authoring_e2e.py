"""End to end, the way a third-party author works: a plugin made by `pml-anchors new-plugin` and the
worked example (examples/pml-anchors-center-loss) are pip-installed into a fresh virtualenv (which sees
this environment's torch/PML, see pml_anchors.testing.make_plugin_env) and then, with no
PML_ANCHORS_* variable set: listed as ok by `pml-anchors plugins --json`, built by `get_loss`, pass
their own tests, and train one epoch on `digits` through PML's trainer, evaluated by AccuracyCalculator.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from pml_anchors.cli import main
from pml_anchors.testing import make_plugin_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pml-anchors-center-loss"
TUTORIAL = ROOT / "docs" / "plugins" / "tutorial.md"
#: method -> (distribution, loss class)
PLUGINS = {
    "demo_method": ("pml-anchors-demo-method", "DemoMethodLoss"),
    "center_loss": ("pml-anchors-center-loss", "CenterLoss"),
}


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """method -> project folder: one rendered now, plus the worked example."""
    out = tmp_path_factory.mktemp("rendered")
    assert main(["new-plugin", "demo-method", "--dir", str(out)]) == 0
    return {"demo_method": out / "pml-anchors-demo-method", "center_loss": EXAMPLE}


@pytest.fixture(scope="module")
def python(tmp_path_factory, projects):
    return make_plugin_env(tmp_path_factory.mktemp("authoring-env"), *projects.values())


def run(python, *args, cwd=None, timeout=600):
    """Run the plugin environment's Python with no PML_ANCHORS_* variable, from a folder outside this
    checkout (so that `python -m`/`-c` import the installed packages, not ./pml_anchors)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PML_ANCHORS_")}
    env.update(PYTHONDONTWRITEBYTECODE="1", TQDM_DISABLE="1")
    cwd = cwd or Path(python).parents[1]
    return subprocess.run([python, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def test_plugins_json_lists_both_plugins_as_ok(python):
    out = run(python, "-m", "pml_anchors.cli", "plugins", "--json")
    assert out.returncode == 0, out.stderr
    report = {r["name"]: r for r in json.loads(out.stdout)}
    for method, (dist, _) in PLUGINS.items():
        assert report[dist]["status"] == "ok", report[dist]
        assert report[dist]["version"] == "0.1.0" and report[dist]["methods"] == [method]
        assert report[dist]["hooks"] == ["register_methods"]


def test_get_loss_builds_each_plugins_loss(python):
    code = (
        "import pml_anchors\n"
        f"for method in {list(PLUGINS)!r}:\n"
        "    loss = pml_anchors.get_loss(method, num_classes=10, embedding_size=16)\n"
        "    spec = pml_anchors.get_method(method)\n"
        "    print(type(loss).__name__, spec.qualified_name, spec.plugin_version)\n"
    )
    out = run(python, "-c", code)
    assert out.returncode == 0, out.stderr
    expected = [f"{cls} {dist}:{method} 0.1.0" for method, (dist, cls) in PLUGINS.items()]
    assert out.stdout.splitlines() == expected


@pytest.mark.parametrize("method", PLUGINS)
def test_the_plugins_own_tests_pass(python, projects, method):
    out = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(projects[method] / "tests"))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert re.search(r"\d+ passed", out.stdout) and "failed" not in out.stdout


@pytest.mark.parametrize("method", PLUGINS)
def test_train_one_epoch_on_digits_and_evaluate(python, tmp_path, method):
    """`pml-anchors train` (PML MetricLossOnly + AccuracyCalculator) writes DIR/results.json."""
    output = tmp_path / "run"
    args = ["-m", "pml_anchors.cli", "train", "--method", method, "--dataset", "digits", "--epochs", "1"]
    out = run(python, *args, "--output", str(output))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    results = json.loads((output / "results.json").read_text())
    assert 0.0 <= results["precision_at_1"] <= 1.0
    assert results["qualified_method"] == f"{PLUGINS[method][0]}:{method}"


def test_the_tutorials_pml_pipeline_runs(python, tmp_path):
    """The tutorial's Python (a PML trainer and AccuracyCalculator around the installed center_loss)."""
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks, "docs/plugins/tutorial.md has no python block"
    out = run(python, "-c", "\n".join(blocks), cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert re.search(r"precision@1 \d\.\d+", out.stdout), out.stdout
