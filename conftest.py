"""Repository-wide pytest setup: only this repository's plugins are discovered in its tests."""

import os

from pml_anchors.plugins import BUILTIN_DISTRIBUTIONS, ENV_LOAD, ENV_PLUGINS_DIR

# Stray plugins installed in the environment must not leak into our tests (llm/datasette do the same).
os.environ.setdefault(ENV_LOAD, ",".join(sorted(BUILTIN_DISTRIBUTIONS)))
os.environ.pop(ENV_PLUGINS_DIR, None)  # nor a developer's one-off plugins folder
