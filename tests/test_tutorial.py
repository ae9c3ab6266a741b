"""docs/plugins/tutorial.md, run as written: every fenced block, in order, in an empty folder, with a fresh virtualenv
that sees this environment's torch and PML (``pml_anchors.testing.make_plugin_env``) and nothing installed in it yet.
The tutorial builds a plugin with fixed anchors (installed, tested with ``check_method``, trained by
``pml-anchors train`` and in a PML pipeline), then makes them learnable (tested and trained in the pipeline again).

The markup of the tutorial (the only rules this test knows):

* ```` ```bash ````: commands, run by ``bash -e -o pipefail`` in the current folder, which a ``cd`` changes for the
  blocks after it. ``python``, ``pip`` and ``pml-anchors`` are the test virtualenv's (its ``bin/`` comes first on
  ``PATH``; ``pml-anchors`` and ``pip`` are wrappers for ``python -m pml_anchors.cli`` and ``python -m pip``), and
  ``pip install`` gets ``--no-deps --no-build-isolation --no-index`` (offline: the dependencies are this
  environment's).
* A block whose previous non-blank line ends with a backquoted relative path and a colon (``... `pkg/loss.py`:``) is
  that file, relative to the current folder: written there, or, for a ```` ```diff ```` block, edited there. A diff
  block is hunks separated by ``@@`` lines; each hunk's `` `` and ``-`` lines must occur exactly once in the file and
  are replaced by its `` `` and ``+`` lines (no line numbers, so the tutorial shows just the lines that change).
* ```` ```py ```` or ```` ```python ```` without such a path: Python, run by the virtualenv's ``python`` in the
  current folder.
* ```` ```text ```` right after a block that runs (its previous non-blank line is that block's closing fence) is the
  output it must print: each line must appear in its stdout or stderr, in this order, with runs of whitespace equal,
  every number matching any number and ``...`` matching anything. GPUs are hidden, so outputs are those of a CPU.
* ```` ```text ```` whose first line ends with ``/`` and that draws a tree (``├──``, ``└──``) lists files that must
  exist when the run reaches it. Any other ```` ```text ```` block is only shown.
* A block right after an HTML comment starting with ``<!-- not run`` is skipped (publishing needs the network).
* Any other fence fails the test, so that nothing is silently left out.

The page's one ```` ```python ```` block (the PML pipeline, a file here) is also run for every built-in method by
tests/test_pml_dropin.py, and for the worked example by tests/test_authoring_e2e.py; the rest of its Python is
fenced ```` ```py ````. docs/losses/anchor_loss.md's Python blocks run here too, in one namespace, in this process.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tokenize
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pml_anchors.testing import make_plugin_env

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "plugins" / "tutorial.md"
ANCHOR_LOSS_PAGE = ROOT / "docs" / "losses" / "anchor_loss.md"
TIMEOUT = 600  # seconds per block

FENCE = re.compile(r"^```([\w-]*)\s*$")
PATH_LINE = re.compile(r"`([\w.-]+(?:/[\w.-]+)*)`:\s*$")
TREE_LINE = re.compile(r"^((?:│   |    )*)[├└]── (\S+)")
NUMBER_OR_ELLIPSIS = re.compile(r"(\.\.\.|\d+(?:\.\d+)?)")
PIP_INSTALL = re.compile(r"\bpip install\b")
PYTHON = ("py", "python")


@dataclass
class Block:
    lang: str
    text: str
    line: int  # of the opening fence, 1-based
    previous: str  # the previous non-blank line ("```" when the block follows another block directly)
    path: str | None = None
    skipped: bool = False

    @property
    def kind(self) -> str:
        """``run`` (bash, or Python without a path), ``file``, ``diff``, ``output``, ``tree``, ``show`` or ``skip``."""
        if self.skipped:
            return "skip"
        if self.lang == "bash":
            return "run"
        if self.lang == "diff":
            if self.path is None:
                raise AssertionError(f"line {self.line}: a diff block needs a line ending in `path`: before it")
            return "diff"
        if self.lang == "text":
            if self.text.splitlines()[0].endswith("/") and ("├── " in self.text or "└── " in self.text):
                return "tree"
            return "output" if self.previous == "```" else "show"
        if self.path is not None:
            return "file"
        if self.lang in PYTHON:
            return "run"
        raise AssertionError(f"line {self.line}: a ```{self.lang} block is neither a file nor something this test runs")


def parse(markdown: str) -> list[Block]:
    """The fenced blocks of ``markdown``, in order."""
    lines = markdown.splitlines()
    blocks, previous, i = [], "", 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"line {start + 1}: unclosed fence")
        path = PATH_LINE.search(previous)
        blocks.append(
            Block(
                lang=match.group(1),
                text="\n".join(body) + "\n",
                line=start + 1,
                previous=previous,
                path=path.group(1) if path else None,
                skipped=previous.startswith("<!-- not run"),
            )
        )
        previous = "```"
        i += 1
    return blocks


def _pattern(line: str) -> re.Pattern:
    parts = NUMBER_OR_ELLIPSIS.split(" ".join(line.split()))
    regex = "".join(".*" if p == "..." else r"\d+(?:\.\d+)?" if p[:1].isdigit() else re.escape(p) for p in parts if p)
    return re.compile(regex)


def check_output(expected: str, printed: str, where: str) -> None:
    """Every line of ``expected`` matches a line of ``printed``, in order (numbers and ``...`` match anything)."""
    got = [" ".join(line.split()) for line in printed.splitlines()]
    at = 0
    for line in filter(str.strip, expected.splitlines()):
        pattern = _pattern(line)
        while at < len(got) and not pattern.fullmatch(got[at]):
            at += 1
        if at == len(got):
            raise AssertionError(f"{where}: the output shown, {line!r}, is not what the command printed:\n{printed}")
        at += 1


def apply_diff(path: Path, diff: str, where: str) -> None:
    """Replace each hunk's old lines (`` ``/``-``) by its new ones (`` ``/``+``); the old ones must occur once."""
    lines = path.read_text(encoding="utf-8").splitlines()
    hunks: list[list[str]] = [[]]
    for line in diff.splitlines():
        if line.startswith("@@"):
            hunks.append([])
        elif line[:1] in ("", " ", "-", "+"):
            hunks[-1].append(line)
        else:
            raise AssertionError(f"{where}: {line!r} is not a diff line (' ', '-', '+' or '@@')")
    for hunk in filter(None, hunks):
        old = [line[1:] for line in hunk if line[:1] in ("", " ", "-")]
        new = [line[1:] for line in hunk if line[:1] in ("", " ", "+")]
        found = [i for i in range(len(lines) - len(old) + 1) if lines[i : i + len(old)] == old]
        if len(found) != 1:
            raise AssertionError(
                f"{where}: the lines the diff replaces occur {len(found)} times in {path}:\n" + "\n".join(old)
            )
        lines[found[0] : found[0] + len(old)] = new
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def check_tree(folder: Path, tree: str, where: str) -> None:
    """The files a ``├──``/``└──`` listing names exist under ``folder``."""
    top, *rest = tree.splitlines()
    stack = [folder / top.strip()]
    for line in rest:
        match = TREE_LINE.match(line)
        if not match:
            continue
        depth = len(match.group(1)) // 4
        del stack[depth + 1 :]
        path = stack[depth] / match.group(2)
        if match.group(2).endswith("/"):
            assert path.is_dir(), f"{where}: the listing shows a folder {path} that is not there"
            stack.append(path)
        else:
            assert path.is_file(), f"{where}: the listing shows a file {path} that is not there"


