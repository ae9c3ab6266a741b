"""One test per hookspec, through a real in-process plugin (tests/test_hook_docs.py checks that each exists)."""

import pytest
import torch
from toy_loss import ToyCosineLoss

import pml_anchors
from pml_anchors import InvalidMethodSpec, MethodSpec, hookimpl


def test_hook_register_methods(pml_registry):
    calls = []

    class Plugin:
        @hookimpl
        def register_methods(self, register):
            calls.append("register_methods")
            register(MethodSpec(name="hooked", loss=ToyCosineLoss, aliases=("hooked_alias",), defaults={"scale": 3.0}))

    pml_registry.add_plugin(Plugin(), name="hook-plugin")
    assert calls == []  # hooks run when the registry is first built, not at registration
    spec = pml_anchors.get_method("hooked_alias")
    assert (spec.name, spec.plugin, spec.qualified_name) == ("hooked", "hook-plugin", "hook-plugin:hooked")
    loss = pml_anchors.get_loss("hooked", num_classes=3, embedding_size=4)
    assert isinstance(loss, ToyCosineLoss) and loss.scale == 3.0
    pml_anchors.list_methods()
    assert calls == ["register_methods"]  # once, the registry is cached
    report = {r["name"]: r for r in pml_anchors.get_plugins()}["hook-plugin"]
    assert report["status"] == "ok" and report["methods"] == ["hooked"] and report["hooks"] == ["register_methods"]


def test_hook_register_methods_rejects_an_invalid_spec(pml_registry):
    class Plugin:
        @hookimpl
        def register_methods(self, register):
            register(MethodSpec(name="not an identifier", loss=ToyCosineLoss))

    pml_registry.add_plugin(Plugin(), name="bad-plugin")
    with pytest.warns(pml_anchors.PluginLoadWarning, match="bad-plugin"):
        assert pml_anchors.list_methods() == []
    report = {r["name"]: r for r in pml_anchors.get_plugins()}["bad-plugin"]
    assert report["status"] == "failed" and InvalidMethodSpec.__name__ in report["error"]


def test_hook_register_initializers(pml_registry):
    order = []

    def diagonal(num_classes, embedding_size, *, seed=None, scale=1.0):
        return scale * torch.eye(num_classes, embedding_size)

    class Plugin:
        @hookimpl
        def register_initializers(self, register):
            order.append("register_initializers")
            register("diagonal", diagonal, aliases=("diag",))

        @hookimpl
        def register_methods(self, register):
            order.append("register_methods")
            register(MethodSpec(name="diag_method", loss=ToyCosineLoss, initializer="diagonal"))

    pml_registry.add_plugin(Plugin(), name="init-plugin")
    assert pml_anchors.get_initializer("diag") is diagonal
    assert "init-plugin:diagonal" in pml_anchors.list_initializers()
    assert order == ["register_initializers", "register_methods"]  # initializers first, within a plugin too
    # a method uses the geometry by name, and any loss can take it via anchors=
    assert torch.equal(pml_anchors.get_loss("diag_method", 3, 4).anchors, torch.eye(3, 4))
    other = ToyCosineLoss(2, 3, anchors="diag", anchor_kwargs={"scale": 2.0})
    assert torch.equal(other.anchors, 2 * torch.eye(2, 3))
    report = {r["name"]: r for r in pml_anchors.get_plugins()}["init-plugin"]
    assert report["initializers"] == ["diagonal"] and report["hooks"] == ["register_initializers", "register_methods"]
