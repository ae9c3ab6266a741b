"""Checkpoints of every method: state_dict round trips through torch.save / torch.load(weights_only=True), and a
checkpoint that does not fit the loss (other num_classes, embedding_size or geometry) is a clear ValueError."""

import re

import method_cases
import pytest
import torch

import pml_anchors

METHODS = method_cases.method_names()
IDS = [method_cases.method_id(n) for n in METHODS]
K = method_cases.NUM_CLASSES


def batch(width, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, width, generator=g), torch.arange(n) % K


def save_and_load(module, path):
    torch.save(module.state_dict(), path)
    return torch.load(path, weights_only=True)


def mismatch_message(src, dst):
    """The message AnchorLoss gives when ``src``'s checkpoint is loaded into ``dst``."""
    args = ", ".join(f"{name}={getattr(dst, name)}" for name in dst.shape_arguments)
    return (
        rf"checkpoint anchors 'anchors' have shape {re.escape(str(tuple(src.anchors.shape)))}, but this "
        rf"{type(dst).__name__}\({re.escape(args)}\) has anchors "
        rf"of shape {re.escape(str(tuple(dst.anchors.shape)))}; build the loss with the checkpoint's "
        rf"{re.escape(', '.join(dst.shape_arguments))} and geometry"
    )


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_state_dict_round_trip(name, tmp_path):
    src = method_cases.build(name, seed=0)
    emb, labels = batch(src.embedding_size)
    learnable = isinstance(src.anchors, torch.nn.Parameter)
    if learnable:  # a trained state, not the initial one
        optimizer = torch.optim.SGD(src.parameters(), lr=0.1)
        src(emb, labels).backward()
        optimizer.step()
    dst = method_cases.build(name, seed=1)  # other random anchors / sub-centres where the method draws any
    if learnable:
        assert not torch.equal(dst.anchors, src.anchors)
    state = save_and_load(src, tmp_path / "loss.pt")
    assert set(state) >= {"anchors"}
    dst.load_state_dict(state)
    assert torch.equal(dst.anchors, src.anchors) and dst.anchors.dtype == src.anchors.dtype
    assert isinstance(dst.anchors, torch.nn.Parameter) == learnable  # a buffer stays a buffer
    assert torch.equal(dst(emb, labels), src(emb, labels))
    assert torch.equal(dst.get_logits(emb), src.get_logits(emb))


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_fixed_random_anchors_differ_by_seed_and_are_restored(name, tmp_path):
    src, other = method_cases.build(name, seed=0), method_cases.build(name, seed=1)
    if torch.equal(src.anchors, other.anchors):  # a deterministic geometry (the polytopes): nothing to restore
        assert torch.equal(src.anchors, method_cases.build(name, seed=None).anchors)
        return
    other.load_state_dict(save_and_load(src, tmp_path / "loss.pt"))
    assert torch.equal(other.anchors, src.anchors)


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_other_num_classes_is_a_clear_error(name, tmp_path):
    src = method_cases.build(name)
    dst = method_cases.build(name, num_classes=K + 1)
    state = save_and_load(src, tmp_path / "loss.pt")
    with pytest.raises(ValueError, match=mismatch_message(src, dst)):
        dst.load_state_dict(state)
    with pytest.raises(ValueError, match=mismatch_message(dst, src)):  # and the other way round
        src.load_state_dict(dst.state_dict())
    with pytest.raises(ValueError, match="build the loss with the checkpoint's"):
        dst.load_state_dict(state, strict=False)  # not silently skipped either


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_other_embedding_size_is_a_clear_error(name, tmp_path):
    src = method_cases.build(name)
    dst = method_cases.build(name, embedding_size=2 * method_cases.WIDTH)
    if dst.embedding_size == src.embedding_size:  # the method forces its width (polytopes) and says so
        with pytest.raises(ValueError, match="embedding_size"):
            pml_anchors.get_loss(name, K, 2 * method_cases.WIDTH)
        return
    with pytest.raises(ValueError, match=mismatch_message(src, dst)):
        dst.load_state_dict(save_and_load(src, tmp_path / "loss.pt"))


@pytest.mark.parametrize(
    "name, src_kwargs, dst_kwargs",
    [
        ("reponet", {"polytope": "simplex"}, {"polytope": "cube"}),
        ("reponet", {"polytope": "cube"}, {"polytope": "simplex"}),
        ("reponet", {"polytope": "orthoplex"}, {"polytope": "simplex"}),
        ("reponet", {"polytope": "simplex"}, {"polytope": "simplex", "drop_unused": True, "num_classes": K + 1}),
        ("fsc", {"sub_centers": 4}, {"sub_centers": 2}),
        ("fsc", {"sub_centers": 2}, {"sub_centers": 4}),
    ],
    ids=[
        "simplex-into-cube",
        "cube-into-simplex",
        "orthoplex-into-simplex",
        "simplex-other-k",
        "fsc-4-into-2",
        "fsc-2-into-4",
    ],
)
def test_other_geometry_is_a_clear_error(name, src_kwargs, dst_kwargs, tmp_path):
    dst_kwargs = dict(dst_kwargs)
    num_classes = dst_kwargs.pop("num_classes", K)
    src = method_cases.build(name, embedding_size=None if name == "reponet" else 8, **src_kwargs)
    dst = method_cases.build(name, num_classes, embedding_size=None if name == "reponet" else 8, **dst_kwargs)
    assert src.anchors.shape != dst.anchors.shape
    with pytest.raises(ValueError, match=mismatch_message(src, dst)):
        dst.load_state_dict(save_and_load(src, tmp_path / "loss.pt"))


def test_same_geometry_other_options_round_trip(tmp_path):
    """Options that do not change the anchors' shape load fine (the anchors are the state)."""
    src = method_cases.build("fsc", sub_centers=2, variance=1e-2, seed=0)
    dst = method_cases.build("fsc", sub_centers=2, variance=1e-3, seed=5)
    dst.load_state_dict(save_and_load(src, tmp_path / "loss.pt"))
    assert torch.equal(dst.anchors, src.anchors)


def test_every_builtin_method_is_covered():
    assert method_cases.BUILTIN_METHODS <= set(IDS)


@pytest.mark.parametrize("name", method_cases.builtin_method_names(), ids=method_cases.method_id)
def test_a_trained_runs_checkpoint_is_read_evaluated_and_resumed(name, tmp_path):
    """Every built-in method's ``checkpoint.pt``, written by a real run, passes the app's checkpoint checks
    (``load_checkpoint``), evaluates to the run's metrics and resumes (RePoNet's ``get_extra_state`` dict, which
    records its num_classes, was once refused as "should be a tensor")."""
    from training_toys import tiny

    from pml_anchors.app.checkpoints import load_checkpoint
    from pml_anchors.app.reload import evaluate_checkpoint
    from pml_anchors.app.session import run

    results = run(tiny(name, output=str(tmp_path / "run"), num_threads=1))
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert load_checkpoint(checkpoint)["epoch"] == 1
    evaluated = evaluate_checkpoint(checkpoint)
    assert evaluated["precision_at_1"] == pytest.approx(results["precision_at_1"], abs=1e-6)
    resumed = run(tiny(name, output=str(tmp_path / "run"), epochs=2, num_threads=1), resume=checkpoint)
    assert resumed["epochs"] == 2