def make_bin(bin_dir: Path, python: str) -> None:
    """``pml-anchors`` and ``pip`` wrappers beside the virtualenv's ``python``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, module in (("pml-anchors", "pml_anchors.cli"), ("pip", "pip")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{python}" -m {module} "$@"\n')
        script.chmod(0o755)


class TutorialRun:
    """Runs the blocks of one page in ``root`` with the executables in ``bin_dir``."""

    def __init__(self, root: Path, bin_dir: Path, python: str, page: str = "the page"):
        self.page = page
        self.root = root.resolve()
        self.cwd = self.root
        self.python = python
        env = {k: v for k, v in os.environ.items() if not k.startswith("PML_ANCHORS_") and k != "PYTHONPATH"}
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            VIRTUAL_ENV=str(bin_dir.parent),
            PYTHONDONTWRITEBYTECODE="1",
            TQDM_DISABLE="1",
            CUDA_VISIBLE_DEVICES="",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PIP_NO_INPUT="1",
        )
        self.env = env
        self.printed = ""  # what the last block that ran printed

    def inside(self, relative: str, where: str) -> Path:
        path = (self.cwd / relative).resolve()
        assert path.is_relative_to(self.root), f"{where}: {relative} is outside the tutorial's folder"
        return path

    def run(self, blocks: list[Block], after: Callable[[Block, TutorialRun], None] | None = None) -> None:
        for block in blocks:
            where = f"{self.page} line {block.line} (```{block.lang})"
            kind = block.kind
            if kind == "run" and block.lang == "bash":
                self.bash(block.text, where)
            elif kind == "run":
                self.command([self.python, "-"], where, stdin=block.text)
            elif kind == "file":
                path = self.inside(block.path, where)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(block.text, encoding="utf-8")
            elif kind == "diff":
                apply_diff(self.inside(block.path, where), block.text, where)
            elif kind == "output":
                check_output(block.text, self.printed, where)
            elif kind == "tree":
                check_tree(self.cwd, block.text, where)
            if after is not None:
                after(block, self)

    def bash(self, script: str, where: str) -> None:
        marker = self.root / ".tutorial-cwd"
        script = PIP_INSTALL.sub("pip install --no-deps --no-build-isolation --no-index", script)
        self.command(["bash", "-e", "-o", "pipefail", "-c", f'{script}\npwd > "{marker}"\n'], where)
        self.cwd = self.inside(marker.read_text().strip(), where)

    def command(self, args: list[str], where: str, stdin: str | None = None) -> None:
        out = subprocess.run(
            args, input=stdin, capture_output=True, text=True, cwd=self.cwd, env=self.env, timeout=TIMEOUT
        )
        self.printed = out.stdout + out.stderr
        if out.returncode != 0:
            raise AssertionError(f"{where} failed with exit status {out.returncode}:\n{self.printed[-6000:]}")


# -- the tutorial ---------------------------------------------------------------------------------------------------


def test_the_tutorials_markup_is_understood():
    """Every block has a kind; the page writes the plugin's three files, then edits it to learnable anchors."""
    blocks = parse(TUTORIAL.read_text(encoding="utf-8"))
    kinds = [b.kind for b in blocks]
    files = {b.path for b in blocks if b.kind == "file"}
    assert {
        "pml_anchors_center_loss/loss.py",
        "pml_anchors_center_loss/__init__.py",
        "tests/test_center_loss.py",
    } <= files
    assert "learnable_anchors = False" in next(b.text for b in blocks if b.path == "pml_anchors_center_loss/loss.py")
    assert any(b.kind == "diff" and "+    learnable_anchors = True" in b.text for b in blocks)
    assert kinds.count("skip") == 1 and "twine upload" in next(b.text for b in blocks if b.kind == "skip")
    assert "output" in kinds and "tree" in kinds
    python = [b for b in blocks if b.lang == "python"]  # what tests/test_pml_dropin.py and test_authoring_e2e.py run
    assert len(python) == 1 and "center_loss" in python[0].text and python[0].path == "pipeline.py"
    for block in blocks:  # no `...` gap in the code (an Ellipsis token; docstrings and comments may say "...")
        if block.kind in ("file", "run") and block.lang in PYTHON:
            tokens = tokenize.generate_tokens(io.StringIO(block.text).readline)
            assert not [tok for tok in tokens if tok.string == "..."], f"line {block.line}: a `...` gap in the code"


