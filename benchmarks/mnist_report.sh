#!/usr/bin/env bash
# Reproduce every number in docs/results.md (MNIST accuracy experiments; the stages, their settings and wall times
# are listed there).
#
#   bash benchmarks/mnist_report.sh [STAGE ...]      # default: all stages, in the order of STAGES below
#   MNIST_IDX=/path/to/idx OUT=runs/mnist bash benchmarks/mnist_report.sh same_class
#   python benchmarks/mnist_report.py runs/mnist       # print the markdown tables
#
# Every run uses --threads 1 (one core; the machine is shared) and seed 0 unless stated.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PML="${PML:-$ROOT/.venv/bin/pml-anchors}"
PY="${PY:-$ROOT/.venv/bin/python}"
MNIST_IDX="${MNIST_IDX:-/work/shared/data/mnist}"   # the four MNIST IDX files (.gz or raw)
DATA="${DATA:-/tmp/mnist-root}"                     # torchvision root built from them (never in the repo)
OUT="${OUT:-$ROOT/runs/mnist}"                      # runs/ is git-ignored
NCM_EPOCHS="${NCM_EPOCHS:-8}"
REPONET_EPOCHS="${REPONET_EPOCHS:-10}"
NCM_2D_EPOCHS="${NCM_2D_EPOCHS:-6}"
NCM_STEP_EPOCHS="${NCM_STEP_EPOCHS:-12}"            # stage ncm_paper_step: lr 0.1, / 10 after each milestone
NCM_STEP_MILESTONES="${NCM_STEP_MILESTONES:-6,9}"
SEEDS="${SEEDS:-1 2 3 4}"                           # extra seeds for stages seeds / seeds_ce (seed 0 is the rest)
# D128_SEEDS: the seeds of stage reponet_d128 (default: 0 and $SEEDS); LONG_SEEDS / LONG_EPOCHS: stage reponet_long
COMMON=(--dataset mnist --data-root "$DATA" --threads 1 --no-progress)

mkdir -p "$OUT"
"$PY" -c "from pml_anchors.app.data import prepare_mnist_root as p; p('$MNIST_IDX', '$DATA')"

# timed NAME CMD...: run CMD, log to $OUT/NAME.log, record the wall-clock seconds in $OUT/NAME.seconds
timed() {
  local name=$1
  shift
  local cmd
  cmd=$(printf '%q ' "$@")
  echo "== $name: $cmd" | tee "$OUT/$name.log"
  # the code version the run used: commit + hash of uncommitted changes to tracked files
  (cd "$ROOT" && echo "$(git rev-parse HEAD) dirty-diff-sha1=$(git diff HEAD | sha1sum | cut -c1-12)" \
    && git status --short --untracked-files=no) >"$OUT/$name.git" 2>/dev/null || true
  local t0=$SECONDS
  "$@" >>"$OUT/$name.log" 2>&1 || echo "(exit $?)" >>"$OUT/$name.log"
  echo $((SECONDS - t0)) >"$OUT/$name.seconds"
  echo "$cmd" >"$OUT/$name.cmd"
  grep -v -e Warning -e "summary = bench" "$OUT/$name.log" | tail -n 20
}

stage_same_class() {
  timed same_class "$PML" bench "${COMMON[@]}" --methods all --baselines all --epochs 3 --embedding-size 128 \
    --output "$OUT/same_class"
}

stage_reponet_d9() {
  timed reponet_d9 "$PML" bench "${COMMON[@]}" --methods reponet --baselines pml_arcface --epochs 3 \
    --embedding-size 9 --output "$OUT/reponet_d9"
}

stage_reponet_d128() {  # reponet at the shared width: its 9-d simplex zero-padded into d = 128; ArcFace at 128
  for seed in ${D128_SEEDS:-0 $SEEDS}; do
    timed "reponet_d128_s$seed" "$PML" bench "${COMMON[@]}" --methods reponet --baselines pml_arcface --epochs 3 \
      --embedding-size 128 --seed "$seed" --no-plots --output "$OUT/reponet_d128_s$seed"
  done
}

stage_reponet_long() {  # does the P@1 gap to ArcFace at d = 128 close with training? (per-epoch history)
  for seed in ${LONG_SEEDS:-0 1}; do
    timed "reponet_long_s$seed" "$PML" bench "${COMMON[@]}" --methods reponet --baselines pml_arcface \
      --epochs "${LONG_EPOCHS:-10}" --embedding-size 128 --seed "$seed" --no-plots --output "$OUT/reponet_long_s$seed"
  done
}

