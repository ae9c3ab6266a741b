"""The published artefacts: the wheels of the core and of the five method plugins.

The wheels are built from copies of the projects (``pip wheel --no-deps --no-build-isolation``, so the checkout gets no
``build/`` or ``.egg-info``) and checked as PyPI would show them: a LICENSE in each, ``License-Expression: MIT``,
classifiers, project URLs, and a long description whose links all resolve off the repository. Then they are installed
into a fresh virtualenv (:func:`pml_anchors.testing.make_plugin_env`: it sees this environment's torch and PML through
a ``.pth``, so nothing is downloaded) and, from a folder outside this checkout, the ``pml-anchors`` console script
lists the methods, validates them, trains one epoch on ``digits`` and evaluates the checkpoint; the long descriptions'
Python examples run there too. This is the ``pip install pml-anchors pml-anchors-ncm ...`` path of README_PYPI.md.
"""

from __future__ import annotations

import ast
import email.parser
import email.policy
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.message import Message
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pml_anchors.plugin.template import PROJECT_URL, template_files
from pml_anchors.testing import make_plugin_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIRS = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))
#: what the core's wheel is built from (the rest of the checkout is not packaged)
CORE_FILES = ["pyproject.toml", "LICENSE", "README_PYPI.md", "pml_anchors"]
COPY_IGNORE = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


def _project_name(pyproject: Path) -> str:
    match = re.search(r'^name = "([^"]+)"$', pyproject.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{pyproject} has no name"
    return match.group(1)


PLUGINS = {_project_name(d / "pyproject.toml"): d for d in PLUGIN_DIRS}
DISTS = ["pml-anchors", *PLUGINS]
#: the methods the five plugins register, and the distribution of each
METHODS = {
    "e_ncm": "pml-anchors-ncm",
    "c_ncm": "pml-anchors-ncm",
    "cam": "pml-anchors-cam",
    "reponet": "pml-anchors-reponet",
    "fsc": "pml-anchors-fsc",
    "proxy_anchor": "pml-anchors-proxy-anchor",
}

#: link targets in Markdown: inline links and images, reference definitions, HTML attributes
_LINKS = (
    re.compile(r"\]\(\s*<?([^)\s>]+)"),
    re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE),
    re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']"""),
)
_REPO_FILE = re.compile(re.escape(PROJECT_URL) + r"/(?:blob|tree)/main/([^#?]+)")


def links(markdown: str) -> list[str]:
    return [m.group(1) for pattern in _LINKS for m in pattern.finditer(markdown)]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build the six wheels from copies of the projects; the build's output is kept (``log``) for its warnings."""
    tmp = tmp_path_factory.mktemp("packaging")
    core = tmp / "src" / "pml-anchors"
    core.mkdir(parents=True)
    for name in CORE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, core / name, ignore=COPY_IGNORE)
        else:
            shutil.copy(ROOT / name, core / name)
    copies = [core]
    for d in PLUGIN_DIRS:
        copies.append(tmp / "src" / d.name)
        shutil.copytree(d, copies[-1], ignore=COPY_IGNORE)
    cmd = [sys.executable, "-m", "pip", "wheel", "--verbose", "--no-deps", "--no-build-isolation", "--no-index"]
    out = subprocess.run(
        [*cmd, "-w", str(tmp / "dist"), *map(str, copies)],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    wheels = {}
    for wheel in (tmp / "dist").glob("*.whl"):
        wheels[metadata(wheel)["Name"]] = wheel
    assert sorted(wheels) == sorted(DISTS)
    return SimpleNamespace(dir=tmp, wheels=wheels, log=out.stdout + out.stderr)


def dist_info(wheel: Path) -> str:
    (name,) = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist() if n.split("/")[0].endswith(".dist-info")}
    return name


def metadata(wheel: Path) -> Message:
    text = zipfile.ZipFile(wheel).read(f"{dist_info(wheel)}/METADATA").decode("utf-8")
    return email.parser.Parser(policy=email.policy.compat32).parsestr(text)


def test_the_build_prints_no_deprecation_or_license_warning(built):
    """`license = "MIT"` + `license-files`, not the deprecated `license = { text = ... }` table."""
    assert "SetuptoolsDeprecationWarning" not in built.log
    noisy = [line for line in built.log.splitlines() if "warn" in line.lower() and "licen" in line.lower()]
    assert not noisy, "\n".join(noisy)