@pytest.mark.parametrize(
    ("markdown", "error"),
    [
        ("```bash\nfalse\n```\n", "exit status 1"),
        ("```bash\necho one\n```\n\n```text\ntwo\n```\n", "is not what the command printed"),
        ("```py\nraise SystemExit('broken')\n```\n", "exit status 1"),
        ("`a.py`:\n\n```py\nx = 1\n```\n\n`a.py`:\n\n```diff\n-x = 2\n+x = 3\n```\n", "occur 0 times"),
        ("```text\nlisting/\n└── missing.py\n```\n", "that is not there"),
        ("```ini\nx = 1\n```\n", "neither a file nor something this test runs"),
    ],
    ids=["command", "output", "python", "diff", "tree", "unknown-fence"],
)
def test_a_broken_tutorial_block_fails_the_run(tmp_path, markdown, error):
    bin_dir = tmp_path / "bin"
    make_bin(bin_dir, sys.executable)
    (tmp_path / "work").mkdir()
    with pytest.raises(AssertionError, match=error):
        TutorialRun(tmp_path / "work", bin_dir, sys.executable).run(parse(markdown))


def test_a_working_tutorial_page_runs(tmp_path):
    """The rules on a page that follows them: cd, files, a diff, outputs with numbers and "...", a tree."""
    markdown = (
        "```bash\nmkdir -p proj/pkg\ncd proj\n```\n\n"
        "`pkg/mod.py`:\n\n```py\nVALUE = 1\nOTHER = 2\n```\n\n"
        "`pkg/mod.py`:\n\n```diff\n-VALUE = 1\n+VALUE = 41\n OTHER = 2\n```\n\n"
        "```py\nimport pkg.mod\nprint('value', pkg.mod.VALUE + 1, 'and more')\n```\n\n"
        "```text\nvalue 7 ...\n```\n\n"
        "```text\npkg/\n└── mod.py\n```\n\n"
        "<!-- not run: would fail -->\n\n```bash\nfalse\n```\n"
    )
    bin_dir = tmp_path / "bin"
    make_bin(bin_dir, sys.executable)
    (tmp_path / "work").mkdir()
    run = TutorialRun(tmp_path / "work", bin_dir, sys.executable)
    run.run(parse(markdown))
    assert run.cwd == (tmp_path / "work" / "proj").resolve()
    assert "value 42 and more" in run.printed


