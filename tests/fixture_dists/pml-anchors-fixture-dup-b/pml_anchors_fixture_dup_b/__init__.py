"""Registers a method name that another fixture plugin registers too (test fixture)."""

from pml_anchors import MethodSpec, hookimpl


@hookimpl
def register_methods(register):
    register(MethodSpec(name="shared_name", loss="pytorch_metric_learning.losses:NormalizedSoftmaxLoss"))
