"""The plugin template and its renderer (``pml-anchors new-plugin``): a new plugin project from one name.

The template ships inside this package (``pml_anchors/plugin/plugin_template/``, package data), so the
command works from an installed wheel. Template files end in ``.tmpl`` (so that pytest, ruff and
setuptools never treat them as code); ``{{key}}`` placeholders are filled in file contents and
in path names; a leading ``dot-`` in a file or folder name becomes ``.`` (``dot-gitignore`` → ``.gitignore``,
``dot-github/workflows/test.yml.tmpl`` → ``.github/workflows/test.yml``).

    pml-anchors new-plugin center-loss --dir examples --description "Center loss (Wen et al., 2016)"

Only the standard library is imported here: ``pml-anchors --help`` must stay fast.
"""

from __future__ import annotations

import datetime
import keyword
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..version import PLUGIN_API_VERSION

if TYPE_CHECKING:  # Python 3.10 has it here (importlib.resources.abc from 3.11)
    from importlib.abc import Traversable

TEMPLATE_PACKAGE = "pml_anchors.plugin"
TEMPLATE_DIR = "plugin_template"
TEMPLATE_SUFFIX = ".tmpl"
DIST_PREFIX = "pml-anchors-"
#: The project's home; the URLs in the distributions' metadata and the links in the rendered project start with it.
PROJECT_URL = "https://github.com/pml-anchors/pml-anchors"
#: The documentation folder, rendered as ``{{docs_url}}`` (``{{docs_url}}/plugins/tutorial.md``).
DOCS_URL = PROJECT_URL + "/blob/main/docs"
TUTORIAL_URL = DOCS_URL + "/plugins/tutorial.md"
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")


class TemplateError(ValueError):
    """A bad plugin name or option, an existing target folder, or a broken template."""


@dataclass(frozen=True)
class PluginNames:
    """Every name a new plugin project needs, derived from one ``NAME`` such as ``center-loss``."""

    hyphenated: str  # center-loss        -> distribution pml-anchors-center-loss
    underscored: str  # center_loss       -> package pml_anchors_center_loss
    method: str  # center_loss            -> MethodSpec.name
    class_name: str  # CenterLoss         -> the loss class
    description: str
    author: str

    @property
    def distribution(self) -> str:
        return DIST_PREFIX + self.hyphenated

    @property
    def package(self) -> str:
        return "pml_anchors_" + self.underscored

    def context(self) -> dict[str, str]:
        """The values of the template placeholders."""
        return {
            "year": str(datetime.date.today().year),  # LICENSE's copyright line
            "docs_url": DOCS_URL,
            "project_url": PROJECT_URL,
            "hyphenated": self.hyphenated,
            "underscored": self.underscored,
            "method": self.method,
            "class_name": self.class_name,
            "description": self.description,
            "author": self.author,
            "distribution": self.distribution,
            "package": self.package,
            "pml_anchors_requirement": pml_anchors_requirement(),
        }


def pml_anchors_requirement() -> str:
    """The dependency a plugin written against this version declares: ``pml-anchors>=0.1,<0.2``."""
    major, minor = (int(p) for p in PLUGIN_API_VERSION.split(".")[:2])
    return f"pml-anchors>={major}.{minor},<{major}.{minor + 1}"


