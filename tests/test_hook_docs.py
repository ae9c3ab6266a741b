"""Meta-tests (ported from Datasette): the plugin contract is documented and tested.

* every hookspec in ``pml_anchors.plugin.hookspecs`` is documented in docs/plugins/hooks.md as ``name(args)``;
* every hookspec has a test named ``test_hook_<name>`` somewhere under tests/;
* every :class:`~pml_anchors.MethodSpec` field appears in docs/plugins/methodspec.md.
"""

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from pml_anchors import MethodSpec
from pml_anchors.plugin import hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "plugins"


def hookspec_names():
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return sorted(name for name, obj in vars(hookspecs).items() if inspect.isfunction(obj) and hasattr(obj, marker))


def test_hookspecs_are_found():
    assert {"register_initializers", "register_methods"} <= set(hookspec_names())


@pytest.mark.parametrize("name", hookspec_names())
def test_hookspec_is_documented_with_its_signature(name):
    args = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
    text = (DOCS / "hooks.md").read_text(encoding="utf-8")
    assert f"{name}({args})" in text, f"docs/plugins/hooks.md does not document {name}({args})"
    assert re.search(rf"^#+ .*{name}\({args}\)", text, re.MULTILINE), f"hooks.md needs a heading for {name}({args})"


@pytest.mark.parametrize("name", hookspec_names())
def test_hookspec_has_a_test(name):
    pattern = re.compile(rf"^\s*def test_hook_{name}\b", re.MULTILINE)
    found = [p for p in (ROOT / "tests").rglob("test_*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert found, f"no test named test_hook_{name} under tests/"


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(MethodSpec)])
def test_methodspec_field_is_documented(field):
    text = (DOCS / "methodspec.md").read_text(encoding="utf-8")
    assert f"`{field}`" in text, f"docs/plugins/methodspec.md does not document MethodSpec.{field}"
