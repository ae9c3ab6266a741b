#!/usr/bin/env bash
# The GPU checks of issue 21, for a session that is lent a GPU, in two parts of under 10 minutes each (one device
# call each; the device's per-call limit is 600 s):
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh tests   # stages 1-2, at most 220 s (about 2-4 minutes)
#   OUT=/path/to/results bash benchmarks/gpu_check.sh bench   # stages 3-7, at most 565 s (about 5-7 minutes)
#   OUT=/path/to/results bash benchmarks/gpu_check.sh         # all: only where one call may take 12 minutes
#
# 1. pytest -m cuda tests/test_fullgraph.py: a small-CNN training step of every method under
#    torch.cuda.set_sync_debug_mode("error") (zero host syncs), a reduce-overhead (CUDA-graph) step, and CAM with
#    8192 anchors (its neighbour list refreshed between steps), eager and in CUDA graphs;
# 2. pytest -m cuda on the rest of the suite (tests/test_cuda.py, ...);
# 3. launch_count.py --device cuda: kernels and host reads per loss step on the GPU's code path;
# 4. loss_speed.py --device cuda: B = 256, d = 128, C in {1k, 10k, 100k}, every method, its PML counterpart and
#    the floors, eager;
# 4b. the same at C in {1k, 10k} for c_ncm, reponet, fsc with --lse-path kernel: their hand-written log-sum-exp
#    kernel where the default runs torch's own operations (B x C up to NATIVE_MAX_ENTRIES["accelerator"]), and
#    at C = 100k with --lse-path torch (where the default runs the kernel), to check that limit against stage 4;
# 5. loss_speed.py --device cuda --compile reduce-overhead at C = 10k: each method as one compiled graph replayed
#    as a CUDA graph (the compile is the untimed first call);
# 6-7. train_step.py --device cuda --whole reduce-overhead at C = 10, then C = 10k: the small-CNN step, eager and
#    with trunk + embedder + loss as one compiled graph (the loss's share of the step); at C = 10k CAM runs on its
#    neighbour list, refreshed between steps as its trainer hooks do. The cold compiles dominate (about 150 s on
#    the CPU for both), hence two stages: one that runs out of time does not lose the other's table.
#
# Every stage has its own time limit (so the whole run ends in time even if one hangs) and writes its output to
# $OUT/<stage>.txt (and .json for the benchmarks); $OUT/summary.txt lists each stage's exit status and seconds.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
OUT="${OUT:-$ROOT/runs/gpu_check}"
PART="${1:-all}"
case "$PART" in
    tests | bench | all) ;;
    *)
        echo "usage: bash benchmarks/gpu_check.sh [tests|bench|all]" >&2
        exit 2
        ;;
esac
mkdir -p "$OUT"
cd "$ROOT" || exit 1
touch "$OUT/summary.txt"

# stage NAME LIMIT_SECONDS CMD...: run CMD under a time limit (SIGINT first, so pytest still prints its summary)
stage() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/summary.txt"
    timeout -s INT -k 15 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "   rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/summary.txt"
    tail -n 5 "$OUT/$name.txt"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

if [[ "$PART" != bench ]]; then
    stage pytest_fullgraph 90 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests/test_fullgraph.py
    stage pytest_cuda 130 "$PY" -m pytest -m cuda -q -p no:cacheprovider --ignore=tests/test_fullgraph.py tests plugins
fi
if [[ "$PART" != tests ]]; then
    stage launch_count 30 "$PY" benchmarks/launch_count.py --device cuda --sizes 128x1000
    stage loss_speed 70 "$PY" benchmarks/loss_speed.py --device cuda --sizes 128x1000,128x10000,128x100000 \
        --repeats 15 --json "$OUT/loss_speed.json"
    stage loss_speed_kernel 40 "$PY" benchmarks/loss_speed.py --device cuda --sizes 128x1000,128x10000 --no-memory \
        --methods c_ncm,reponet,fsc --lse-path kernel --repeats 15 --json "$OUT/loss_speed_kernel.json"
    stage loss_speed_torch 25 "$PY" benchmarks/loss_speed.py --device cuda --sizes 128x100000 \
        --methods c_ncm,reponet,fsc --lse-path torch --repeats 15 --json "$OUT/loss_speed_torch.json"
    stage loss_speed_compiled 100 "$PY" benchmarks/loss_speed.py --device cuda --sizes 128x10000 --no-memory \
        --compile reduce-overhead --repeats 15 --json "$OUT/loss_speed_compiled.json"
    stage train_step 140 "$PY" benchmarks/train_step.py --device cuda --whole reduce-overhead --classes 10 \
        --json "$OUT/train_step.json"
    stage train_step_10k 160 "$PY" benchmarks/train_step.py --device cuda --whole reduce-overhead --classes 10000 \
        --json "$OUT/train_step_10k.json"
fi
echo "done ($PART): $OUT" | tee -a "$OUT/summary.txt"
