"""Bad input, every method: each case gets a well-defined value or a ValueError/TypeError that says what was
expected; never a silent NaN or an IndexError from deep inside torch. ``docs/bad_input.md`` lists the outcomes;
``python tests/test_bad_input.py`` prints that table from the installed methods.

Plus a hypothesis property test per method: random valid batches give a finite loss and finite gradients, and
permuting the samples (with their labels) changes neither the loss nor the (permuted) gradients.
"""

from __future__ import annotations

import method_cases
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

METHODS = method_cases.method_names()
IDS = [method_cases.method_id(n) for n in METHODS]
K = method_cases.NUM_CLASSES
B = 6


def _emb(d, n=B, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _labels(n=B):
    return torch.arange(n) % K


def _with(tensor, row, value):
    out = tensor.clone()
    out[row, 1] = value
    return out


#: name -> (what is wrong, inputs(d) -> (embeddings, labels), expected exception type, message) for the
#: inputs that must be rejected; the message is the full text for K = 4 and the method's width d.
ERRORS = {
    "labels_out_of_range": (
        "a label equal to num_classes",
        lambda d: (_emb(d), torch.tensor([0, 1, 2, 3, 4, 0])),
        ValueError,
        "labels must lie in [0, 4) (num_classes=4), got values from 0 to 4",
    ),
    "labels_negative": (
        "a label -1",
        lambda d: (_emb(d), torch.tensor([0, 1, -1, 3, 2, 0])),
        ValueError,
        "labels must lie in [0, 4) (num_classes=4), got values from -1 to 3",
    ),
    "labels_float": (
        "float labels",
        lambda d: (_emb(d), _labels().float()),
        TypeError,
        "labels must be an integer tensor (e.g. torch.long), got torch.float32",
    ),
    "labels_bool": (
        "bool labels",
        lambda d: (_emb(d), _labels().bool()),
        TypeError,
        "labels must be an integer tensor (e.g. torch.long), got torch.bool",
    ),
    "labels_2d": (
        "labels of shape (B, 1)",
        lambda d: (_emb(d), _labels().view(-1, 1)),
        ValueError,
        "labels must be a 1-D tensor of shape (batch_size,), got shape (6, 1)",
    ),
    "labels_wrong_length": (
        "5 labels for 6 embeddings",
        lambda d: (_emb(d), _labels()[:-1]),
        ValueError,
        "got 6 embeddings but 5 labels; they must match",
    ),
    "labels_missing": (
        "labels=None",
        lambda d: (_emb(d), None),
        ValueError,
        "labels are required for this loss function",
    ),
    "labels_not_a_tensor": (
        "labels as a Python list",
        lambda d: (_emb(d), _labels().tolist()),
        TypeError,
        "labels must be a 1-D integer torch.Tensor, got list",
    ),
    "embeddings_wrong_width": (
        "embeddings of width d + 1",
        lambda d: (_emb(d + 1), _labels()),
        ValueError,
        "embeddings must have shape (batch_size, {d}) for this loss (embedding_size={d}), got (6, {d1})",
    ),
    "embeddings_1d": (
        "one embedding as a 1-D tensor",
        lambda d: (_emb(d)[0], _labels()[:1]),
        ValueError,
        "embeddings must have shape (batch_size, {d}) for this loss (embedding_size={d}), got ({d},)",
    ),
    "embeddings_nan": (
        "a NaN in row 2",
        lambda d: (_with(_emb(d), 2, float("nan")), _labels()),
        ValueError,
        "embeddings contain NaN or Inf (first bad rows: [2])",
    ),
    "embeddings_inf": (
        "+Inf in row 3 and -Inf in row 5",
        lambda d: (_with(_with(_emb(d), 3, float("inf")), 5, float("-inf")), _labels()),
        ValueError,
        "embeddings contain NaN or Inf (first bad rows: [3, 5])",
    ),
    "embeddings_integer": (
        "int64 embeddings",
        lambda d: (torch.randint(0, 3, (B, d)), _labels()),
        TypeError,
        "embeddings must be a floating-point tensor (float16, bfloat16, float32 or float64), got torch.int64",
    ),
    "embeddings_numpy": (
        "a NumPy array",
        lambda d: (_emb(d).numpy(), _labels()),
        TypeError,
        "embeddings must be a torch.Tensor, got ndarray",
    ),
}

#: name -> (what is unusual, inputs(d) -> (embeddings, labels), the documented outcome)
VALUES = {
    "empty_batch": (
        "0 embeddings, 0 labels",
        lambda d: (torch.zeros(0, d), torch.zeros(0, dtype=torch.long)),
        "exactly 0.0, still differentiable: the embeddings get a (0, d) zero gradient, the anchors none",
    ),
    "one_class": (
        "every label 0",
        lambda d: (_emb(d), torch.zeros(B, dtype=torch.long)),
        "the usual loss (finite, finite gradients); no method needs a second class in the batch",
    ),
    "one_sample": (
        "a batch of 1",
        lambda d: (_emb(d)[:1], _labels()[:1]),
        "the usual loss of that sample (finite, finite gradients)",
    ),
    "non_contiguous": (
        "a transposed (non-contiguous) view",
        lambda d: (_emb(B, n=d).T, _labels()),
        "the same value and gradients as its contiguous copy",
    ),
    "zero_embeddings": (
        "all-zero embeddings",
        lambda d: (torch.zeros(B, d), _labels()),
        "finite value and finite (zero-safe) gradients",
    ),
    "int32_labels": (
        "int32 (or uint8) labels",
        lambda d: (_emb(d), _labels().int()),
        "accepted: the same value as int64 labels",
    ),
}


def outcome(name: str, inputs) -> tuple[str, str]:
    """(exception type name or "value", message or value) of one forward/backward on ``inputs(d)``."""
    loss = method_cases.build(name)
    emb, labels = inputs(loss.embedding_size)
    try:
        value = loss(emb, labels)
    except Exception as exc:  # noqa: BLE001 - reported, whatever it is
        return type(exc).__name__, str(exc)
    return "value", f"{float(value.detach()):.6g}"


# -- rejected inputs --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(ERRORS))
@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_rejected_with_a_clear_message(name, case):
    _, inputs, error, message = ERRORS[case]
    loss = method_cases.build(name)
    d = loss.embedding_size
    emb, labels = inputs(d)
    if torch.is_tensor(emb) and emb.is_floating_point():
        emb.requires_grad_(True)
    with pytest.raises(error) as info:
        loss(emb, labels)
    assert str(info.value) == message.format(d=d, d1=d + 1)
    assert not isinstance(info.value, IndexError)


# -- inputs with a defined value -----------------------------------------------------------------------
def forward_backward(loss, emb, labels):
    emb = emb.clone().requires_grad_(True)  # clone keeps the strides: a non-contiguous view stays one
    value = loss(emb, labels)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value), f"loss {value}"
    assert emb.grad is not None and emb.grad.shape == emb.shape and torch.isfinite(emb.grad).all()
    for pname, param in loss.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), f"gradient of {pname}"
    return value.detach(), emb.grad


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_empty_batch_is_zero_and_differentiable(name):
    loss = method_cases.build(name)
    emb, labels = VALUES["empty_batch"][1](loss.embedding_size)
    value, grad = forward_backward(loss, emb, labels)
    assert float(value) == 0.0 and grad.shape == (0, loss.embedding_size)
    anchors = loss.anchors
    assert anchors.grad is None or not anchors.grad.any()


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_one_class_batch(name):
    loss = method_cases.build(name)
    forward_backward(loss, *VALUES["one_class"][1](loss.embedding_size))


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_one_sample(name):
    loss = method_cases.build(name)
    forward_backward(loss, *VALUES["one_sample"][1](loss.embedding_size))


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_non_contiguous_embeddings_equal_contiguous(name):
    loss = method_cases.build(name)
    emb, labels = VALUES["non_contiguous"][1](loss.embedding_size)
    assert not emb.is_contiguous()
    assert not emb.clone().is_contiguous()
    value, grad = forward_backward(loss, emb, labels)
    value_c, grad_c = forward_backward(loss, emb.contiguous(), labels)
    torch.testing.assert_close(value, value_c, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, grad_c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_zero_embeddings(name):
    loss = method_cases.build(name)
    forward_backward(loss, *VALUES["zero_embeddings"][1](loss.embedding_size))


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_narrow_integer_labels_equal_int64(name):
    loss = method_cases.build(name)
    emb, labels = VALUES["int32_labels"][1](loss.embedding_size)
    expected = loss(emb, labels.long())
    assert torch.equal(loss(emb, labels), expected)
    assert torch.equal(loss(emb, labels.to(torch.uint8)), expected)


# -- properties -------------------------------------------------------------------------------------
@st.composite
def batches(draw, width):
    n = draw(st.integers(1, 12))
    scale = draw(st.sampled_from([0.01, 1.0, 10.0]))
    values = draw(st.lists(st.floats(-1, 1, allow_nan=False, width=64), min_size=n * width, max_size=n * width))
    labels = draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n))
    perm = draw(st.permutations(range(n)))
    emb = torch.tensor(np.asarray(values, dtype=np.float64).reshape(n, width) * scale)
    return emb, torch.tensor(labels, dtype=torch.long), torch.tensor(perm, dtype=torch.long)


