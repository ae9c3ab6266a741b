"""ClassParallelLoss: anchors sharded over 2 and 4 gloo processes give exactly the single-process loss.

One spawn per world size runs every case inside the workers (a spawn costs seconds): every supported method, fixed
and learnable anchors, chunked kernels, uneven class blocks (7 rows over 2 and 4 processes, 8 for RePoNet's
orthoplex with a virtual row) and uneven batches (one rank empty). Each worker compares, in float64, the value,
its embeddings' gradient (divided by the world size, which it is multiplied by for DDP) and its anchor block's
gradient with the single-process loss on the concatenated batch, and checks the checkpoint helpers (the gathered
anchors equal the single-process set; a full state dict loads into a plain loss and, sharded, into a group of
another size). The tests below read the failures each worker recorded.
"""

from __future__ import annotations

import datetime
import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
from dist_worker import exit_saved, leave_process_group

import pml_anchors
from pml_anchors.losses.class_parallel import (
    ClassParallelLoss,
    block_bounds,
    check_class_parallel,
    load_loss_state_dict,
    loss_state_dict,
    shard_anchors,
    supports_class_parallel,
)

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

K, D = 7, 8
#: name -> (method, options); every supported method, fixed and learnable anchors, chunked kernels
CASES: dict[str, tuple[str, dict]] = {
    "e_ncm": ("e_ncm", {}),
    "e_ncm_squared_learnable": ("e_ncm", {"squared": True, "learnable": True}),
    "e_ncm_chunked_learnable": ("e_ncm", {"learnable": True, "chunk_size": 2}),
    "c_ncm": ("c_ncm", {}),
    "c_ncm_learnable_t": ("c_ncm", {"learnable": True, "temperature": 0.1}),
    "c_ncm_chunked": ("c_ncm", {"chunk_size": 2, "learnable": True}),
    "reponet": ("reponet", {}),
    "reponet_orthoplex_learnable": ("reponet", {"polytope": "orthoplex", "learnable": True}),
    "reponet_no_margin_chunked": ("reponet", {"margin": 0.0, "chunk_size": 3, "learnable": True}),
    "fsc": ("fsc", {"beta": 0.1}),
    "fsc_distance_learnable": ("fsc", {"beta": 0.1, "assign": "distance", "learnable": True}),
    "fsc_all_chunked": ("fsc", {"beta": 0.1, "assign": "all", "chunk_size": 5, "learnable": True}),
    "proxy_anchor": ("proxy_anchor", {}),
    "proxy_anchor_chunked": ("proxy_anchor", {"chunk_size": 2}),
    "proxy_anchor_dot": ("proxy_anchor", {"distance": "dot"}),
}
#: per-rank batch sizes of the 13-sample global batch (one rank empty at 4)
SPLITS = {2: [8, 5], 4: [5, 0, 3, 5]}


def build(method: str, options: dict):
    options = dict(options)
    if options.pop("distance", None) == "dot":
        from pytorch_metric_learning.distances import DotProductSimilarity

        options["distance"] = DotProductSimilarity(normalize_embeddings=False)
    return pml_anchors.get_loss(method, K, D, **options).double()


def problem():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(13, D, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 3, 6, 1, 0, 5, 3, 2, 6, 0, 1, 3])  # class 4 has no sample (|P+| < K)
    return x, y


def reference(method: str, options: dict):
    loss = build(method, options)
    x, y = problem()
    x.requires_grad_(True)
    value = loss(x, y)
    value.backward()
    grad = loss.anchors.grad
    return loss, value.detach(), x.grad, None if grad is None else grad.clone()


def close(a, b) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0, atol=1e-6))


