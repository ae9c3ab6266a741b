"""What benchmark reports pair a method with (MethodSpec.counterpart, pml_anchors.app.baselines.counterpart_of)."""

from __future__ import annotations

import pytest
from pytorch_metric_learning.losses import BaseMetricLossFunction
from training_toys import tiny

import pml_anchors
from pml_anchors.app.baselines import counterpart_of
from pml_anchors.app.tune import tune
from pml_anchors.app.tuned_bench import bench_tuned
from pml_anchors.errors import InvalidMethodSpec
from pml_anchors.plugin.spec import MethodSpec, validate_spec

#: what every tuned method shares in the test (tiny: digits, 64 training items, one epoch)
SHARED_TINY = {
    k: v
    for k, v in tiny().to_dict().items()
    if k in ("epochs", "limit", "test_limit", "batch_size", "device", "backbone_kwargs")
}


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("e_ncm", "baseline:cross_entropy"),  # the NCM paper's own comparison: not a PML loss, declared by the plugin
        ("c_ncm", "baseline:pml_normalized_softmax"),
        ("cam", "baseline:pml_contrastive"),  # CAM's loss has no PML twin: declared by the plugin
        ("fsc", "baseline:pml_soft_triple"),
        ("proxy_anchor", "baseline:pml_proxy_anchor"),
        ("reponet", "baseline:pml_arcface"),
    ],
)
def test_every_built_in_method_has_its_counterpart(method, expected):
    assert counterpart_of(pml_anchors.get_method(method)) == expected


class _LikeProxyAnchor(BaseMetricLossFunction):
    pml_counterpart = "ProxyAnchorLoss"


class _Unpaired(BaseMetricLossFunction):
    pass


def test_without_a_declared_counterpart_the_losss_pml_counterpart_decides():
    assert counterpart_of(MethodSpec(name="x", loss=_LikeProxyAnchor)) == "baseline:pml_proxy_anchor"
    assert counterpart_of(MethodSpec(name="x", loss=_Unpaired)) is None
    assert counterpart_of(MethodSpec(name="x", loss=_Unpaired, counterpart="other_plugin:y")) == "other_plugin:y"


def test_a_bad_counterpart_is_refused_naming_what_is_expected():
    for bad in (3, "not a name", "baseline:"):
        with pytest.raises(InvalidMethodSpec, match="counterpart must be None, 'baseline:<name>'"):
            validate_spec(MethodSpec(name="x", loss=_Unpaired, counterpart=bad), "p")
    for good in ("baseline:pml_arcface", "c_ncm", "pml-anchors-ncm:c_ncm"):
        validate_spec(MethodSpec(name="x", loss=_Unpaired, counterpart=good), "p")
    with pytest.raises(ValueError, match="unknown baseline 'pml_arcfac'; did you mean 'pml_arcface'"):
        counterpart_of(MethodSpec(name="x", loss=_Unpaired, counterpart="baseline:pml_arcfac"))


@pytest.mark.slow  # tunes two methods (about 6 s)
def test_tuned_bench_pairs_a_method_with_its_declared_counterpart(tmp_path):
    """e_ncm's loss has no PML twin; its plugin's counterpart pairs it with cross-entropy in the tuned report."""
    for method in ("e_ncm", "baseline:cross_entropy"):
        folder = tmp_path / "studies" / method.removeprefix("baseline:")
        tune(method, output=folder, trials=1, folds=2, on_trial=lambda _: None, **SHARED_TINY)
    summary = bench_tuned([tmp_path / "studies"], seeds=[0, 1], output=tmp_path / "bench")
    e_ncm = {r["method"]: r for r in summary["methods"]}["e_ncm"]
    assert e_ncm["pml_counterpart"] == "baseline:cross_entropy" and "p" in e_ncm["vs_pml_counterpart"]
    assert "vs cross_entropy, p " in (tmp_path / "bench" / "results.md").read_text()
