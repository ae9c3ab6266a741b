"""Search spaces in the plugin contract: Param, MethodSpec.search_space, validate_spec, the built-in declarations."""

from __future__ import annotations

import json

import pytest
from pytorch_metric_learning.losses import ProxyAnchorLoss

import pml_anchors
from pml_anchors import MethodSpec, hookimpl
from pml_anchors.app.baselines import BASELINES
from pml_anchors.errors import InvalidMethodSpec
from pml_anchors.plugin.lazy import accepts_keyword
from pml_anchors.plugin.search_space import RESERVED, Param, check_search_space, choice, integer, log_uniform, uniform
from pml_anchors.plugin.spec import validate_spec


def test_param_helpers_describe_themselves():
    assert log_uniform(1e-5, 1e-2).describe() == "float [1e-05, 0.01] log"
    assert integer(1, 8).as_dict() == {"kind": "int", "low": 1, "high": 8, "log": False}
    assert choice("a", 2).as_dict() == {"kind": "categorical", "choices": ["a", 2]}
    assert uniform(0.0, 0.5) == Param("float", 0.0, 0.5)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: Param("normal", 0, 1), ValueError, "kind must be one of float, int, categorical"),
        (lambda: uniform(1.0, 0.0), ValueError, "low must be <= high"),
        (lambda: log_uniform(0.0, 1.0), ValueError, "log-scale range needs low > 0"),
        (lambda: uniform("0", 1.0), TypeError, "finite numbers"),
        (lambda: uniform(0.0, float("inf")), TypeError, "finite numbers"),
        (lambda: Param("int", 0.5, 2), TypeError, "int low and high"),
        (lambda: choice(), ValueError, "non-empty tuple"),
        (lambda: choice("a", "a"), ValueError, "distinct"),
        (lambda: choice([1]), TypeError, "None, bool, int, float or str"),
        (lambda: Param("categorical", 0, 1, choices=("a",)), ValueError, "choices only"),
        (lambda: Param("float", 0, 1, choices=("a",)), ValueError, "not choices"),
    ],
)
def test_bad_params_say_what_was_expected(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    "space, message",
    [
        ([("lr", log_uniform(1e-4, 1e-2))], "must be a mapping"),
        ({"lr": (1e-4, 1e-2)}, r"search_space\['lr'\]: expected a pml_anchors.plugin.search_space.Param"),
        ({"not a name": uniform(0, 1)}, r"search_space\['not a name'\]"),
        ({"lr": choice(1e-3, 1e-2)}, r"search_space\['lr'\]: the optimisers' learning rate must be a float range"),
        ({"lr": uniform(0.0, 1e-2)}, r"search_space\['lr'\].* must be > 0"),
        ({"weight_decay": uniform(-1.0, 1.0)}, r"search_space\['weight_decay'\]"),
    ],
)
def test_bad_search_spaces_name_the_parameter(space, message):
    with pytest.raises((TypeError, ValueError), match=message):
        check_search_space(space)
    with pytest.raises(InvalidMethodSpec, match=r"plugin 'p', method 'm': .*" + message.split(":")[0]):
        validate_spec(MethodSpec(name="m", loss=ProxyAnchorLoss, search_space=space), "p")


def test_reserved_names_are_documented():
    assert set(RESERVED) == {"lr", "weight_decay", "loss_lr_multiplier"}
    assert all(f"``{name}``" in pml_anchors.plugin.search_space.__doc__ for name in RESERVED)


class SpacePlugin:
    @hookimpl
    def register_methods(self, register):
        space = {"lr": log_uniform(1e-4, 1e-2), "margin": uniform(0.0, 0.3), "alpha": choice(16.0, 32.0)}
        register(MethodSpec(name="spaced", loss=ProxyAnchorLoss, search_space=space))
        register(MethodSpec(name="plain", loss=ProxyAnchorLoss))


def test_a_third_party_plugin_declares_a_space(pml_registry):
    pml_registry.add_plugin(SpacePlugin(), name="space-plugin")
    spec = pml_anchors.get_method("spaced")
    assert spec.search_space["margin"] == uniform(0.0, 0.3)
    data = json.loads(json.dumps(spec.as_dict()))
    assert data["search_space"]["alpha"] == {"kind": "categorical", "choices": [16.0, 32.0]}
    assert pml_anchors.get_method("plain").search_space == {}


def test_a_plugin_with_a_bad_space_fails_to_load_naming_it(pml_registry):
    class BadSpace:
        @hookimpl
        def register_methods(self, register):
            register(MethodSpec(name="bad", loss=ProxyAnchorLoss, search_space={"lr": choice(1e-3, 1e-2)}))

    pml_registry.add_plugin(BadSpace(), name="bad-space")
    with pytest.warns(pml_anchors.PluginLoadWarning, match="bad-space"):
        assert [s.name for s in pml_anchors.list_methods()] == []
    report = {r["name"]: r for r in pml_anchors.get_plugins()}["bad-space"]
    assert report["status"] == "failed" and "search_space['lr']" in report["error"]


BUILT_IN = ["e_ncm", "c_ncm", "cam", "reponet", "fsc", "proxy_anchor"]


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_method_declares_a_space_of_its_loss_arguments(name):
    spec = pml_anchors.get_method(name)
    assert "lr" in spec.search_space
    loss = spec.resolve_loss()
    for key in spec.search_space:
        assert key in RESERVED or accepts_keyword(loss, key), f"{name}: {key} is not a keyword of {loss.__name__}"


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_declares_a_space_of_its_loss_arguments(name):
    spec = BASELINES[name].spec
    assert "lr" in spec.search_space
    validate_spec(spec, "pytorch-metric-learning")
    loss = spec.resolve_loss()
    for key in spec.search_space:
        assert key in RESERVED or accepts_keyword(loss, key), f"{name}: {key} is not a keyword of {loss.__name__}"
