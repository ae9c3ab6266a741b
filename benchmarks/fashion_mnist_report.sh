#!/usr/bin/env bash
# Reproduce the Fashion-MNIST tables of docs/results.md: every method and every PML baseline under one budget (the
# MNIST recipe: small_cnn, d = 128, 3 epochs, Adam 1e-3, batch 64, one CPU thread each), same-class and open-set
# (train on classes 0-4, test on the unseen 5-9), at seeds $SEEDS, then mean ± std over the seeds.
#
#   bash benchmarks/fashion_mnist_report.sh                 # all runs, $JOBS at a time, then the tables
#   FMNIST_IDX=/path/to/idx SEEDS="0 1 2 3 4" JOBS=4 bash benchmarks/fashion_mnist_report.sh
#   python benchmarks/seed_table.py runs/fashion_mnist/open_set_s*     # one protocol's table again
#
# FMNIST_IDX is a folder of the four Fashion-MNIST IDX files (gzipped or not) or a torchvision root holding
# FashionMNIST/raw/; `pml-anchors ... --dataset fashion_mnist --data-root DIR --download` fetches them instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PML="${PML:-$ROOT/.venv/bin/pml-anchors}"
PY="${PY:-$ROOT/.venv/bin/python}"
FMNIST_IDX="${FMNIST_IDX:-$ROOT/../shared/data/fashion-mnist}"
OUT="${OUT:-$ROOT/runs/fashion_mnist}"    # runs/ is git-ignored
SEEDS="${SEEDS:-0 1 2}"
JOBS="${JOBS:-2}"
mkdir -p "$OUT"

# one bench run per line: "<protocol> <seed>", the longest (same_class trains on twice the images) first
runs() {
  for p in same_class open_set; do
    for s in $SEEDS; do echo "$p $s"; done
  done
}

bench_one() {  # bench_one PROTOCOL SEED: log, wall seconds and the command next to the run's folder
  local name="$1_s$2" t0=$SECONDS
  local cmd=("$PML" bench --dataset fashion_mnist --data-root "$FMNIST_IDX" --protocol "$1" --seed "$2"
    --methods all --baselines all --epochs 3 --embedding-size 128 --threads 1 --no-progress --no-plots
    --output "$OUT/$name")
  printf '%q ' "${cmd[@]}" >"$OUT/$name.cmd"
  "${cmd[@]}" >"$OUT/$name.log" 2>&1 || echo "(exit $?)" >>"$OUT/$name.log"
  echo $((SECONDS - t0)) >"$OUT/$name.seconds"
  echo "$name: $(tail -n 1 "$OUT/$name.log") ($((SECONDS - t0)) s)"
}
export -f bench_one
export PML FMNIST_IDX OUT

runs | xargs -P "$JOBS" -L 1 bash -c 'bench_one "$0" "$1"'
for p in same_class open_set; do
  echo "## $p"
  "$PY" "$ROOT/benchmarks/seed_table.py" "$OUT/${p}_s"*/
done
