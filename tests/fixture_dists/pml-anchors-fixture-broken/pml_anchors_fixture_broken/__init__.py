"""A plugin that raises on import (test fixture)."""

raise ImportError("fixture plugin is broken on purpose: missing dependency 'not_a_real_package'")
