"""`pml-anchors validate [NAME ...] [--run]`: real plugins from a folder (good, broken, lazy, non-conforming)."""

import json

import pytest

import pml_anchors
from pml_anchors.cli import main
from pml_anchors.testing.conformance import ConformanceError, check_method

LAZY_MISSING = """
from pml_anchors import MethodSpec, hookimpl

@hookimpl
def register_methods(register):
    register(MethodSpec(name="lazy_missing", loss="not_a_real_module_xyz.losses:Loss"))
"""

# the `mixed` folder holds a plugin that fails to load on purpose: its warning is expected here
pytestmark = pytest.mark.filterwarnings("ignore::pml_anchors.PluginLoadWarning")

NO_ANCHOR_GRADIENT = """
import torch.nn.functional as F

from pml_anchors import MethodSpec, hookimpl
from pml_anchors.losses import AnchorLoss


class DetachedAnchorsLoss(AnchorLoss):
    learnable_anchors = True
    default_anchors = "kaiming_normal"

    def anchor_losses(self, embeddings, labels, anchors, weights):
        logits = F.normalize(embeddings, dim=1) @ F.normalize(anchors.detach(), dim=1).T  # the bug: detached
        return {"loss": self.element_loss(F.cross_entropy(10 * logits, labels, reduction="none") * weights)}


@hookimpl
def register_methods(register):
    register(MethodSpec(name="detached_anchors", loss=DetachedAnchorsLoss))
"""


@pytest.fixture
def mixed(folder):
    """The `folder` fixture (conftest) with folder_method.py (conforms), bad_import.py (fails to load), lazy_missing.py (loss cannot be imported),
    no_gradient.py (loads and resolves, but its learnable anchors get no gradient)."""
    (folder / "bad_import.py").write_text("import not_a_real_package_xyz\n")
    (folder / "lazy_missing.py").write_text(LAZY_MISSING)
    (folder / "no_gradient.py").write_text(NO_ANCHOR_GRADIENT)
    pml_anchors.reset()
    return folder


def _rows(capsys) -> dict:
    return {r["method"] or r["plugin"]: r for r in json.loads(capsys.readouterr().out)}


def test_every_builtin_method_resolves_and_passes_the_conformance_run(capsys):
    assert main(["validate", "--run", "--json"]) == 0
    rows = _rows(capsys)
    assert set(rows) == {"cam", "fsc", "c_ncm", "e_ncm", "proxy_anchor", "reponet"}
    assert all(r["status"] == "ok" and r["report"]["trainer_loss"] > 0 for r in rows.values())
    assert all(r["report"]["compile"]["graph_breaks"] == 0 for r in rows.values())  # docs/compile.md
    assert all(r["detail"].endswith("; compiles whole") for r in rows.values())


def test_broken_lazy_and_nonconforming_plugins_fail_and_set_the_exit_status(mixed, capsys):
    assert main(["validate", "--json"]) == 1  # without --run: loading and resolving only
    rows = _rows(capsys)
    assert rows["bad_import"]["status"] == "failed" and "not_a_real_package_xyz" in rows["bad_import"]["error"]
    assert rows["lazy_missing"]["status"] == "failed" and "not_a_real_module_xyz" in rows["lazy_missing"]["error"]
    assert rows["folder_cosine"]["status"] == "ok" and rows["detached_anchors"]["status"] == "ok"

    assert main(["validate", "detached_anchors", "--run"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("FAILED  detached_anchors  [no_gradient]  ConformanceError: ")
    assert "learnable anchors received no gradient" in out and "1 checked (with --run), 1 failed" in err

    assert main(["validate", "folder_method", "--run"]) == 0  # a plugin name: its methods
    out = capsys.readouterr().out
    assert out.startswith("ok      folder_cosine  [folder_method]") and "conformance passed" in out

    assert main(["validate", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "Plugins: " in err and "folder-method" in err


def test_check_method_raises_conformance_error_not_a_bare_assert(mixed):
    """It does not rely on `assert` statements (so it checks under python -O too) and is still an AssertionError."""
    with pytest.raises(ConformanceError, match="detached_anchors'.*learnable anchors received no gradient"):
        check_method("detached_anchors")
    assert issubclass(ConformanceError, AssertionError)


def test_a_switched_off_plugin_is_not_a_failure(folder, monkeypatch, capsys):
    from pml_anchors.plugin.settings import ENV_DISABLE

    (folder / "bad_import.py").write_text("import not_a_real_package_xyz\n")
    monkeypatch.setenv(ENV_DISABLE, "bad_import")  # disabled on purpose: not loaded, not broken
    pml_anchors.reset()
    assert main(["validate"]) == 0
    assert "1 checked, 0 failed" in capsys.readouterr().out
    assert main(["validate", "bad_import"]) == 1  # named explicitly, it cannot be checked
    assert "plugin is disabled" in capsys.readouterr().out
