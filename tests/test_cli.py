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
