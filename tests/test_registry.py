"""Registry API with in-process plugins: MethodSpec validation, lookups, duplicates, get_loss."""

import pytest
import torch
from pytorch_metric_learning.losses import ProxyAnchorLoss

import pml_anchors
from pml_anchors import (
    DuplicateMethodError,
    MethodSpec,
    UnknownMethodError,
    hookimpl,
)


class ToyPlugin:
    @hookimpl
    def register_methods(self, register):
        register(
            MethodSpec(
                name="toy",
                loss="toy_loss:ToyCosineLoss",
                initializer="simplex",
                defaults={"scale": 2.0},
                aliases=("toy_alias",),
                paper="none",
                description="toy cosine softmax",
            )
        )
        register(MethodSpec(name="toy_learnable", loss="toy_loss:LearnableToyLoss", lr_multipliers={"anchors": 10.0}))


class OtherToyPlugin:
    @hookimpl
    def register_methods(self, register):
        register(MethodSpec(name="toy", loss=ProxyAnchorLoss))


def test_only_name_and_loss_are_required():
    spec = MethodSpec(name="x", loss=ProxyAnchorLoss)
    assert spec.initializer is None and spec.trainer_hooks is None and dict(spec.defaults) == {}
    with pytest.raises(TypeError):
        MethodSpec(name="x")  # loss missing


def test_spec_is_frozen():
    spec = MethodSpec(name="x", loss=ProxyAnchorLoss)
    with pytest.raises(AttributeError):
        spec.name = "y"


def test_register_and_lookup(pml_registry):
    pml_registry.add_plugin(ToyPlugin(), name="toy-plugin")
    names = [s.name for s in pml_anchors.list_methods()]
    assert names == ["toy", "toy_learnable"]
    spec = pml_anchors.get_method("toy")
    assert spec.plugin == "toy-plugin" and spec.qualified_name == "toy-plugin:toy"
    assert pml_anchors.get_method("toy_alias") is spec
    assert pml_anchors.get_method("toy-plugin:toy") is spec


def test_get_loss_merges_defaults_under_kwargs(pml_registry):
    pml_registry.add_plugin(ToyPlugin(), name="toy-plugin")
    loss = pml_anchors.get_loss("toy", num_classes=4, embedding_size=3)
    assert loss.scale == 2.0
    # the spec's initializer ("simplex") was used
    assert torch.allclose(loss.anchors, pml_anchors.get_initializer("simplex")(4, 3))
    loss = pml_anchors.get_loss("toy", 4, 4, scale=5.0, anchors="one_hot")
    assert loss.scale == 5.0 and torch.equal(loss.anchors, torch.eye(4))


def test_unknown_name_suggests_close_matches(pml_registry):
    pml_registry.add_plugin(ToyPlugin(), name="toy-plugin")
    with pytest.raises(UnknownMethodError, match=r"unknown method 'toyy'; did you mean 'toy'") as info:
        pml_anchors.get_method("toyy")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert "toy_learnable" in str(info.value)
    with pytest.raises(UnknownMethodError, match="unknown initializer 'simplx'; did you mean 'simplex'"):
        pml_anchors.get_initializer("simplx")


def test_duplicate_names_are_ambiguous_but_qualified_names_resolve(pml_registry):
    pml_registry.add_plugin(ToyPlugin(), name="toy-plugin")
    pml_registry.add_plugin(OtherToyPlugin(), name="other-plugin")
    with pytest.raises(DuplicateMethodError, match="ambiguous") as info:
        pml_anchors.get_method("toy")
    assert "toy-plugin" in str(info.value) and "other-plugin" in str(info.value)
    assert pml_anchors.get_method("toy-plugin:toy").loss == "toy_loss:ToyCosineLoss"
    assert pml_anchors.get_method("other-plugin:toy").loss is ProxyAnchorLoss
    assert isinstance(pml_anchors.get_loss("other-plugin:toy", 3, 4), ProxyAnchorLoss)
    # other methods of the same plugins keep working
    assert pml_anchors.get_method("toy_learnable").plugin == "toy-plugin"


def test_strict_mode_raises_on_duplicates(pml_registry, monkeypatch):
    monkeypatch.setenv("PML_ANCHORS_STRICT_PLUGINS", "1")
    pml_registry.add_plugin(ToyPlugin(), name="toy-plugin")
    pml_registry.add_plugin(OtherToyPlugin(), name="other-plugin")
    with pytest.raises(DuplicateMethodError, match="toy-plugin:toy"):
        pml_anchors.list_methods()