stage_pa_recipe() {
  local hk
  for variant in 'off:{"warmup_epochs": 0, "freeze_bn": false}' \
    'nowarmup:{"warmup_epochs": 0}' 'nofreezebn:{"freeze_bn": false}'; do
    hk=${variant#*:}
    timed "pa_${variant%%:*}" "$PML" train "${COMMON[@]}" --method proxy_anchor --epochs 3 --embedding-size 128 \
      --hook-kwargs "$hk" --output "$OUT/pa_${variant%%:*}"
  done
}

stage_cam_eval() {
  timed cam_train "$PML" train "${COMMON[@]}" --method cam --epochs 3 --embedding-size 128 --output "$OUT/cam_train"
  timed cam_eval "$PY" "$ROOT/benchmarks/mnist_report.py" --eval-both-ways "$OUT/cam_train/checkpoint.pt" \
    --output "$OUT/cam_train/eval_both.json"
}

stage_open_set() {
  timed open_set "$PML" bench "${COMMON[@]}" --protocol open_set --methods all --baselines all --epochs 3 \
    --embedding-size 128 --output "$OUT/open_set"
}

stage_open_set_pa() {  # proxy_anchor again with its current recipe (warm-up / frozen BN only when pretrained)
  timed open_set_pa "$PML" bench "${COMMON[@]}" --protocol open_set --methods proxy_anchor --baselines none \
    --epochs 3 --embedding-size 128 --no-plots --output "$OUT/open_set_pa"
}

stage_open_set_reponet() {
  timed open_set_reponet "$PML" bench "${COMMON[@]}" --protocol open_set --methods reponet --baselines pml_arcface \
    --epochs 3 --embedding-size 4 --output "$OUT/open_set_reponet"
}

stage_open_set_reponet_d128() {  # the 4-simplex of the 5 training digits zero-padded into d = 128
  timed open_set_reponet_d128 "$PML" bench "${COMMON[@]}" --protocol open_set --methods reponet --baselines none \
    --epochs 3 --embedding-size 128 --no-plots --output "$OUT/open_set_reponet_d128"
}

# ncm_train RUN ARGS...: each of NCM_METHODS (default e_ncm c_ncm) as run RUN_<method>, in the NCM paper's 2-d MNIST
# setting (its CNN, SGD lr 0.1 / momentum 0.9 / weight decay 5e-4, batch 256) plus ARGS (schedule, epochs).
# `train` (not bench) writes a checkpoint with the per-epoch metrics after every epoch, so a long run that is
# stopped can be resumed with `pml-anchors train --resume $OUT/RUN_<method>/checkpoint.pt`.
ncm_train() {
  local run=$1
  shift
  for m in ${NCM_METHODS:-e_ncm c_ncm}; do
    timed "${run}_$m" "$PML" train "${COMMON[@]}" --method "$m" --backbone ncm_cnn --embedding-size 2 \
      --optimizer sgd --lr 0.1 --weight-decay 5e-4 --batch-size 256 --eval-every-epoch "$@" --output "$OUT/${run}_$m"
  done
}

stage_ncm_paper() {  # cosine decay standing in for "lr / 10 on plateau"
  # NCM_TAG goes into the run's name, to keep runs with another NCM_EPOCHS apart (NCM_TAG=12: ncm_paper12_e_ncm)
  ncm_train "ncm_paper${NCM_TAG:-}" --lr-schedule cosine --epochs "$NCM_EPOCHS"
}

stage_ncm_paper_step() {  # the paper's stepwise decay at fixed epochs: lr / 10 after epochs $NCM_STEP_MILESTONES
  ncm_train ncm_paper_step --lr-schedule step --lr-gamma 0.1 --lr-milestones "$NCM_STEP_MILESTONES" \
    --epochs "$NCM_STEP_EPOCHS"
}

# GPU stages (not in the default list: hours per epoch-hundred on a CPU; docs/gpu.md has their H100 results)
stage_ncm_paper_plateau() {  # the paper's "lr / 10 on plateau" itself: the epoch's mean training loss, patience
  # NCM_PATIENCE (5; the paper gives none), NCM_PLATEAU_EPOCHS (90) epochs; about 4 s per epoch on an H100
  ncm_train ncm_paper_plateau --lr-schedule plateau --lr-gamma 0.1 --lr-patience "${NCM_PATIENCE:-5}" \
    --epochs "${NCM_PLATEAU_EPOCHS:-90}"
}

stage_pairs() {  # the two pairs that trail on P@1 (c_ncm / NormalizedSoftmax, reponet / ArcFace) at PAIR_SEEDS
  for seed in ${PAIR_SEEDS:-5 6 7 8 9 10 11 12 13 14}; do
    timed "pairs_s$seed" "$PML" bench "${COMMON[@]}" --methods c_ncm,reponet --epochs 3 --embedding-size 128 \
      --baselines pml_normalized_softmax,pml_arcface --seed "$seed" --no-plots --output "$OUT/pairs_s$seed"
  done
}

stage_ncm_2d_paper() {
  # the NCM paper's 2-d MNIST setting (Table 1, polygon anchors) with its optimizer (SGD 0.1, momentum 0.9, wd 5e-4,
  # batch 256) on the shared small_cnn; cosine decay stands in for the paper's "lr / 10 on plateau"
  timed ncm_2d_paper "$PML" bench "${COMMON[@]}" --methods e_ncm,c_ncm --baselines cross_entropy --embedding-size 2 \
    --optimizer sgd --lr 0.1 --weight-decay 5e-4 --batch-size 256 --lr-schedule cosine --epochs "$NCM_2D_EPOCHS" \
    --output "$OUT/ncm_2d_paper"
}

stage_reponet_paper() {
  timed reponet_paper "$PML" bench "${COMMON[@]}" --methods reponet --baselines none --backbone lenetpp \
    --optimizer adam --lr 5e-4 --batch-size 512 --epochs "$REPONET_EPOCHS" --output "$OUT/reponet_paper"
}

stage_reponet_paper_diag() {
  timed reponet_lenetpp_b64 "$PML" bench "${COMMON[@]}" --methods reponet --baselines none --backbone lenetpp \
    --epochs 1 --no-plots --output "$OUT/reponet_lenetpp_b64"
  timed reponet_lenetpp_m0 "$PML" train "${COMMON[@]}" --method reponet --backbone lenetpp --optimizer adam --lr 5e-4 \
    --batch-size 512 --epochs 1 --loss-kwargs '{"margin": 0}' --output "$OUT/reponet_lenetpp_m0"
}

stage_seeds() {  # each method and its PML counterpart at seeds $SEEDS (seed 0: same_class, reponet_d9)
  [ -f "$OUT/seed0_proxy_anchor/results.json" ] || timed seed0_proxy_anchor "$PML" bench "${COMMON[@]}" --methods proxy_anchor --baselines none --epochs 3 \
    --embedding-size 128 --seed 0 --no-plots --output "$OUT/seed0_proxy_anchor"  # its recipe changed
  for seed in $SEEDS; do
    timed "seed$seed" "$PML" bench "${COMMON[@]}" --methods cam,fsc,c_ncm,e_ncm,proxy_anchor --epochs 3 \
      --baselines pml_contrastive,pml_soft_triple,pml_normalized_softmax,pml_proxy_anchor \
      --embedding-size 128 --seed "$seed" --no-plots --output "$OUT/seed$seed"
    timed "seed${seed}_reponet_d9" "$PML" bench "${COMMON[@]}" --methods reponet --baselines pml_arcface --epochs 3 \
      --embedding-size 9 --seed "$seed" --no-plots --output "$OUT/seed${seed}_reponet_d9"
  done
}

stage_seeds_all() {  # every method and every PML baseline in one run per seed (d = 128) + reponet / ArcFace at d = 9:
  # the whole 5-seed table from one code version (seed 0 is stages same_class and reponet_d9)
  for seed in $SEEDS; do
    timed "seed$seed" "$PML" bench "${COMMON[@]}" --methods all --baselines all --epochs 3 --embedding-size 128 \
      --seed "$seed" --no-plots --output "$OUT/seed$seed"
    timed "seed${seed}_reponet_d9" "$PML" bench "${COMMON[@]}" --methods reponet --baselines pml_arcface --epochs 3 \
      --embedding-size 9 --seed "$seed" --no-plots --output "$OUT/seed${seed}_reponet_d9"
  done
}

stage_seeds_ce() {  # plain cross-entropy, e_ncm's counterpart (the NCM paper's SoftMax), at seeds $SEEDS
  for seed in $SEEDS; do
    timed "seed${seed}_ce" "$PML" bench "${COMMON[@]}" --methods none --baselines cross_entropy --epochs 3 \
      --embedding-size 128 --seed "$seed" --no-plots --output "$OUT/seed${seed}_ce"
  done
}

stage_arcface_phi() {  # RePoNet's own comparison: a learnable classifier with the same margin loss (m = phi, kappa 30)
  for seed in 0 1 2; do
    timed "arcface_phi_s$seed" "$PML" train "${COMMON[@]}" --method baseline:pml_arcface --epochs 3 --embedding-size 9 \
      --seed "$seed" --loss-kwargs '{"margin": 96.37937, "scale": 30}' --output "$OUT/arcface_phi_s$seed"
  done
}

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(same_class reponet_d9 reponet_d128 pa_recipe cam_eval open_set open_set_pa open_set_reponet open_set_reponet_d128 ncm_paper ncm_paper_step ncm_2d_paper
  reponet_paper reponet_paper_diag seeds seeds_ce arcface_phi reponet_long)
for s in "${STAGES[@]}"; do
  "stage_$s"
done