def check_case(name: str, rank: int, world: int) -> list[str]:
    method, options = CASES[name]
    ref_loss, ref_value, ref_xgrad, ref_agrad = reference(method, options)
    x, y = problem()
    cuts = [0]
    for n in SPLITS[world]:
        cuts.append(cuts[-1] + n)
    lo, hi = cuts[rank], cuts[rank + 1]
    loss = ClassParallelLoss(build(method, options))
    start, stop = loss.start, loss.stop
    fails = []
    if not torch.equal(loss.anchors.detach(), ref_loss.anchors.detach()[start:stop]):
        fails.append(f"{name}: the block is not rows [{start}, {stop}) of the full anchors")
    local = x[lo:hi].clone().requires_grad_(True)
    value = loss(local, y[lo:hi])
    value.backward()
    if not close(value.detach(), ref_value):
        fails.append(f"{name}: value {value.item()!r} != {ref_value.item()!r}")
    if not close(local.grad / world, ref_xgrad[lo:hi]):
        err = (local.grad / world - ref_xgrad[lo:hi]).abs().max().item()
        fails.append(f"{name}: embeddings' gradient differs by {err:.3g}")
    if ref_agrad is not None:
        got = loss.anchors.grad
        if got is None or not close(got, ref_agrad[start:stop]):
            fails.append(f"{name}: anchor gradient of rows [{start}, {stop}) differs")
    # checkpoints: the gathered set is the single-process one; it loads into a plain loss and back into the shards
    state = loss_state_dict(loss)
    if not torch.equal(state["anchors"], ref_loss.anchors.detach()):
        fails.append(f"{name}: full_state_dict's anchors differ from the single-process set")
    plain = build(method, options)
    plain.load_state_dict(state)
    if not torch.equal(plain.anchors, ref_loss.anchors.detach()):
        fails.append(f"{name}: a plain loss did not load full_state_dict")
    with torch.no_grad():
        loss.anchors.mul_(0)
    load_loss_state_dict(loss, state)
    if not torch.equal(loss.anchors.detach(), ref_loss.anchors.detach()[start:stop]):
        fails.append(f"{name}: load_full_state_dict did not restore this block")
    if ref_agrad is not None:  # one Adam step per block (local optimiser state) = one step on the full set
        torch.optim.Adam(ref_loss.parameters(), lr=0.1).step()
        torch.optim.Adam(loss.parameters(), lr=0.1).step()
        if not close(loss_state_dict(loss)["anchors"], ref_loss.anchors.detach()):
            fails.append(f"{name}: the anchors after an optimiser step differ from one process's")
    return fails


def check_ddp(rank: int, world: int) -> list[str]:
    """The model in DDP: its gradient equals one process's (the embeddings' world-size factor cancels DDP's mean)."""
    x, y = problem()
    torch.manual_seed(0)
    model = torch.nn.Linear(D, D).double()
    ref = build("c_ncm", {"learnable": True})
    ref(model(x), y).backward()
    expected = model.weight.grad.clone()
    model.weight.grad = None
    model.bias.grad = None
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    cuts = [0]
    for n in SPLITS[world]:
        cuts.append(cuts[-1] + n)
    lo, hi = cuts[rank], cuts[rank + 1]
    loss = ClassParallelLoss(build("c_ncm", {"learnable": True}))
    loss(ddp(x[lo:hi]), y[lo:hi]).backward()
    return [] if close(model.weight.grad, expected) else ["ddp: the model's gradient differs from one process's"]


def check_other_world(rank: int, world: int) -> list[str]:
    """A full state dict written at ``world`` loads into a class-parallel loss on a group of the last 2 processes
    (resume elsewhere), which gathers it back, to one rank (``dst``) or to both."""
    fails = []
    loss = ClassParallelLoss(build("proxy_anchor", {}))
    state = loss.full_state_dict()
    to_last = loss.full_state_dict(dst=world - 1)
    if (to_last is None) != (rank != world - 1) or (
        to_last is not None and not torch.equal(to_last["anchors"], state["anchors"])
    ):
        fails.append("full_state_dict(dst): not the full set on dst only")
    members = [world - 2, world - 1]
    sub = dist.new_group(members)  # every rank takes part in creating it
    if rank in members:
        other = ClassParallelLoss(build("proxy_anchor", {"seed": 9}), group=sub)
        load_loss_state_dict(other, state)
        a, b = block_bounds(K, 2)[members.index(rank)]
        if not torch.equal(other.anchors.detach(), state["anchors"][a:b]) or other.world_size != 2:
            fails.append("another world size: the block loaded is not the matching rows")
        back = other.full_state_dict()
        first = loss_state_dict(other, dst=0)  # group rank 0, global rank world - 2
        if not torch.equal(back["anchors"], state["anchors"]):
            fails.append("another world size: gathered back, the anchors differ")
        if (first is None) != (rank != world - 2):
            fails.append("another world size: dst=0 of the group is not its first member")
    return fails


def check_autocast(rank: int, world: int) -> list[str]:
    """Under bfloat16 autocast (the GEMMs in 16 bits, the target terms from row-wise products in float32): the same
    value as one process under the same autocast (measured equal; the tolerance allows float32 summation order)."""
    fails = []
    cuts = [0]
    for n in SPLITS[world]:
        cuts.append(cuts[-1] + n)
    lo, hi = cuts[rank], cuts[rank + 1]
    for method, options in (("reponet", {}), ("proxy_anchor", {}), ("e_ncm", {}), ("fsc", {"beta": 0.1})):
        x, y = problem()
        x = x.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = build(method, options).float()(x, y).detach()
            got = ClassParallelLoss(build(method, options).float())(x[lo:hi], y[lo:hi]).detach()
        if not torch.allclose(got, expected, rtol=1e-5, atol=1e-5):
            fails.append(f"autocast {method}: {got.item()!r} vs one process {expected.item()!r}")
    return fails