@pytest.mark.parametrize(
    "spec, message",
    [
        (MethodSpec(name="bad name", loss=ProxyAnchorLoss), "identifier"),
        (MethodSpec(name="x", loss=torch.nn.Linear), "BaseMetricLossFunction"),
        (MethodSpec(name="x", loss="not a path"), "package.module:Class"),
        (MethodSpec(name="x", loss=ProxyAnchorLoss, initializer=3), "initializer"),
        (MethodSpec(name="x", loss=ProxyAnchorLoss, trainer_hooks="nope nope"), "trainer_hooks"),
        (MethodSpec(name="x", loss=ProxyAnchorLoss, aliases=["a"]), "aliases"),
        (MethodSpec(name="x", loss=ProxyAnchorLoss, lr_multipliers={"proxies": -1}), "lr_multipliers"),
        (MethodSpec(name="x", loss=ProxyAnchorLoss, requires_api="0.1+"), "requires_api must be a version specifier"),
        (MethodSpec(name="x", loss=ProxyAnchorLoss, requires_api=0.1), "requires_api must be a version specifier"),
        ("not a spec", "expected a pml_anchors.MethodSpec"),
    ],
)
def test_invalid_specs_fail_the_plugin_with_its_name(pml_registry, spec, message):
    class BadPlugin:
        @hookimpl
        def register_methods(self, register):
            register(spec)

    pml_registry.add_plugin(ToyPlugin(), name="toy-plugin")
    pml_registry.add_plugin(BadPlugin(), name="bad-plugin")
    with pytest.warns(pml_anchors.PluginLoadWarning, match="bad-plugin"):
        names = [s.name for s in pml_anchors.list_methods()]
    assert names == ["toy", "toy_learnable"]  # the good plugin is unaffected
    report = {r["name"]: r for r in pml_anchors.get_plugins()}
    assert report["bad-plugin"]["status"] == "failed"
    assert message in report["bad-plugin"]["error"] and "bad-plugin" in report["bad-plugin"]["error"]


def test_invalid_spec_raises_in_strict_mode(pml_registry, monkeypatch):
    class BadPlugin:
        @hookimpl
        def register_methods(self, register):
            register(MethodSpec(name="x", loss=torch.nn.Linear))

    monkeypatch.setenv("PML_ANCHORS_STRICT_PLUGINS", "1")
    pml_registry.add_plugin(BadPlugin(), name="bad-plugin")
    with pytest.raises(pml_anchors.PluginLoadError, match="bad-plugin"):
        pml_anchors.list_methods()


def test_lazy_loss_string_error_names_the_method(pml_registry):
    class LazyPlugin:
        @hookimpl
        def register_methods(self, register):
            register(MethodSpec(name="ghost", loss="no_such_module_xyz:Loss"))

    pml_registry.add_plugin(LazyPlugin(), name="lazy")
    assert pml_anchors.get_method("ghost").loss == "no_such_module_xyz:Loss"  # listing imports nothing
    with pytest.raises(ImportError, match="loss of method 'ghost'"):
        pml_anchors.get_loss("ghost", 3, 4)


def test_register_initializers_hook_and_use_by_name(pml_registry):
    def ring(num_classes, embedding_size, *, seed=None, **kw):
        angles = torch.arange(num_classes) * 2 * torch.pi / num_classes
        return torch.stack([angles.cos(), angles.sin()], 1)

    class InitPlugin:
        @hookimpl
        def register_initializers(self, register):
            register("ring", ring, aliases=("circle",))

    pml_registry.add_plugin(InitPlugin(), name="ring-plugin")
    pml_registry.add_plugin(ToyPlugin(), name="toy-plugin")
    assert pml_anchors.get_initializer("ring") is ring
    assert pml_anchors.get_initializer("circle") is ring
    assert "ring-plugin:ring" in pml_anchors.list_initializers()
    loss = pml_anchors.get_loss("toy", 5, 2, anchors="ring")
    assert torch.allclose(loss.anchors, ring(5, 2))
    # qualified names work wherever a name does: anchors= and MethodSpec(initializer=...)
    assert torch.allclose(pml_anchors.get_loss("toy", 5, 2, anchors="ring-plugin:ring").anchors, ring(5, 2))
    from pml_anchors.plugin.api import build_loss

    spec = MethodSpec(name="ringed", loss="toy_loss:ToyCosineLoss", initializer="ring-plugin:ring")
    assert torch.allclose(build_loss(spec, 5, 2).anchors, ring(5, 2))
    with pytest.raises(ImportError, match="not a registered initializer either.*ring-plugin:ring"):
        pml_anchors.get_loss("toy", 5, 2, anchors="other-plugin:ring")


def test_trainer_hooks_default_and_factory(pml_registry):
    from pml_anchors.plugin.trainer_hooks import TrainerHooks

    class MyHooks(TrainerHooks):
        def __init__(self, every=1, **kw):
            super().__init__(**kw)
            self.every = every

    class HookPlugin:
        @hookimpl
        def register_methods(self, register):
            register(MethodSpec(name="hooked", loss=ProxyAnchorLoss, trainer_hooks=MyHooks))
            register(MethodSpec(name="plain", loss=ProxyAnchorLoss))

    pml_registry.add_plugin(HookPlugin(), name="hp")
    hooks = pml_anchors.get_trainer_hooks("hooked", every=5)
    assert isinstance(hooks, MyHooks) and hooks.every == 5
    assert type(pml_anchors.get_trainer_hooks("plain")) is TrainerHooks


