"""Fixtures shared by the core's tests."""

import pytest
from training_toys import add_toys


@pytest.fixture
def toys(pml_registry):
    """An isolated registry (pml_anchors.testing's ``pml_registry``) with the toy methods of training_toys."""
    add_toys(pml_registry)
    return pml_registry