def check_refusals(rank: int, world: int) -> list[str]:
    fails = []
    attempts = {
        "cam": lambda: ClassParallelLoss(pml_anchors.get_loss("cam", K, D)),
        "indices_tuple": lambda: ClassParallelLoss(build("c_ncm", {}))(
            torch.randn(2, D, dtype=torch.float64), torch.tensor([0, 1]), indices_tuple=(torch.tensor([0]),) * 3
        ),
        "weight_regularizer": lambda: ClassParallelLoss(
            pml_anchors.get_loss("proxy_anchor", K, D, weight_regularizer=_regularizer())
        ),
        "too many processes": lambda: ClassParallelLoss(pml_anchors.get_loss("c_ncm", 1, D)),
        # one process's bad batch: it raises its own error, the others one naming it (not a hang in a collective)
        "bad labels on process 0": lambda: ClassParallelLoss(build("c_ncm", {}))(
            torch.randn(2, D, dtype=torch.float64), torch.tensor([0, K if rank == 0 else 1])
        ),
    }
    for what, attempt in attempts.items():
        try:
            attempt()
        except ValueError:
            continue
        except Exception as error:  # noqa: BLE001 - recorded as a failure of the test
            fails.append(f"{what}: {type(error).__name__} instead of ValueError: {error}")
        else:
            fails.append(f"{what}: no error")
    return fails


def _regularizer():
    from pytorch_metric_learning.regularizers import LpRegularizer

    return LpRegularizer()


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    results: dict[str, list[str]] = {}
    try:
        checks = {name: (lambda n=name: check_case(n, rank, world)) for name in CASES}
        checks.update(
            ddp=lambda: check_ddp(rank, world),
            other_world=lambda: check_other_world(rank, world),
            autocast=lambda: check_autocast(rank, world),
            refusals=lambda: check_refusals(rank, world),
        )
        for key, check in checks.items():
            try:
                results[key] = check()
            except Exception:  # noqa: BLE001 - reported by the test of that case; the others still run
                results[key] = [traceback.format_exc()]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        checks = {}  # the DDP models and subgroups the checks made
        leave_process_group()
    exit_saved()


@pytest.fixture(scope="module", params=[2, 4], ids=["2proc", "4proc"])
def failures(request, tmp_path_factory):
    import torch.multiprocessing as mp

    world = request.param
    out = tmp_path_factory.mktemp(f"cp{world}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # by its top-level name (``tests`` is on pytest's pythonpath): importlib mode names this module otherwise
    import test_class_parallel

    mp.spawn(test_class_parallel.worker, args=(world, port, str(out)), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(world)]


@pytest.mark.parametrize("key", [*CASES, "ddp", "other_world", "autocast", "refusals"])
def test_class_parallel_equals_one_process(failures, key):
    for rank, got in enumerate(failures):
        assert got[key] == [], f"rank {rank}/{len(failures)}: " + "\n".join(got[key])


def test_every_supported_builtin_method_is_covered():
    covered = {method for method, _ in CASES.values()}
    supported = {s.name for s in pml_anchors.list_methods() if supports_class_parallel(s.resolve_loss())}
    assert supported == covered == {"e_ncm", "c_ncm", "reponet", "fsc", "proxy_anchor"}


def test_block_bounds_are_contiguous_and_uneven():
    assert block_bounds(7, 4) == [(0, 2), (2, 4), (4, 6), (6, 7)]
    assert block_bounds(8, 2) == [(0, 4), (4, 8)]
    with pytest.raises(ValueError, match="at least one anchor row per process"):
        block_bounds(3, 4)
    full = torch.randn(7, 3)
    assert torch.equal(torch.cat([shard_anchors(full, r, 3) for r in range(3)]), full)


def test_bad_use_is_a_clear_error():
    with pytest.raises(ValueError, match="initialised torch.distributed process group"):
        ClassParallelLoss(pml_anchors.get_loss("c_ncm", K, D))
    with pytest.raises(TypeError, match="wraps a pml_anchors AnchorLoss"):
        ClassParallelLoss(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not supported by 'cam'"):
        check_class_parallel("cam", 2)
    with pytest.raises(ValueError, match="world size > 1"):
        check_class_parallel("c_ncm", 1)
    check_class_parallel("proxy_anchor", 2)


def test_train_config_and_command_line_option():
    from pml_anchors.app.config import TrainConfig
    from pml_anchors.cli.main import build_parser

    assert TrainConfig(method="c_ncm", class_parallel=True).class_parallel is True
    assert TrainConfig(method="c_ncm").class_parallel is False
    with pytest.raises(ValueError, match="not supported by 'cam'"):
        TrainConfig(method="cam", class_parallel=True)
    with pytest.raises(ValueError, match="is a PML baseline"):
        TrainConfig(method="baseline:normalized_softmax", class_parallel=True)
    with pytest.raises(TypeError, match="class_parallel"):
        TrainConfig(method="c_ncm", class_parallel="yes")
    args = build_parser().parse_args(["train", "--method", "c_ncm", "--nproc", "2", "--class-parallel"])
    assert args.class_parallel is True
    assert build_parser().parse_args(["train", "--method", "c_ncm"]).class_parallel is None