@pytest.mark.parametrize("dist", DISTS)
def test_each_wheel_ships_the_license(built, dist):
    wheel = zipfile.ZipFile(built.wheels[dist])
    text = wheel.read(f"{dist_info(built.wheels[dist])}/licenses/LICENSE").decode("utf-8")
    assert text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")


@pytest.mark.parametrize("dist", DISTS)
def test_each_wheels_metadata_is_what_pypi_shows(built, dist):
    meta = metadata(built.wheels[dist])
    assert tuple(int(p) for p in meta["Metadata-Version"].split(".")) >= (2, 4)
    assert meta["License-Expression"] == "MIT"
    assert meta["License"] is None  # the legacy free-text field is not written alongside the expression
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier") or []
    assert "Development Status :: 3 - Alpha" in classifiers
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # superseded by License-Expression
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(urls)
    assert all(url.startswith(PROJECT_URL) for url in urls.values()), urls
    for url in urls.values():
        if match := _REPO_FILE.match(url):
            assert (ROOT / match.group(1)).exists(), f"{dist}: {url} names no file of this repository"
    requires = meta.get_all("Requires-Dist") or []
    if dist == "pml-anchors":
        assert any(r.startswith("matplotlib") for r in requires), requires  # `bench` draws its figures
    else:
        (core,) = [r for r in requires if r.startswith("pml-anchors")]
        assert ">=0.1" in core and "<0.2" in core


@pytest.mark.parametrize("dist", DISTS)
def test_each_long_description_works_off_the_repository(built, dist):
    """PyPI renders the long description without the repository: every link is absolute, every link into the
    repository names a file that exists, and the install it shows is `pip install`, not the checkout's set-up."""
    meta = metadata(built.wheels[dist])
    assert meta["Description-Content-Type"].startswith("text/markdown")
    description = meta.get_payload()
    assert description.strip(), f"{dist} has no long description"
    relative = [target for target in links(description) if not re.match(r"(https?|mailto):", target)]
    assert not relative, f"{dist}: relative links do not resolve on PyPI: {relative}"
    for target in links(description):
        if match := _REPO_FILE.match(target):
            assert (ROOT / match.group(1)).exists(), f"{dist}: {target} names no file of this repository"
    assert f"pip install {dist}" in description
    assert "scripts/setup.sh" not in description and "-e ." not in description


#: third-party modules imported outside the core's dependencies, and why that is fine
OPTIONAL_IMPORTS = {
    "pytest": "pml_anchors.testing.fixtures is the pytest11 plugin: only pytest itself imports it",
}


def _closure(requirements: list[str], extras: tuple[str, ...] = ()) -> set[str]:
    """The distributions that `pip install` brings for ``requirements``, resolved in this environment."""
    seen: set[str] = set()
    stack = [(r, extras) for r in requirements]
    while stack:
        text, wanted = stack.pop()
        req = Requirement(text)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", *wanted)):
            continue
        name = canonicalize_name(req.name)
        if name not in seen:
            seen.add(name)
            try:
                found = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:  # not installed here: it brings no module we import
                continue
            stack += [(r, tuple(req.extras)) for r in found.requires or []]
    return seen


def _imported_modules(wheel: Path) -> set[str]:
    """The top-level modules the wheel's code imports (inside functions too), standard library excluded."""
    found = set()
    archive = zipfile.ZipFile(wheel)
    for name in archive.namelist():
        if name.endswith(".py"):
            for node in ast.walk(ast.parse(archive.read(name), name)):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and not m.startswith("pml_anchors")}


@pytest.mark.parametrize("dist", DISTS)
def test_every_import_is_a_dependency(built, dist):
    """`pip install <wheel>` brings every module its code imports: each third-party import belongs to a distribution
    of the wheel's requirements or theirs (an extra's for the optional features), resolved in this environment."""
    requires = metadata(built.wheels[dist]).get_all("Requires-Dist") or []
    if dist != "pml-anchors":  # a plugin gets what the core brings
        requires += metadata(built.wheels["pml-anchors"]).get_all("Requires-Dist") or []
    base = _closure(requires)
    extras = _closure(requires, extras=("tensorboard", "tune")) - base
    owners = importlib.metadata.packages_distributions()
    missing = {}
    for module in _imported_modules(built.wheels[dist]) - set(OPTIONAL_IMPORTS):
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        if not dists & (base | extras):
            missing[module] = sorted(dists)
    assert not missing, f"{dist} imports modules that no declared dependency brings: {missing}"


