"""The CAM repeller's pair search at large K: exact (same pairs, same L_R value and gradient as all pairs), bounded
in memory, refused with the option that fits where it cannot finish."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from pml_anchors_cam import repeller
from pml_anchors_cam.repeller import NeighborList, close_pairs, repeller_on_pairs

import pml_anchors

F64 = torch.float64
TILES = {"tile_rows": 64, "tile_cols": 128}  # many tiles at small K


def brute_pairs(points, reach, rows=None):
    """Every pair i < j closer than ``reach`` (float64 differences), as a set; with ``rows``, those touching them."""
    x = points.to(F64)
    i, j = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    keep = (x[i] - x[j]).norm(dim=1) < reach
    found = set(zip(i[keep].tolist(), j[keep].tolist()))
    if rows is not None:
        rows = set(rows.tolist())
        found = {p for p in found if p[0] in rows or p[1] in rows}
    return found


def as_set(pairs):
    listed = list(zip(pairs[0].tolist(), pairs[1].tolist()))
    assert all(i < j for i, j in listed)
    return set(listed)


def all_pairs_repeller(anchors, margin):
    """L_R of eq. 2 over every unordered pair, from differences (the reference)."""
    i, j = torch.triu_indices(anchors.shape[0], anchors.shape[0], offset=1)
    d = (anchors[i] - anchors[j]).square().sum(dim=1).clamp_min(torch.finfo(anchors.dtype).tiny).sqrt()
    return (2 * margin - d).clamp_min(0).square().sum()


def anchors_with_close_pairs(k, d, scale, dtype=torch.float32, seed=0):
    """Standard normal rows times ``scale``, with nearly coincident and coincident pairs far from the centre."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, d, generator=g, dtype=F64) * scale
    if k > 9:
        x[3] = 4 * x[3] + 10  # far from the centre: the Gram form cancels there
        x[7] = x[3] + 1e-4  # nearly coincident
        x[k - 1] = x[3]  # coincident
        x[8] = x[2] + 2 * torch.nn.functional.normalize(torch.randn(d, generator=g, dtype=F64), dim=0)
    return x.to(dtype)


