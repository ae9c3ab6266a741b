"""Fault injection: damaged, hostile and unusual checkpoints, through every way a user reads one.

Each case in :data:`CASES` damages a real checkpoint and is read by ``pml-anchors eval``, ``load_trained`` and
``pml-anchors train --resume``: each must end in one clear error naming the file and what is wrong (never a raw
traceback, a misleading message or a silently wrong model). ``python tests/test_faults_checkpoints.py`` prints the
table of docs/faults.md from these cases.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import pml_anchors
from pml_anchors import MethodSpec, hookimpl
from pml_anchors.app.checkpoints import CheckpointError
from pml_anchors.app.config import TrainConfig
from pml_anchors.app.session import run
from pml_anchors.cli import main


def _train(folder: Path) -> Path:
    config = TrainConfig(
        method="c_ncm", epochs=1, limit=64, test_limit=60, batch_size=32, device="cpu", output=str(folder)
    )
    config.backbone_kwargs = {"width": 8}
    run(config)
    return folder / "checkpoint.pt"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("good"))


def _bytes(edit: Callable[[bytearray], bytes | bytearray]) -> Callable[[Path, Path], None]:
    def apply(good: Path, bad: Path) -> None:
        bad.write_bytes(bytes(edit(bytearray(good.read_bytes()))))

    return apply


def _dict(edit: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    def apply(good: Path, bad: Path) -> None:
        data = torch.load(good, weights_only=True)
        result = edit(data)
        torch.save(data if result is None else result, bad)

    return apply


def _flip_a_weight_bit(data: bytearray) -> bytearray:
    """Flip one bit inside the first tensor record of the zip (torch.load does not check record CRCs)."""
    import io

    archive = zipfile.ZipFile(io.BytesIO(bytes(data)))
    record = next(i for i in archive.infolist() if "/data/" in i.filename)
    offset = record.header_offset  # the local header's own name and extra lengths (its extra pads for alignment)
    name_length = int.from_bytes(data[offset + 26 : offset + 28], "little")
    extra_length = int.from_bytes(data[offset + 28 : offset + 30], "little")
    data[offset + 30 + name_length + extra_length + 5] ^= 0x40
    return data


def _first_float(state: dict) -> str:
    return next(k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point())


class _RunsCode:
    """A pickle that would create a file when unpickled (refused by weights_only)."""

    def __reduce__(self):
        return (open, (os.path.join(os.environ["PML_FAULT_MARKER_DIR"], "pickle-ran"), "w"))


def _nan_in_trunk(d: dict) -> None:
    d["trunk"][_first_float(d["trunk"])].fill_(float("nan"))


def _inf_in_anchors(d: dict) -> None:
    d["loss"]["anchors"][0, 0] = float("inf")


#: name -> (what is done to the file, how to do it, what the error says (regex))
CASES: dict[str, tuple[str, Callable[[Path, Path], None], str]] = {
    "empty": ("an empty file", _bytes(lambda b: b""), "the checkpoint file is empty"),
    "text": ("a text file", _bytes(lambda b: b"not a checkpoint\n"), "cannot be read as a checkpoint"),
    "truncated": ("the first 60 % of the bytes", _bytes(lambda b: b[: len(b) * 6 // 10]), "truncated or corrupt"),
    "bit_flip": ("one bit flipped in a weight", _bytes(_flip_a_weight_bit), "do not match the checksum"),
    "pickled_code": (
        "a pickle that runs code when loaded",
        lambda good, bad: torch.save({"format": "pml-anchors/checkpoint", "x": _RunsCode()}, bad),
        "holds objects that only load by running code",
    ),
    "not_a_checkpoint": (
        "another torch file",
        _dict(lambda d: {"weights": torch.ones(2)}),
        "is not a pml-anchors checkpoint",
    ),
    "future_format": ("a newer checkpoint format", _dict(lambda d: d.update(format_version=99)), "format 99"),
    "missing_part": ("no embedder weights", _dict(lambda d: d.pop("embedder") and None), "lacks embedder"),
    "wrong_type": ("epoch stored as a string", _dict(lambda d: d.update(epoch="1")), "'epoch' should be of type int"),
    "not_a_tensor": (
        "a weight replaced by a string",
        _dict(lambda d: d["trunk"].update({_first_float(d["trunk"]): "junk"})),
        "trunk state .* should be a tensor",
    ),
    "nan_weights": ("NaN in a trunk weight", _dict(_nan_in_trunk), "holds NaN or Inf"),
    "inf_anchors": ("+Inf in the anchors", _dict(_inf_in_anchors), "loss weight 'anchors' holds NaN or Inf"),
    "bad_config": (
        "an invalid stored option",
        _dict(lambda d: d["config"].update(batch_size=-1)),
        "its config is not valid: batch_size must be an int >= 2",
    ),
    "no_method": ("a config without a method", _dict(lambda d: d["config"].pop("method") and None), "names no method"),
    "wrong_shapes": (
        "sizes that do not fit the weights",
        _dict(lambda d: d.update(embedding_size=5)),
        "weights do not fit",
    ),
}


def _read(how: str, path: Path, capsys) -> str:
    """The error message one entry point gives for ``path`` (fails the test if it does not refuse it)."""
    if how == "load_trained":
        with pytest.raises((ValueError, FileNotFoundError)) as info:  # CheckpointError is a ValueError
            pml_anchors.load_trained(path)
        return str(info.value)
    capsys.readouterr()
    argv = ["eval", "--checkpoint", str(path)] if how == "eval" else ["train", "--resume", str(path), "--epochs", "2"]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("how", ["eval", "load_trained", "resume"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_damaged_checkpoint_gets_one_clear_error(case, how, good, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PML_FAULT_MARKER_DIR", str(tmp_path))
    _, damage, expected = CASES[case]
    bad = tmp_path / "checkpoint.pt"
    damage(good, bad)
    message = _read(how, bad, capsys)
    assert str(bad) in message and re.search(expected, message), message
    assert not (tmp_path / "pickle-ran").exists()


def test_a_checkpoint_naming_code_beside_it_runs_nothing(good, tmp_path, capsys, monkeypatch):
    """Its config names ``anchors="evilmod:make"``, a module beside it (importable): eval, load_trained and
    --resume refuse the name instead of importing it, and no file is created."""
    (tmp_path / "evilmod.py").write_text(
        "import pathlib\nMARK = pathlib.Path(__file__).with_name('imported')\nMARK.write_text('x')\n"
        "def make(*args, **kwargs):\n    MARK.with_name('called').write_text('x')\n"
        "    import torch\n    return torch.eye(4, 8)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    bad = tmp_path / "checkpoint.pt"
    _dict(lambda d: d["config"].update(loss_kwargs={"anchors": "evilmod:make", "anchor_kwargs": {}}))(good, bad)
    for how in ("eval", "load_trained", "resume"):
        message = _read(how, bad, capsys)
        assert "names anchors='evilmod:make', which is not a registered initializer" in message, message
    assert not (tmp_path / "imported").exists() and not (tmp_path / "called").exists()
    assert "evilmod" not in sys.modules
    assert pml_anchors.get_loss("c_ncm", 4, 8, anchors="evilmod:make") is not None  # the user may name code
    assert (tmp_path / "called").exists()


def test_qualified_method_names_survive_a_second_plugin_with_the_same_short_name(good, pml_registry, monkeypatch):
    monkeypatch.setenv("PML_ANCHORS_LOAD_PLUGINS", "pml-anchors-ncm")
    pml_anchors.reset()

    class Clash:
        @hookimpl
        def register_methods(self, register):
            register(MethodSpec(name="c_ncm", loss="pml_anchors_ncm.ncm_loss:CNCMLoss"))

    pml_registry.add_plugin(Clash(), name="another-c-ncm")
    with pytest.raises(pml_anchors.DuplicateMethodError):
        pml_anchors.get_method("c_ncm")
    model = pml_anchors.load_trained(good)  # the checkpoint names pml-anchors-ncm:c_ncm
    assert model.method == "c_ncm" and type(model.loss).__name__ == "CNCMLoss"
    assert pml_anchors.app.reload.evaluate_checkpoint(good, test_limit=40)["precision_at_1"] > 0


def test_inference_mode_load_and_predict(good):
    with torch.inference_mode():
        model = pml_anchors.load_trained(good)
        x = torch.randn(3, *model.input_shape)
        inside = model.predict(x)
    torch.testing.assert_close(model.predict(x), inside)  # later, outside inference mode, too
    embeddings = torch.randn(4, model.loss.embedding_size, requires_grad=True)
    model.loss(embeddings, torch.arange(4) % model.loss.num_classes).backward()  # and the loss still trains
    assert torch.isfinite(embeddings.grad).all()
    with torch.inference_mode():
        loss = pml_anchors.get_loss("fsc", 4, 8)
    embeddings = torch.randn(4, 8, requires_grad=True)
    value = loss(embeddings, torch.arange(4))
    value.backward()
    assert math.isfinite(value.item())


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _table() -> str:
    """The markdown table of docs/faults.md: each case's damage and what load_trained says (FILE for its path)."""
    import tempfile

    import pml_anchors.app.reload  # noqa: F401

    rows = ["| damage | what `pml-anchors eval`, `load_trained` and `--resume` say |", "|---|---|"]
    with tempfile.TemporaryDirectory() as folder, _env("PML_FAULT_MARKER_DIR", folder):
        good_path = _train(Path(folder) / "good")
        for name, (what, damage, _) in CASES.items():
            bad = Path(folder) / "checkpoint.pt"
            damage(good_path, bad)
            try:
                pml_anchors.load_trained(bad)
                said = "(loaded)"
            except (CheckpointError, FileNotFoundError) as exc:
                said = str(exc).replace(str(bad), "FILE")
            rows.append(f"| {what} (`{name}`) | {said} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - prints docs/faults.md's table
    print(_table())


def test_docs_faults_page_lists_what_the_code_says():
    """docs/faults.md's table is this file's output: every case and its current message (FILE for the path)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "faults.md").read_text(encoding="utf-8")
    table = _table()
    for row in table.splitlines()[2:]:
        assert row in page, f"docs/faults.md lacks or has an old row: {row}"