def test_the_core_wheel_ships_the_plugin_template_and_py_typed(built):
    names = set(zipfile.ZipFile(built.wheels["pml-anchors"]).namelist())
    expected = {f"pml_anchors/plugin/plugin_template/{p}" for p, _ in template_files()}
    assert "pml_anchors/plugin/plugin_template/dot-github/workflows/test.yml.tmpl" in expected
    assert expected <= names, sorted(expected - names)
    assert "pml_anchors/py.typed" in names


# --- installed from the wheels --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(built):
    """A fresh virtualenv with the six wheels installed; ``run`` runs its commands from a folder outside the
    checkout, with no PML_ANCHORS_* variable (every installed plugin loads, as for a user)."""
    python = Path(make_plugin_env(built.dir / "env"))
    # --force-reinstall: pip would otherwise call pml-anchors 0.1.0 "already installed" through the parent
    # environment that the new one sees, and skip it
    install = ["-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--force-reinstall"]
    subprocess.run(
        [python, *install, *map(str, built.wheels.values())],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    work = built.dir / "work"
    work.mkdir()
    variables = {k: v for k, v in os.environ.items() if not k.startswith("PML_ANCHORS_") and k != "PYTHONPATH"}
    variables.update(PYTHONDONTWRITEBYTECODE="1", TQDM_DISABLE="1")

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        exe = python.parent / args[0] if args[0] in ("pml-anchors", "python") else Path(args[0])
        return subprocess.run(
            [str(exe), *args[1:]], capture_output=True, text=True, cwd=work, env=variables, timeout=timeout
        )

    return SimpleNamespace(python=python, work=work, run=run, root=built.dir / "env")


def test_the_installed_code_is_the_wheels(env):
    """`pml-anchors` is the wheel's console script, and every package imports from the virtualenv."""
    assert (env.python.parent / "pml-anchors").exists()
    packages = ["pml_anchors"] + [f"pml_anchors_{d.name}" for d in PLUGIN_DIRS]
    out = env.run(
        "python", "-c", f"import importlib\nfor p in {packages!r}: print(importlib.import_module(p).__file__)"
    )
    assert out.returncode == 0, out.stderr
    files = out.stdout.splitlines()
    assert len(files) == len(packages) and all(f.startswith(str(env.root)) for f in files), files


def test_methods_lists_every_plugins_methods(env):
    out = env.run("pml-anchors", "methods", "--json")
    assert out.returncode == 0, out.stderr[-4000:]
    listed = {m["name"]: m["plugin"] for m in json.loads(out.stdout)}
    assert listed == METHODS


def test_validate_run_passes(env):
    out = env.run("pml-anchors", "validate", "--run")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]


def test_train_one_epoch_on_digits_then_eval(env):
    output = env.work / "runs" / "c_ncm"
    out = env.run(
        "pml-anchors", "train", "--method", "c_ncm", "--dataset", "digits", "--epochs", "1", "--output", str(output)
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    results = json.loads((output / "results.json").read_text())
    assert results["qualified_method"] == "pml-anchors-ncm:c_ncm" and 0.5 < results["precision_at_1"] <= 1.0
    out = env.run("pml-anchors", "eval", "--checkpoint", str(output / "checkpoint.pt"), "--json")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert json.loads(out.stdout)["precision_at_1"] == pytest.approx(results["precision_at_1"], abs=1e-6)


def test_the_long_descriptions_python_runs(env, built):
    """The Python of every wheel's PyPI page, in one process (the core's pipeline trained for 1 epoch, not 3)."""
    blocks = []
    for dist in DISTS:
        found = python_blocks(metadata(built.wheels[dist]).get_payload())
        assert found, f"{dist}'s long description has no python block"
        blocks += [b.replace(".train(3)", ".train(1)") for b in found]
    out = env.run("python", "-c", "\n".join(blocks))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert re.search(r"^0\.\d+$", out.stdout, re.MULTILINE), out.stdout  # the pipeline's precision@1


def test_new_plugin_renders_from_the_wheel(env):
    """The template is package data: the project renders, LICENSE and CI workflow included."""
    out = env.run("pml-anchors", "new-plugin", "from-wheel", "--dir", str(env.work / "new"), "--author", "A. Author")
    assert out.returncode == 0, out.stderr
    project = env.work / "new" / "pml-anchors-from-wheel"
    assert (project / "pml_anchors_from_wheel" / "loss.py").exists()
    assert "A. Author" in (project / "LICENSE").read_text()
    assert 'pip install -e ".[test]"' in (project / ".github" / "workflows" / "test.yml").read_text()
