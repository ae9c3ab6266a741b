"""``python -m pml_anchors.cli``: the ``pml-anchors`` command."""

import sys

from .main import main

sys.exit(main())
