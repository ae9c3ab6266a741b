"""pml-anchors plugins / methods."""

import json
import subprocess
import sys

from pml_anchors.cli import main


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "plugins" in out and "methods" in out


def test_plugins_all_json_is_valid_json_with_core(capsys):
    assert main(["plugins", "--all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    core = [r for r in data if r["name"] == "pml-anchors"][0]
    assert core["status"] == "ok" and "simplex" in core["initializers"]
    assert set(core) >= {"name", "version", "hooks", "methods", "status", "error"}


def test_plugins_text(capsys):
    assert main(["plugins", "--all"]) == 0
    assert "pml-anchors" in capsys.readouterr().out


def test_methods_json(capsys):
    assert main(["methods", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data, list)
    for m in data:
        assert {"name", "plugin", "loss", "paper"} <= set(m)


def test_console_script_help_is_fast_and_imports_no_torch():
    code = (
        "import sys\nfrom pml_anchors.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")


def _cli(*argv, **env):
    import os

    code = f"from pml_anchors.cli import main; raise SystemExit(main({list(argv)!r}))"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_a_disabled_plugin_is_listed_with_a_note_not_an_error():
    proc = _cli("plugins", "--all", PML_ANCHORS_DISABLE_PLUGINS="pml-anchors-ncm")
    assert proc.returncode == 0, proc.stderr
    block = proc.stdout.split("pml-anchors-ncm", 1)[1].split("\n\n")[0]
    assert "[disabled]" in block and "note: disabled by PML_ANCHORS_DISABLE_PLUGINS" in block
    assert "error:" not in block.split("\npml-anchors-", 1)[0]


def test_methods_says_so_when_nothing_is_registered():
    proc = _cli("methods", PML_ANCHORS_LOAD_PLUGINS="")
    assert proc.returncode == 0 and proc.stdout == ""
    assert "no methods registered" in proc.stderr


def test_plugins_requirements_pin_every_loaded_distribution(capsys):
    """`plugins --requirements`: pip lines to pin a run's plugins (datasette#2133), core and built-ins included."""
    from importlib.metadata import version

    assert main(["plugins", "--requirements"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"pml-anchors=={version('pml-anchors')}" in lines
    assert f"pml-anchors-cam=={version('pml-anchors-cam')}" in lines
    assert all("==" in line or line.startswith("# ") for line in lines)


def test_requirements_comment_what_pip_cannot_pin(folder, capsys):
    (folder / "bad_import.py").write_text("import not_a_real_package_xyz\n")
    assert main(["plugins", "--requirements"]) == 0
    out = capsys.readouterr().out
    assert f"# folder_method (plugins_dir: {folder / 'folder_method.py'}) is not an installed distribution" in out
    assert "# bad_import was not loaded (failed)" in out


def test_plugins_hook_filter_and_methods_plugin_filter(capsys):
    assert main(["plugins", "--all", "--hook", "register_methods", "--json"]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert "pml-anchors-cam" in names and "pml-anchors" not in names  # the core registers initializers only
    assert main(["plugins", "--hook", "register_things"]) == 2
    assert (
        "unknown hook 'register_things'; hooks: register_datasets, register_initializers, register_methods"
        in capsys.readouterr().err
    )

    assert main(["methods", "--plugin", "pml_anchors_ncm", "--json"]) == 0  # spelled as the import name works too
    assert sorted(m["name"] for m in json.loads(capsys.readouterr().out)) == ["c_ncm", "e_ncm"]
    assert main(["methods", "--plugin", "pml-anchors-nope"]) == 2
    assert "no plugin 'pml-anchors-nope'; plugins: pml-anchors, " in capsys.readouterr().err


def test_a_closed_pipe_ends_the_listing_quietly():
    """`pml-anchors methods | head -1`: a reader that went away ends the command quietly (status 141), without a
    BrokenPipeError traceback. The pipe's read end is closed before the command writes, so every write fails."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pml_anchors.cli", "plugins", "--all", "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141 and "Traceback" not in result.stderr, result.stderr


def test_ctrl_c_during_a_command_says_interrupted(monkeypatch, capsys):
    import pml_anchors.cli.methods as methods_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(methods_command, "run", interrupted)
    assert main(["methods"]) == 130
    assert capsys.readouterr().err.strip() == "pml-anchors methods: interrupted"
