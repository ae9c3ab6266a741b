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
