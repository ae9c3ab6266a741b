"""Install pml-anchors and every method plugin under plugins/ (editable) with the tested pins.

Usage: python scripts/install.py   (uses the running interpreter's pip)
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    plugin_dirs = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-c",
        str(ROOT / "requirements/constraints.txt"),
        "-e",
        f"{ROOT}[test,plots]",
    ]
    for d in plugin_dirs:
        cmd += ["-e", str(d)]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
