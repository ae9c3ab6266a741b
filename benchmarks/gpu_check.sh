#!/usr/bin/env bash
# The GPU checks of issue 21 in one short run (about 8 minutes on one H100), for a session that is lent a GPU:
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh        # default OUT: ./runs/gpu_check (git-ignored)
#
# 1. pytest -m cuda tests/test_fullgraph.py: a small-CNN training step of every method under
#    torch.cuda.set_sync_debug_mode("error") (zero host syncs), and a reduce-overhead (CUDA-graph) step;
# 2. pytest -m cuda on the rest of the suite (tests/test_cuda.py, ...);
# 3. loss_speed.py --device cuda: B = 256, d = 128, C in {1k, 10k, 100k}, every method, its PML counterpart and
#    the floors, eager;
# 4. loss_speed.py --device cuda --compile reduce-overhead at C = 10k: each method as one compiled graph replayed
#    as a CUDA graph (the compile is the untimed first call);
# 5. train_step.py --device cuda --whole reduce-overhead --classes 10,10000: the small-CNN step, eager and with
#    trunk + embedder + loss as one compiled graph (the loss's share of the step); C = 10k runs CAM on its
#    neighbour list, refreshed between steps as its trainer hooks do.
#
# Every stage has its own time limit (so the whole run ends in time even if one hangs) and writes its output to
# $OUT/<stage>.txt (and .json for the benchmarks); $OUT/summary.txt lists each stage's exit status and seconds.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
OUT="${OUT:-$ROOT/runs/gpu_check}"
mkdir -p "$OUT"
cd "$ROOT" || exit 1
: > "$OUT/summary.txt"

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

stage pytest_fullgraph 90 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests/test_fullgraph.py
stage pytest_cuda 130 "$PY" -m pytest -m cuda -q -p no:cacheprovider --ignore=tests/test_fullgraph.py tests plugins
stage loss_speed 70 "$PY" benchmarks/loss_speed.py --device cuda --sizes 128x1000,128x10000,128x100000 \
    --repeats 15 --json "$OUT/loss_speed.json"
stage loss_speed_compiled 100 "$PY" benchmarks/loss_speed.py --device cuda --sizes 128x10000 --no-memory \
    --compile reduce-overhead --repeats 15 --json "$OUT/loss_speed_compiled.json"
stage train_step 170 "$PY" benchmarks/train_step.py --device cuda --whole reduce-overhead --classes 10,10000 \
    --json "$OUT/train_step.json"
echo "done: $OUT" | tee -a "$OUT/summary.txt"
