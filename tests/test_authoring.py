"""`pml-anchors new-plugin` and the plugin template (pml_anchors/plugin/plugin_template, pml_anchors/plugin/template.py).

The end-to-end proof (install the rendered plugin, list it, train it) is tests/test_authoring_e2e.py.
"""

import datetime
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from pml_anchors import PLUGIN_API_VERSION
from pml_anchors.cli import main
from pml_anchors.plugin.template import (
    DOCS_URL,
    PLACEHOLDER,
    PROJECT_URL,
    TUTORIAL_URL,
    TemplateError,
    derive_names,
    new_plugin,
    next_steps,
    pml_anchors_requirement,
    render_files,
    render_text,
    template_files,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pml-anchors-center-loss"
EXPECTED_FILES = {
    ".github/workflows/test.yml",
    ".gitignore",
    "LICENSE",
    "README.md",
    "pyproject.toml",
    "pml_anchors_center_loss/__init__.py",
    "pml_anchors_center_loss/loss.py",
    "tests/test_center_loss.py",
}


def test_names_are_derived_from_one_name():
    names = derive_names("center-loss")
    assert (names.distribution, names.package, names.method, names.class_name) == (
        "pml-anchors-center-loss",
        "pml_anchors_center_loss",
        "center_loss",
        "CenterLoss",
    )
    assert derive_names("demo-method").class_name == "DemoMethodLoss"
    assert derive_names("pml-anchors-Center_Loss").hyphenated == "center-loss"  # prefix, case and '_' tolerated
    assert derive_names("hadamard", method="fixed_hadamard").class_name == "FixedHadamardLoss"


@pytest.mark.parametrize("name", ["", "1loss", "center--loss", "center loss", "-center", "centre!", "pml-anchors-"])
def test_bad_plugin_names_are_rejected(name):
    with pytest.raises(TemplateError, match="plugin name"):
        derive_names(name)


@pytest.mark.parametrize("method", ["class", "Center", "center-loss", "2d"])
def test_bad_method_names_are_rejected(method):
    with pytest.raises(TemplateError, match="method name"):
        derive_names("center-loss", method=method)


@pytest.mark.parametrize("description", ['say "hi"', "two\nlines", "back\\slash", "  "])
def test_text_that_would_break_pyproject_or_python_is_rejected(description):
    with pytest.raises(TemplateError, match="description"):
        derive_names("center-loss", description=description)


def test_requirement_follows_the_plugin_api_version():
    assert PLUGIN_API_VERSION == "0.1"
    assert pml_anchors_requirement() == "pml-anchors>=0.1,<0.2"


def test_unknown_placeholder_is_an_error():
    with pytest.raises(TemplateError, match="unknown placeholder"):
        render_text("{{nme}}", {"name": "x"})


def test_template_renders_completely():
    files = render_files(derive_names("center-loss"))
    assert {str(p) for p in files} == EXPECTED_FILES
    for path, text in files.items():
        assert not PLACEHOLDER.search(text) and "{{" not in text, f"{path} still has a placeholder"
    assert (
        '[project.entry-points.pml_anchors]\npml-anchors-center-loss = "pml_anchors_center_loss"'
        in files[PurePosixPath("pyproject.toml")]
    )
    assert '"pml-anchors>=0.1,<0.2"' in files[PurePosixPath("pyproject.toml")]
    assert 'check_method("center_loss")' in files[PurePosixPath("tests/test_center_loss.py")]
    init = files[PurePosixPath("pml_anchors_center_loss/__init__.py")]
    assert "@hookimpl\ndef register_methods(register):" in init
    assert 'loss="pml_anchors_center_loss.loss:CenterLoss"' in init


def test_template_files_are_invisible_to_tooling():
    """Every template file ends in .tmpl, so pytest, ruff and setuptools never read the placeholders as code."""
    paths = [p for p, _ in template_files()]
    assert paths and all(p.name.endswith(".tmpl") for p in paths)
    on_disk = [p for p in (ROOT / "pml_anchors" / "plugin" / "plugin_template").rglob("*") if p.is_file()]
    assert all(p.name.endswith(".tmpl") or "__pycache__" in p.parts for p in on_disk)


def test_new_plugin_cli_writes_the_project_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["new-plugin", "center-loss", "--dir", str(tmp_path), "--author", "A. Author"]) == 0
    out = capsys.readouterr().out
    target = tmp_path / "pml-anchors-center-loss"
    assert f"Created pml-anchors-center-loss in {target}" in out
    assert {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()} == EXPECTED_FILES
    assert 'authors = [{ name = "A. Author" }]' in (target / "pyproject.toml").read_text()
    before = (target / "README.md").read_text()
    (target / "README.md").write_text("edited")
    assert main(["new-plugin", "center-loss", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (target / "README.md").read_text() == "edited" != before


def _repository_path(url: str) -> Path | None:
    """The file of this repository that an absolute link into it names (None for other links)."""
    match = re.match(re.escape(PROJECT_URL) + r"/(?:blob|tree)/main/([^#?]+)", url)
    return ROOT / match.group(1) if match else None


def test_next_steps_install_the_test_extra_and_link_the_tutorial(tmp_path):
    names = derive_names("center-loss", author="A. Author")
    text = next_steps(names, tmp_path / names.distribution)
    assert 'python -m pip install -e ".[test]"' in text  # `-e .` alone leaves `python -m pytest` without pytest
    assert f"Walk-through: {TUTORIAL_URL}" in text and "source repository" not in text
    assert TUTORIAL_URL == f"{DOCS_URL}/plugins/tutorial.md" and _repository_path(TUTORIAL_URL).exists()
    assert "LICENSE" in text and ".github/workflows/test.yml" in text


def test_rendered_project_has_a_license_a_test_extra_and_ci():
    files = render_files(derive_names("center-loss", author="A. Author"))
    license_text = files[PurePosixPath("LICENSE")]
    assert license_text.startswith("MIT License\n")
    assert f"Copyright (c) {datetime.date.today().year} A. Author\n" in license_text
    assert license_text.split("A. Author", 1)[1] == (ROOT / "LICENSE").read_text().split("contributors", 1)[1]
    pyproject = files[PurePosixPath("pyproject.toml")].splitlines()
    assert {'license = "MIT"', 'license-files = ["LICENSE"]', 'test = ["pytest>=8"]'} <= set(pyproject)
    if sys.version_info >= (3, 11):
        import tomllib

        project = tomllib.loads(files[PurePosixPath("pyproject.toml")])["project"]
        assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
        assert project["optional-dependencies"]["test"] == ["pytest>=8"]
    workflow = files[PurePosixPath(".github/workflows/test.yml")]
    assert re.search(r"^on:\n  push:\n  pull_request:\n", workflow, re.MULTILINE)
    assert "uses: actions/checkout@v4" in workflow and "uses: actions/setup-python@v5" in workflow
    assert "--index-url https://download.pytorch.org/whl/cpu" in workflow  # CPU torch: no CUDA wheels on CI
    assert 'run: python -m pip install -e ".[test]"' in workflow and "run: python -m pytest" in workflow
    assert "\t" not in workflow  # YAML indents with spaces


def test_rendered_readme_links_resolve_off_the_repository():
    """The generated README is the plugin's PyPI page once published: only absolute links, into files that exist."""
    readme = render_files(derive_names("center-loss"))[PurePosixPath("README.md")]
    targets = re.findall(r"\]\(([^)\s]+)", readme)
    assert targets and all(t.startswith("https://") for t in targets), targets
    for url in targets:
        path = _repository_path(url)
        assert path is None or path.exists(), f"{url} names no file of this repository"
    assert f"{DOCS_URL}/plugins/tutorial.md" in readme
    assert 'python -m pip install -e ".[test]"' in readme and "source repository" not in readme


def test_new_plugin_options(tmp_path):
    names = derive_names("my-proxies", method="my_proxy", description="Proxies, mine", author="Me")
    target = new_plugin(names, tmp_path / "nested" / "dir")
    assert target == tmp_path / "nested" / "dir" / "pml-anchors-my-proxies"
    init = (target / "pml_anchors_my_proxies" / "__init__.py").read_text()
    assert 'name="my_proxy"' in init and 'description="Proxies, mine"' in init
    assert "class MyProxyLoss(AnchorLoss):" in (target / "pml_anchors_my_proxies" / "loss.py").read_text()
    assert (target / "tests" / "test_my_proxies.py").exists()


def test_rendered_project_is_ruff_clean(tmp_path):
    target = new_plugin(derive_names("demo-method"), tmp_path)
    for args in (["check"], ["format", "--check"]):
        out = subprocess.run([sys.executable, "-m", "ruff", *args, str(target)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_new_plugin_help_imports_no_torch():
    code = (
        "import sys\nfrom pml_anchors.cli import main\n"
        "try:\n    main(['new-plugin', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--method" in out.stdout and out.stdout.strip().endswith("False")


def test_worked_example_keeps_the_template_layout():
    """examples/pml-anchors-center-loss was made with `pml-anchors new-plugin center-loss` and then edited."""
    rendered = render_files(derive_names("center-loss"))
    example_files = {p.relative_to(EXAMPLE).as_posix() for p in EXAMPLE.rglob("*") if p.is_file()}
    # the CI workflow runs in a repository of its own; the example is a folder of this one, tested by its suite
    assert {str(p) for p in rendered} - {".github/workflows/test.yml"} <= example_files
    assert (EXAMPLE / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    example = (EXAMPLE / "pyproject.toml").read_text()
    for line in rendered[PurePosixPath("pyproject.toml")].splitlines():
        if line.startswith(
            (
                "name =",
                "dependencies =",
                "license =",
                "license-files =",
                "test =",
                "[project.entry-points",
                "pml-anchors-center-loss =",
                "packages",
            )
        ):
            assert line in example.splitlines(), f"examples/pml-anchors-center-loss/pyproject.toml lacks {line!r}"


@pytest.mark.slow
def test_new_plugin_works_from_an_installed_wheel(tmp_path):
    """The template is package data: build the core's wheel, install it into a fresh virtualenv and render."""
    from pml_anchors.testing import make_plugin_env

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "LICENSE", "README_PYPI.md"):  # the project's files besides the package
        shutil.copy(ROOT / name, src)
    shutil.copytree(ROOT / "pml_anchors", src / "pml_anchors", ignore=shutil.ignore_patterns("__pycache__"))
    pip = ["-m", "pip", "--disable-pip-version-check"]
    wheel_cmd = [*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [sys.executable, *wheel_cmd, "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True
    )
    (wheel,) = (tmp_path / "dist").glob("pml_anchors-*.whl")
    expected = {f"pml_anchors/plugin/plugin_template/{p}" for p, _ in template_files()}
    assert expected <= set(zipfile.ZipFile(wheel).namelist())

    python = make_plugin_env(tmp_path / "env")
    # --force-reinstall: where pml-anchors 0.1.0 is installed as a plain (not editable) copy, pip would call the
    # wheel "already installed" through the parent environment that the new one sees, and skip it
    install = [*pip, "install", "--quiet", "--no-deps", "--no-index", "--force-reinstall", str(wheel)]
    subprocess.run([python, *install], check=True)
    code = (
        "import sys, pml_anchors\nfrom pml_anchors.cli import main\n"
        "print(pml_anchors.__file__)\nsys.exit(main(['new-plugin', 'from-wheel', '--dir', sys.argv[1]]))"
    )
    out = subprocess.run([python, "-c", code, str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(tmp_path / "env") in out.stdout.splitlines()[0]  # the wheel's copy, not this checkout
    assert (tmp_path / "out" / "pml-anchors-from-wheel" / "pml_anchors_from_wheel" / "loss.py").exists()
