"""pml_anchors.validators: the one set of argument checks of the core and the plugins (type -> TypeError, value ->
ValueError, both naming the argument, what was expected and what was given)."""

from __future__ import annotations

import numpy as np
import pytest

from pml_anchors.validators import (
    check_bool,
    check_choice,
    check_int,
    check_real,
    check_seed,
    naming_rejected_options,
    optional_bool,
    optional_int,
    optional_real,
    positive_int,
)


def test_ints():
    assert positive_int(np.int64(3), "k") == 3 and type(positive_int(np.int64(3), "k")) is int
    assert check_int(0, "workers", minimum=0) == 0 and check_int(-5, "offset") == -5
    assert optional_int(None, "chunk_size", minimum=1) is None and check_seed(None) is None and check_seed(7) == 7
    with pytest.raises(ValueError, match="^k must be a positive int, got 0$"):
        positive_int(0, "k")
    with pytest.raises(TypeError, match="^k must be a positive int, got bool True$"):
        positive_int(True, "k")
    with pytest.raises(TypeError, match="^k must be a positive int, got float 2.0$"):
        positive_int(2.0, "k")
    with pytest.raises(ValueError, match="^workers must be an int >= 0, got -1$"):
        check_int(-1, "workers", minimum=0)
    with pytest.raises(TypeError, match="^chunk_size must be None or a positive int, got str '4'$"):
        optional_int("4", "chunk_size", minimum=1)
    with pytest.raises(TypeError, match="^seed must be None or an int, got float 0.5$"):
        check_seed(0.5)


def test_reals():
    assert check_real(1, "lr", minimum=0.0, open_min=True) == 1.0 and type(check_real(1, "lr")) is float
    assert check_real(0.0, "beta", minimum=0.0) == 0.0 and optional_real(None, "clip", minimum=0.0) is None
    assert check_real(np.float32(0.25), "gamma", minimum=0.0, maximum=1.0, open_min=True, open_max=True) == 0.25
    cases = [
        (dict(value=0.0, minimum=0.0, open_min=True), ValueError, "x must be a finite number > 0, got 0.0"),
        (dict(value=1.0, maximum=1.0, open_max=True), ValueError, "x must be a finite number < 1, got 1.0"),
        (dict(value=2.0, minimum=0.0, maximum=1.0), ValueError, "x must be a finite number >= 0 and <= 1, got 2.0"),
        (dict(value=float("nan")), ValueError, "x must be a finite number, got nan"),
        (dict(value=float("inf"), minimum=0.0), ValueError, "x must be a finite number >= 0, got inf"),
        (dict(value="0.1"), TypeError, "x must be a finite number, got str '0.1'"),
        (dict(value=False), TypeError, "x must be a finite number, got bool False"),
    ]
    for kwargs, error, message in cases:
        value = kwargs.pop("value")
        with pytest.raises(error) as info:
            check_real(value, "x", **kwargs)
        assert str(info.value) == message
    with pytest.raises(ValueError, match=r"^clip must be None or a finite number > 0, got -1$"):
        optional_real(-1, "clip", minimum=0.0, open_min=True)
    with pytest.raises(TypeError):  # a misspelt bound is an error, not ignored
        optional_real(1.0, "clip", minmum=0.0)


def test_bools_and_choices():
    assert check_bool(False, "amp") is False and optional_bool(None, "freeze_bn") is None
    with pytest.raises(TypeError, match="^amp must be True or False, got 1$"):
        check_bool(1, "amp")
    with pytest.raises(TypeError, match="^freeze_bn must be True, False or None, got 'yes'$"):
        optional_bool("yes", "freeze_bn")
    assert check_choice("cube", "polytope", ("simplex", "cube")) == "cube"
    with pytest.raises(ValueError, match="^polytope must be one of 'simplex', 'cube'; got 'cubic'$"):
        check_choice("cubic", "polytope", ("simplex", "cube"))


def test_naming_rejected_options():
    def build(width=8):
        return width

    with pytest.raises(TypeError, match=r"^backbone 'small_cnn': .*'depth'.*\(got options \['depth'\]\)$"):
        with naming_rejected_options("backbone 'small_cnn'", {"depth": 3}):
            build(depth=3)
    with pytest.raises(TypeError, match="^unrelated$"):  # other errors pass unchanged
        with naming_rejected_options("backbone 'small_cnn'", {"depth": 3}):
            raise TypeError("unrelated")