@pytest.mark.parametrize("name", METHODS, ids=IDS)
def test_random_valid_batches_are_finite_and_order_invariant(name):
    loss = method_cases.build(name).double()
    learnable = isinstance(loss.anchors, torch.nn.Parameter)

    def run(emb, labels):
        loss.zero_grad(set_to_none=True)
        emb = emb.clone().requires_grad_(True)
        value = loss(emb, labels)
        value.backward()
        assert torch.isfinite(value), f"loss {value}"
        assert torch.isfinite(emb.grad).all()
        anchor_grad = loss.anchors.grad.clone() if learnable else None
        assert anchor_grad is None or torch.isfinite(anchor_grad).all()
        return value.detach(), emb.grad, anchor_grad

    @settings(max_examples=25, deadline=None, derandomize=True, database=None)
    @given(batches(loss.embedding_size))
    def check(batch):
        emb, labels, perm = batch
        value, grad, anchor_grad = run(emb, labels)
        p_value, p_grad, p_anchor_grad = run(emb[perm], labels[perm])
        torch.testing.assert_close(p_value, value, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(p_grad, grad[perm], rtol=1e-5, atol=1e-9)
        if learnable:
            torch.testing.assert_close(p_anchor_grad, anchor_grad, rtol=1e-5, atol=1e-9)

    check()


def test_every_builtin_method_is_covered():
    assert method_cases.BUILTIN_METHODS <= set(IDS)


# -- the table of docs/bad_input.md --------------------------------------------------------------------
def markdown_table() -> str:
    """The bad-input table: one row per case and distinct outcome, naming the (built-in) methods that get it."""
    methods = method_cases.builtin_method_names()
    rows = ["| input | what is passed | outcome | methods |", "| --- | --- | --- | --- |"]
    for case, (what, inputs, _error, _message) in ERRORS.items():
        groups: dict[tuple[str, str], list[str]] = {}
        for name in methods:
            groups.setdefault(outcome(name, inputs), []).append(method_cases.method_id(name))
        for (kind, text), names in groups.items():
            rows.append(f"| `{case}` | {what} | {kind}: `{text}` | {', '.join(names)} |")
    for case, (what, _inputs, described) in VALUES.items():
        rows.append(f"| `{case}` | {what} | value: {described} | all |")
    return "\n".join(rows)


def example_values() -> str:
    """The values of the cases with a defined value, per built-in method (K = 4, seed 0; not checked by tests)."""
    methods = method_cases.builtin_method_names()
    rows = [
        "| input | " + " | ".join(method_cases.method_id(n) for n in methods) + " |",
        "| --- |" + " --- |" * len(methods),
    ]
    for case, (_what, inputs, _described) in VALUES.items():
        cells = [outcome(name, inputs)[1] for name in methods]
        rows.append(f"| `{case}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def test_docs_table_is_current():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "bad_input.md").read_text()
    missing = [row for row in markdown_table().splitlines()[2:] if row not in doc]
    assert not missing, (
        "docs/bad_input.md is out of date (python tests/test_bad_input.py prints the table):\n" + "\n".join(missing)
    )


if __name__ == "__main__":
    print(markdown_table())
    print()
    print(example_values())
