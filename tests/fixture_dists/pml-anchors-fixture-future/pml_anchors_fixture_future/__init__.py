"""Implements a hook this pml-anchors does not define, without optionalhook (test fixture)."""

from pml_anchors import MethodSpec, hookimpl


@hookimpl
def register_methods(register):
    register(MethodSpec(name="future_method", loss="pytorch_metric_learning.losses:ProxyAnchorLoss"))


@hookimpl
def register_schedulers(register):
    register("cosine", object())