def test_register_plugin_twice_is_an_error(pml_registry):
    pml_registry.add_plugin(ToyPlugin(), name="toy-plugin")
    with pytest.raises(ValueError, match="already registered"):
        pml_registry.add_plugin(ToyPlugin(), name="toy-plugin")


def test_unregister_plugin(pml_registry):
    name = pml_registry.add_plugin(ToyPlugin(), name="toy-plugin")
    assert pml_anchors.get_method("toy")
    pml_registry.remove_plugin(name)
    with pytest.raises(UnknownMethodError):
        pml_anchors.get_method("toy")


def test_spec_as_dict_is_json_friendly(pml_registry):
    import json

    pml_registry.add_plugin(ToyPlugin(), name="toy-plugin")
    data = pml_anchors.get_method("toy").as_dict()
    json.dumps(data)
    assert data["qualified_name"] == "toy-plugin:toy" and data["aliases"] == ["toy_alias"]


def test_hook_with_bad_signature_is_reported(pml_registry):
    class WrongArgs:
        @hookimpl
        def register_methods(self, register, unexpected):
            pass

    pml_registry.add_plugin(WrongArgs(), name="wrong-args")
    with pytest.warns(pml_anchors.PluginLoadWarning, match="wrong-args"):
        report = {r["name"]: r for r in pml_anchors.get_plugins()}
    assert report["wrong-args"]["status"] == "failed"


def test_unknown_hook_in_process_is_incompatible(pml_registry):
    class Future:
        @hookimpl
        def register_losses_v2(self, register):
            pass

    class FutureOptional:
        @hookimpl(optionalhook=True)
        def register_losses_v2(self, register):
            pass

        @hookimpl
        def register_methods(self, register):
            register(MethodSpec(name="opt", loss=ProxyAnchorLoss))

    pml_registry.add_plugin(Future(), name="future")
    pml_registry.add_plugin(FutureOptional(), name="future-optional")
    with pytest.warns(pml_anchors.PluginLoadWarning, match="unknown hook"):
        report = {r["name"]: r for r in pml_anchors.get_plugins()}
    assert report["future"]["status"] == "incompatible"
    assert report["future-optional"]["status"] == "ok"
    assert pml_anchors.get_method("opt").plugin == "future-optional"


def test_requires_api_outside_the_running_version_is_incompatible(pml_registry, monkeypatch):
    """MethodSpec.requires_api is a PEP 440 range on PLUGIN_API_VERSION; a plugin registering a method outside it
    is not loaded (none of its methods), is reported incompatible, and lookups of its methods name it."""

    def plugin_requiring(prefix, *ranges):
        class Plugin:
            @hookimpl
            def register_methods(self, register):
                for i, api in enumerate(ranges):
                    register(MethodSpec(name=f"{prefix}{i}", loss=ProxyAnchorLoss, requires_api=api))

        return Plugin()

    running = pml_anchors.PLUGIN_API_VERSION
    pml_registry.add_plugin(plugin_requiring("now", f">={running},<99", None), name="current")
    pml_registry.add_plugin(plugin_requiring("later", f">={running}", ">=99.0"), name="future")
    with pytest.warns(pml_anchors.PluginLoadWarning, match="future"):
        report = {r["name"]: r for r in pml_anchors.get_plugins()}
    assert report["current"]["status"] == "ok" and pml_anchors.get_method("now0").requires_api == f">={running},<99"
    assert report["future"]["status"] == "incompatible" and report["future"]["methods"] == []
    message = f"requires plugin API >=99.0 (MethodSpec.requires_api), but this pml-anchors provides {running}"
    assert message in report["future"]["error"]
    with pytest.raises(UnknownMethodError, match="future is incompatible"):
        pml_anchors.get_method("later0")  # its in-range method is not loaded either
    monkeypatch.setenv("PML_ANCHORS_STRICT_PLUGINS", "1")
    pml_anchors.reset()
    pml_registry.add_plugin(plugin_requiring("later", ">=99.0"), name="future")
    with pytest.raises(pml_anchors.PluginLoadError, match="requires plugin API >=99.0"):
        pml_anchors.list_methods()


def test_register_initializers_rejects_a_string_that_is_not_a_lazy_path(pml_registry):
    class Plugin:
        @hookimpl
        def register_initializers(self, register):
            register("ring", "not a module path")

    pml_registry.add_plugin(Plugin(), name="bad-init")
    with pytest.warns(pml_anchors.PluginLoadWarning, match="bad-init"):
        report = {r["name"]: r for r in pml_anchors.get_plugins()}
    assert report["bad-init"]["status"] == "failed"
    assert (
        "initializer 'ring' must be a callable or a lazy 'package.module:function' string"
        in (report["bad-init"]["error"])
    )
