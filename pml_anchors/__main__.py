"""``python -m pml_anchors``: the ``pml-anchors`` command (as ``python -m pml_anchors.cli``)."""

import sys

from .cli.main import main

sys.exit(main())
