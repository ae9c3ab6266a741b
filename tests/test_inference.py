"""pml_anchors.app.inference.load_trained: a checkpoint's models for new inputs, without the training data."""

import pytest
import torch
from training_toys import (
    single_thread,  # noqa: F401 - autouse fixture
    tiny,
)

import pml_anchors
import pml_anchors.app.data as data
from pml_anchors.app.inference import TrainedModel, load_trained
from pml_anchors.app.session import run
from pml_anchors.evaluation import embed


def _trained(tmp_path, method, **config):
    """Train a tiny run; return (results, its test split, path of its checkpoint)."""
    out = tmp_path / method.replace(":", "_")
    results = run(tiny(method, output=str(out), **config))
    splits = data.load_dataset("digits", limit=64, test_limit=120, seed=0)
    return results, splits, out / "checkpoint.pt"


@pytest.mark.parametrize("method", ["toy_learnable", "c_ncm", "proxy_anchor"])
def test_load_trained_embeds_and_classifies_like_the_run_without_its_data(request, tmp_path, monkeypatch, method):
    if method.startswith("toy"):
        request.getfixturevalue("toys")  # an isolated registry with the toy plugin; else the installed plugins
    results, splits, path = _trained(tmp_path, method)
    images, labels = (torch.stack([splits.test[i][0] for i in range(len(splits.test))]), splits.test_labels)

    def no_data(*args, **kwargs):
        raise AssertionError("load_trained read a dataset")

    monkeypatch.setattr(data, "load_dataset", no_data)
    model = load_trained(path)
    assert isinstance(model, TrainedModel) and not model.training and model.method == method
    assert model.epoch == results["epochs"] == 1
    # the same embeddings as the evaluation of the run (PML's tester on the same weights), up to batching
    session_emb, _ = embed(model.trunk, model.embedder, splits.test, device="cpu")
    got = model.embed(images, batch_size=50)
    torch.testing.assert_close(got, session_emb, rtol=1e-5, atol=1e-6)
    assert model.training is False
    assert model.class_names == splits.train_class_names == tuple(str(d) for d in range(10))
    assert model.data_info == pytest.approx(splits.info)  # the digits' normalisation (mean, std)
    accuracy = (model.predict(images) == labels).double().mean().item()
    assert accuracy == pytest.approx(results["nearest_anchor_accuracy"], abs=1e-9)
    torch.testing.assert_close(model(images[:4]), got[:4], rtol=1e-5, atol=1e-6)


def test_load_trained_needs_no_backbone_weights_file_and_keeps_the_callers_random_state(toys, tmp_path):
    out = tmp_path / "pre"
    weights = tmp_path / "trunk.pt"
    _, _, first = _trained(tmp_path, "toy_fixed")
    torch.save(torch.load(first, weights_only=True)["trunk"], weights)
    run(tiny(output=str(out), backbone_kwargs={"width": 8, "weights_path": str(weights)}))
    weights.unlink()  # the checkpoint has the weights; the file is gone on the machine that loads it

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model = load_trained(out / "checkpoint.pt")
    assert torch.equal(torch.rand(3), expected), "loading reseeded torch's RNG"
    assert model.config.backbone_kwargs == {"width": 8}


def test_baselines_load_and_those_without_a_classifier_say_so(toys, tmp_path):
    _, splits, path = _trained(tmp_path, "baseline:pml_arcface")
    images = torch.stack([splits.test[i][0] for i in range(8)])
    assert load_trained(path).predict(images).shape == (8,)
    _, _, path = _trained(tmp_path, "baseline:pml_contrastive")
    model = load_trained(path)
    assert model.embed(images).shape == (8, model.config.embedding_size or 64)
    with pytest.raises(TypeError, match="'pml_contrastive' has no anchors or classifier to predict with"):
        model.predict(images)


def test_load_trained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_trained(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a pml-anchors checkpoint"):
        load_trained(tmp_path / "other.pt")
    assert pml_anchors.load_trained is load_trained


def test_the_readmes_digits_preprocessing_gives_the_training_inputs(toys, tmp_path):
    from sklearn.datasets import load_digits

    _, splits, path = _trained(tmp_path, "toy_fixed")
    info = load_trained(path).data_info
    raw = torch.as_tensor(load_digits().images, dtype=torch.float32).unsqueeze(1)
    prepared = (raw / 16 - info["mean"]) / info["std"]  # the recipe in docs/cli.md "Using a trained run from Python"
    for i in range(5):
        item = splits.test[i][0]
        assert (prepared - item).abs().amax(dim=(1, 2, 3)).min() < 1e-5, f"test item {i} is not a prepared digit"


def test_inputs_of_the_wrong_shape_get_a_clear_error(toys, tmp_path):
    _, _, path = _trained(tmp_path, "toy_fixed")
    model = load_trained(path)
    assert model.input_shape == (1, 8, 8)
    flat = torch.zeros(3, 64)  # sklearn's load_digits().data
    with pytest.raises(ValueError, match=r"shape \(N, 1, 8, 8\).*got \(3, 64\).*view\(-1, 1, 8, 8\)"):
        model.predict(flat)
    assert model.predict(flat.view(-1, 1, 8, 8)).shape == (3,)
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.embed(flat.numpy())