@pytest.mark.slow
def test_the_tutorial_runs_as_written(tmp_path):
    """The whole page: the plugin's tests (check_method) and the PML pipeline run for fixed and for learnable
    centres, `pml-anchors train` for fixed ones."""
    python = make_plugin_env(tmp_path / "venv")
    bin_dir = Path(python).parent
    make_bin(bin_dir, python)
    (tmp_path / "work").mkdir()
    ran: list[tuple[str, str]] = []  # (command, "learnable_anchors = ..." at the time)

    def record(block: Block, run: TutorialRun) -> None:
        loss = run.cwd / "pml_anchors_center_loss" / "loss.py"
        if block.kind == "run" and block.lang == "bash" and loss.exists():
            state = re.search(r"^\s*(learnable_anchors = \w+)", loss.read_text(encoding="utf-8"), re.MULTILINE)
            ran.extend((line.strip(), state.group(1) if state else "") for line in block.text.splitlines())

    TutorialRun(tmp_path / "work", bin_dir, python, TUTORIAL.name).run(
        parse(TUTORIAL.read_text(encoding="utf-8")), after=record
    )
    for command in ("python -m pytest", "python pipeline.py"):
        states = {state for line, state in ran if line.startswith(command)}
        assert states == {"learnable_anchors = False", "learnable_anchors = True"}, (command, ran)
    assert {state for line, state in ran if line.startswith("pml-anchors train")} == {"learnable_anchors = False"}


# -- docs/losses/anchor_loss.md -------------------------------------------------------------------------------------


def test_the_anchor_loss_reference_runs(capsys):
    """The API page's Python blocks, in order in one namespace: the minimal subclass and what it shows."""
    blocks = [b for b in parse(ANCHOR_LOSS_PAGE.read_text(encoding="utf-8")) if b.lang == "python"]
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block.text, f"{ANCHOR_LOSS_PAGE.name}:{block.line}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "CosineSoftmaxLoss computes cosines" in printed and "'method': 'cosine_softmax'" in printed