# -- the search is exact -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k,d,scale,dtype",
    [
        (1, 3, 1.0, torch.float32),
        (2, 3, 1.0, torch.float32),
        (63, 3, 1.0, torch.float32),  # one row tile short of a boundary
        (64, 5, 1.0, torch.float32),  # exactly one tile
        (65, 5, 1.0, torch.float64),  # one row past it
        (129, 8, 1.5, torch.float32),  # column tiles: one row past two
        (700, 2, 20.0, torch.float32),  # low d, spread: the projection prunes most column tiles
        (400, 16, 0.8, torch.float64),  # dense: nearly every pair within the reach
        (600, 128, 1.0, torch.float32),  # CAM's default init: almost no pair closer than 2m + skin
    ],
)
def test_close_pairs_equal_brute_force(k, d, scale, dtype):
    points = anchors_with_close_pairs(k, d, scale, dtype)
    for reach in (2.0, 6.0):
        expected = brute_pairs(points, reach)
        assert as_set(close_pairs(points, reach, **TILES)) == expected
        assert as_set(close_pairs(points, reach)) == expected  # default tiles: one tile
        found = close_pairs(points, reach, **TILES)
        assert found.shape[1] == len(expected)  # each pair once
    rows = torch.tensor(sorted({0, 2, 3, k // 2, k - 1} & set(range(k))))
    some = close_pairs(points, 6.0, rows, **TILES)
    assert as_set(some) == brute_pairs(points, 6.0, rows)  # (duplicates allowed: a set)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_every_filter_dtype_keeps_pairs_at_the_reach(dtype, monkeypatch):
    """Pairs a relative 1e-6 inside the reach are found and 1e-6 outside are not, whatever dtype the products run
    in: the filter's rounding allowance is an a priori bound, the decision a float64 difference."""
    monkeypatch.setattr(repeller, "_filter_dtypes", lambda *args: [dtype])
    g = torch.Generator().manual_seed(1)
    reach = 6.0
    base = torch.randn(300, 32, generator=g, dtype=F64) * 4
    unit = torch.nn.functional.normalize(torch.randn(300, 32, generator=g, dtype=F64), dim=1)
    inside = base + unit * reach * (1 - 1e-6)
    outside = base + unit * reach * (1 + 1e-6)
    points = torch.cat([base, inside, outside]).to(torch.float64)
    expected = brute_pairs(points, reach)
    assert {(i, i + 300) for i in range(300)} <= expected
    assert not {(i, i + 600) for i in range(300)} & expected
    assert as_set(close_pairs(points, reach, **TILES)) == expected


def test_a_coarse_filter_is_redone_finer(monkeypatch):
    """A filter that lets through more false candidates than allowed is redone in the next dtype: still exact."""
    monkeypatch.setattr(repeller, "MAX_REJECTED_PER_ROW", 0)
    tried = []
    original = repeller._TileSearch.__init__

    def spy(self, *args):
        tried.append(args[5])
        original(self, *args)

    monkeypatch.setattr(repeller._TileSearch, "__init__", spy)
    monkeypatch.setattr(repeller, "_filter_dtypes", lambda *args: [torch.bfloat16, torch.float64])
    g = torch.Generator().manual_seed(2)
    # ~1.3M pairs just beyond the reach at norm ~100: far more false bfloat16 candidates than 2^20
    points = torch.randn(2000, 3, generator=g, dtype=F64) * 0.5 + 100
    expected = brute_pairs(points, 0.8)
    assert as_set(close_pairs(points, 0.8, **TILES)) == expected
    assert tried == [torch.bfloat16, torch.float64]


def test_limit_stops_the_search():
    points = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))  # nearly every pair is close
    assert close_pairs(points, 6.0, limit=1000, **TILES) is None
    assert close_pairs(points, 6.0, torch.tensor([0, 1]), limit=10, **TILES) is None
    assert close_pairs(points, 6.0, limit=500 * 499 // 2, **TILES).shape[1] == len(brute_pairs(points, 6.0))


def test_rows_with_nan_or_inf_pair_with_nothing_and_spoil_nothing():
    points = anchors_with_close_pairs(400, 4, 2.0)
    points[5, 1] = float("nan")
    points[100, 2] = float("inf")
    points[200, 0] = -float("inf")
    finite = torch.isfinite(points).all(dim=1)
    expected = {p for p in brute_pairs(points.nan_to_num(0.0, 1e30, -1e30), 3.0) if finite[p[0]] and finite[p[1]]}
    assert as_set(close_pairs(points, 3.0, **TILES)) == expected
    rows = torch.tensor([5, 100, 9])
    assert as_set(close_pairs(points, 3.0, rows, **TILES)) == {p for p in expected if 9 in p}


# -- the same L_R, value and gradient -----------------------------------------------------------------------------


@pytest.mark.parametrize("k,d,scale", [(65, 3, 1.0), (257, 8, 1.2), (600, 128, 0.25)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_repeller_on_searched_pairs_equals_all_pairs(k, d, scale, dtype):
    margin = 2.0
    anchors = anchors_with_close_pairs(k, d, scale, dtype).requires_grad_(True)
    pairs = close_pairs(anchors.detach(), 2 * margin, **TILES)
    ours = repeller_on_pairs(anchors, pairs, margin)
    reference = all_pairs_repeller(anchors, margin)
    assert reference.item() > 0
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == F64 else {"rtol": 1e-5, "atol": 1e-4}
    torch.testing.assert_close(ours, reference, **tol)
    (g_ours,) = torch.autograd.grad(ours, anchors)
    (g_ref,) = torch.autograd.grad(reference, anchors)
    torch.testing.assert_close(g_ours, g_ref, **tol)


def reference_loss(anchors, x, y, margin=2.0, min_norm=1.0):
    """Eq. 1-4 with every pair, from differences (batch mean of L_A)."""
    attractor = 0.5 * (x - anchors[y]).square().sum(dim=1).mean()
    norms = anchors.square().sum(dim=1).clamp_min(torch.finfo(anchors.dtype).tiny).sqrt()
    return attractor + all_pairs_repeller(anchors, margin) + 0.5 * (min_norm - norms).clamp_min(0).square().sum()


def test_loss_with_small_tiles_stays_exact_while_adam_moves_the_anchors(monkeypatch):
    """The neighbour list (full builds and partial re-searches over many tiles) gives the loss and gradient of
    every pair at every step."""
    monkeypatch.setattr(repeller, "TILE_ROWS", 64)
    monkeypatch.setattr(repeller, "TILE_COLS", 128)
    k, d = 400, 6
    anchors = anchors_with_close_pairs(k, d, 3.0, F64)
    loss = pml_anchors.get_loss("cam", k, d, anchors=anchors, neighbor_list=True, neighbor_skin=0.2).double()
    optimizer = torch.optim.Adam(loss.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        x, y = torch.randn(32, d, generator=g, dtype=F64), torch.randint(0, k, (32,), generator=g)
        value = loss(x, y)
        reference_anchors = loss.anchors.detach().clone().requires_grad_(True)
        reference = reference_loss(reference_anchors, x, y)
        torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-10)
        optimizer.zero_grad()
        value.backward()
        (expected,) = torch.autograd.grad(reference, reference_anchors)
        torch.testing.assert_close(loss.anchors.grad, expected, rtol=1e-10, atol=1e-10)
        optimizer.step()
    stats = loss._neighbors.stats
    assert stats["rebuilds"] >= 1 and stats["partial"] >= 1, stats


# -- bounded memory --------------------------------------------------------------------------------------------------

MEMORY_PROBE = textwrap.dedent(
    """
    import json, torch
    from pml_anchors_cam.repeller import NeighborList

    def mb(field):
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) / 1024 for line in fh if line.startswith(field + ":"))

    torch.set_num_threads(2)
    anchors = torch.randn(50_000, 128, generator=torch.Generator().manual_seed(0))
    neighbors = NeighborList(2.0, 2.0)
    neighbors.pairs(anchors[:300])  # warm up torch's kernels
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the high-water mark
    except OSError:
        pass
    base = mb("VmRSS")
    pairs = neighbors.pairs(anchors)
    print(json.dumps({"extra_mb": mb("VmHWM") - base, "pairs": pairs.shape[1]}))
    """
)


def test_the_full_search_at_50k_anchors_adds_bounded_memory():
    """K = 50k, d = 128: one K x K matrix would take 10 GB in float32; the build adds its snapshot (K x d, 25 MB),
    the filter's copy (K x (d + 2) bfloat16, 13 MB) and fixed tiles (< 40 MB), well under 250 MB."""
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["pairs"] == 0  # standard normal anchors in 128-d: ~16 apart, none within 2m + skin = 6
    assert result["extra_mb"] < 250, result


# -- refusal where it cannot finish --------------------------------------------------------------------------------


def test_refused_at_construction_with_the_option_that_fits(monkeypatch):
    monkeypatch.setattr(repeller, "MAX_SEARCH_MACS", 1e6)
    with pytest.raises(ValueError, match=r"K=1000 anchors \(d=16\).*8\.99e\+06 multiply-adds.*batch_classes_only=True"):
        pml_anchors.get_loss("cam", 1000, 16)
    pml_anchors.get_loss("cam", 1000, 16, batch_classes_only=True)  # fits
    pml_anchors.get_loss("cam", 1000, 16, margin=0)  # no repeller
    monkeypatch.setattr(repeller, "MAX_STEP_MACS", 1e6)
    with pytest.raises(ValueError, match=r"neighbor_list=False.*every anchor pair at every step.*batch_classes_only"):
        pml_anchors.get_loss("cam", 1000, 16, neighbor_list=False)


def test_refused_when_too_many_pairs_make_every_step_dense(monkeypatch):
    k, d = 300, 4
    loss = pml_anchors.get_loss("cam", k, d, anchor_kwargs={"std": 0.1})  # collapsed anchors
    loss._neighbors = NeighborList(loss.margin, loss.margin, max_pairs=10)
    x, y = torch.randn(8, d), torch.arange(8)
    loss(x, y)  # few enough anchors: L_R over every pair
    assert loss._neighbors.list is None and loss._neighbors.stats["overflows"] == 1
    monkeypatch.setattr(repeller, "MAX_STEP_MACS", 1e6)
    with pytest.raises(
        ValueError, match=r"more than 10 anchor pairs lie closer than 2m \+ skin = 6.*batch_classes_only"
    ):
        loss(x, y)
