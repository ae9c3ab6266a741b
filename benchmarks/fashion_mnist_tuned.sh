#!/usr/bin/env bash
# The tuned comparison of docs/results.md (issue: a benchmark a researcher would trust): Fashion-MNIST open-set
# (train on classes 0-4, test on the unseen 5-9). Every method and PML baseline is tuned by `pml-anchors tune`
# (Optuna TPE, mean validation MAP@R over $FOLDS class-disjoint folds of the 5 training classes, $TRIALS trials of
# $EPOCHS epochs on $LIMIT training images), then trained with its best configuration at seeds $SEEDS and tested
# once per seed: mean ± 95 % CI and the paired t-test against each method's PML counterpart.
#
#   bash benchmarks/fashion_mnist_tuned.sh               # $JOBS studies at a time, then bench --tuned
#   TRIALS=30 EPOCHS=3 LIMIT= bash benchmarks/fashion_mnist_tuned.sh   # a larger budget (LIMIT empty: all images)
#   SELECT=1 EPOCHS=8 bash benchmarks/fashion_mnist_tuned.sh   # tune --select-epoch: each trial at its best epoch
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PML="${PML:-$ROOT/.venv/bin/pml-anchors}"
FMNIST_IDX="${FMNIST_IDX:-$ROOT/../shared/data/fashion-mnist}"
OUT="${OUT:-$ROOT/runs/fashion_mnist_tuned}"     # runs/ is git-ignored
TRIALS="${TRIALS:-10}"
FOLDS="${FOLDS:-2}"
EPOCHS="${EPOCHS:-2}"
LIMIT="${LIMIT-6000}"
SEEDS="${SEEDS:-0,1,2}"
JOBS="${JOBS:-2}"
SELECT="${SELECT:-}"                              # non-empty: tune --select-epoch (EPOCHS is then the budget)
METHODS="${METHODS:-cam c_ncm e_ncm fsc proxy_anchor reponet baseline:pml_contrastive baseline:pml_normalized_softmax
  baseline:cross_entropy baseline:pml_soft_triple baseline:pml_proxy_anchor baseline:pml_arcface}"
mkdir -p "$OUT/studies"
rm -rf "$OUT/bench"  # a previous bench --tuned (the studies are resumed, not redone)

tune_one() {  # tune_one METHOD: its study in $OUT/studies/<name>, log beside it; the same settings for every method
  local name=${1#baseline:}
  "$PML" tune --method "$1" --dataset fashion_mnist --data-root "$FMNIST_IDX" --protocol open_set --embedding-size 128 \
    --epochs "$EPOCHS" --threads 1 --no-progress ${LIMIT:+--limit "$LIMIT"} --trials "$TRIALS" --folds "$FOLDS" \
    ${SELECT:+--select-epoch} --output "$OUT/studies/$name" >"$OUT/studies/$name.log" 2>&1 ||
    echo "(exit $?)" >>"$OUT/studies/$name.log"
  echo "$name: $(tail -n 1 "$OUT/studies/$name.log")"
}
export -f tune_one
export PML FMNIST_IDX OUT TRIALS FOLDS EPOCHS LIMIT SELECT

t0=$SECONDS
for m in $METHODS; do echo "$m"; done | xargs -P "$JOBS" -I{} bash -c 'tune_one "$1"' _ {}
echo "tuning: $((SECONDS - t0)) s"
t1=$SECONDS
"$PML" bench --tuned "$OUT/studies" --seeds "$SEEDS" --threads 1 --no-progress \
  --output "$OUT/bench" >"$OUT/bench.log" 2>&1
echo "bench --tuned: $((SECONDS - t1)) s"
cat "$OUT/bench/results.md"