def _check_text(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise TemplateError(f"{what} must not be empty")
    if any(c in '"\\' or ord(c) < 32 for c in value):
        raise TemplateError(f"{what} must be one line without quotes or backslashes, got {value!r}")
    return value


def derive_names(
    name: str, *, method: str | None = None, description: str | None = None, author: str | None = None
) -> PluginNames:
    """Names for a new plugin: ``"center-loss"`` → ``pml-anchors-center-loss``, ``pml_anchors_center_loss``,
    method ``center_loss``, class ``CenterLoss`` (``"demo-method"`` → class ``DemoMethodLoss``).

    ``name`` may carry the ``pml-anchors-`` prefix and use ``_`` for ``-``; it must start with a letter
    and contain only lowercase letters, digits and single separators.
    """
    hyphenated = name.strip().lower().replace("_", "-")
    if hyphenated.startswith(DIST_PREFIX):
        hyphenated = hyphenated[len(DIST_PREFIX) :]
    if not _NAME.match(hyphenated):
        raise TemplateError(
            f"plugin name {name!r} must start with a letter and contain only lowercase letters, digits and "
            "single '-' separators (e.g. 'center-loss')"
        )
    underscored = hyphenated.replace("-", "_")
    method = underscored if method is None else method.strip()
    if not method.isidentifier() or keyword.iskeyword(method) or method != method.lower():
        raise TemplateError(f"method name {method!r} must be a lowercase Python identifier (e.g. 'center_loss')")
    parts = [p for p in method.split("_") if p]
    class_name = "".join(p[:1].upper() + p[1:] for p in parts)
    if not class_name.endswith("Loss"):
        class_name += "Loss"
    title = " ".join(parts).capitalize()
    return PluginNames(
        hyphenated=hyphenated,
        underscored=underscored,
        method=method,
        class_name=class_name,
        description=_check_text(description or f"{title}: a metric-learning method for pml-anchors", "description"),
        author=_check_text(author or "Your Name", "author"),
    )


def render_text(text: str, context: Mapping[str, str], *, where: str = "template") -> str:
    """Fill ``{{key}}`` placeholders; an unknown key is an error (it would be a typo in the template)."""

    def fill(match: re.Match) -> str:
        key = match.group(1)
        if key not in context:
            raise TemplateError(f"{where}: unknown placeholder {{{{{key}}}}}; known: {', '.join(sorted(context))}")
        return context[key]

    return PLACEHOLDER.sub(fill, text)


def template_root() -> Traversable:
    """The template folder inside the installed package (an ``importlib.resources`` Traversable)."""
    return resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE_DIR)


def template_files(root: Traversable | None = None) -> list[tuple[PurePosixPath, str]]:
    """``(relative template path, text)`` for every ``*.tmpl`` file, sorted by path."""
    root = template_root() if root is None else root

    def walk(node: Traversable, prefix: PurePosixPath) -> Iterator[tuple[PurePosixPath, str]]:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir():
                if child.name != "__pycache__":
                    yield from walk(child, prefix / child.name)
            elif child.name.endswith(TEMPLATE_SUFFIX):
                yield prefix / child.name, child.read_text(encoding="utf-8")

    files = list(walk(root, PurePosixPath()))
    if not files:
        raise TemplateError(f"no template files found in {root}; is pml-anchors installed with its package data?")
    return files


def output_path(template_path: PurePosixPath, context: Mapping[str, str]) -> PurePosixPath:
    """``pml_anchors_{{underscored}}/loss.py.tmpl`` → ``pml_anchors_center_loss/loss.py``."""
    parts = []
    for part in template_path.parts:
        part = render_text(part, context, where=str(template_path))
        if part.endswith(TEMPLATE_SUFFIX):
            part = part[: -len(TEMPLATE_SUFFIX)]
        if part.startswith("dot-"):
            part = "." + part[len("dot-") :]
        parts.append(part)
    return PurePosixPath(*parts)


def render_files(names: PluginNames) -> dict[PurePosixPath, str]:
    """The new project's files (relative path → text), without writing anything."""
    context = names.context()
    return {output_path(path, context): render_text(text, context, where=str(path)) for path, text in template_files()}


def new_plugin(names: PluginNames, parent: str | Path = ".") -> Path:
    """Write the project into ``parent/pml-anchors-<name>/``; refuse if that folder exists."""
    target = Path(parent) / names.distribution
    if target.exists():
        raise TemplateError(f"{target} already exists; remove it or choose another --dir or NAME")
    files = render_files(names)  # render everything before writing anything
    target.mkdir(parents=True)
    for rel, text in files.items():
        path = target.joinpath(*rel.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


def next_steps(names: PluginNames, target: Path) -> str:
    return "\n".join(
        [
            f"Created {names.distribution} in {target} (method {names.method!r}, loss class {names.class_name}).",
            "",
            "Next steps:",
            f"  cd {target}",
            '  python -m pip install -e ".[test]"   # registers the pml_anchors entry point; the test extra adds pytest',
            f"  pml-anchors plugins                  # lists {names.distribution} as [ok]",
            f"  python -m pytest                     # check_method({names.method!r}) and a closed-form test",
            f"  edit {names.package}/loss.py to implement your method, then replace the placeholder's",
            f"  tests in tests/test_{names.underscored}.py (keep test_conformance) with tests of your method",
            "",
            f"It has an MIT LICENSE (copyright {names.author}; pick another licence before publishing if you prefer)",
            'and a GitHub Actions workflow, .github/workflows/test.yml: pip install ".[test]" and pytest.',
            f"Walk-through: {TUTORIAL_URL}",
        ]
    )
