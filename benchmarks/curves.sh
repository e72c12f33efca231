#!/usr/bin/env bash
# Learning curves of the paper detectors: ONE training run per curve, with snapshots of the
# model saved along the way (bench --snapshot-minutes / --snapshot-epochs) and each snapshot,
# and the final model, evaluated on the whole test split. Successor of full_length.sh (whose
# groups were sized for a lent GPU's 10-minute commands); this one is made for the CPU.
#
#   bash benchmarks/curves.sh GROUP [--device cpu|cuda|auto]
#
# Groups (data from ../shared/datasets unless DATA is set):
#   vqvae-bottle             VQ-VAE, depth 256 (paper), VQ_SIZE px (256, paper) on VQ_CROP px crops
#                            (96; 0 = whole images, better: see docs/benchmarks.md); 10/30/90 min
#   score-resilience-bottle  score U-Net at 192 px (paper), widths 32-128, trained on 64 px crops;
#                            10/30/90 min
#   differnet-mtd            DifferNet, 192 epochs (paper), features of 16 epochs' transforms
#                            cached; snapshots after 24/48/96 epochs, scored with T = $T (16)
#   differnet-bottle         the same on bottle, scored with T = 64 and gradient maps
#
# Environment: PY (the interpreter; default .venv/bin/python, else python3), MINUTES (time budget, default 90), SNAPS (snapshot minutes, default 10,30),
# EPOCHS / EPOCH_SNAPS / COPIES / T (DifferNet), THREADS (torch threads; 1 lets two curves
# share the 2-core machine), MODELS (where models go, default /tmp/ai-curves), RESULTS (JSON,
# default docs/bench), DATA (default ../shared/datasets), EXTRA (more bench arguments, last
# so they win, e.g. "--max-train 12 --max-test 8" for a smoke run; "--set amp_cpu=true" trains vqvae and
# score-resilience under bf16 autocast, worth it only on a CPU with bf16 instructions: docs/benchmarks.md,
# "bf16 autocast"), TAG (the JSON names' suffix, default the device). The same command with --device cuda runs on
# a GPU (there MINUTES is the GPU's budget: pick it to fit the machine's command limit).
set -euo pipefail

GROUP=${1:?usage: curves.sh GROUP [--device cpu|cuda|auto]}
DEVICE=cpu
if [[ "${2:-}" == "--device" ]]; then DEVICE=${3:?--device needs a value}; fi
DATA=${DATA:-../shared/datasets}
MODELS=${MODELS:-/tmp/ai-curves}
RESULTS=${RESULTS:-docs/bench}
MINUTES=${MINUTES:-90}
SNAPS=${SNAPS:-10,30}
TAG=${TAG:-$DEVICE}
if [[ -z "${PY:-}" ]]; then PY=python3; [[ -x .venv/bin/python ]] && PY=.venv/bin/python; fi
export PYTHONUNBUFFERED=1
if [[ -n "${THREADS:-}" ]]; then export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS; fi
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
mkdir -p "$RESULTS" "$MODELS"

bench() {  # bench JSON_NAME DATASET DETECTOR [args...]
  local name=$1 data=$2 det=$3
  shift 3
  echo "== $(date +%H:%M:%S) $name: bench $data --detector $det $*"
  "$PY" -m app bench "$data" --detector "$det" --device "$DEVICE" -q --json "$RESULTS/$name.json" \
    "$@" "${EXTRA_ARGS[@]}"
}

curve() {  # curve NAME DATASET DETECTOR "SNAP LABELS" [train args...] -- [eval args...]
  local name=$1 data=$2 det=$3 labels=$4
  shift 4
  local train=() eval=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do train+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  eval=("$@")
  local model=$MODELS/$name-$TAG  # a curve of another TAG (bf16, another machine) keeps its models
  rm -rf "$model"
  for label in $labels; do rm -rf "$model-$label"; done
  bench "$name-final-$TAG" "$data" "$det" "${train[@]}" "${eval[@]}" --save-model "$model"
  for label in $labels; do
    if [[ -d "$model-$label" ]]; then
      bench "$name-$label-$TAG" "$data" "$det" --model "$model-$label" "${eval[@]}"
    else
      echo "== no snapshot $label (training ended before it)"
    fi
  done
}

minute_labels() { local out=""; for m in ${SNAPS//,/ }; do out+="${m}min "; done; echo "$out"; }

case "$GROUP" in
  vqvae-bottle)
    # VQ_SIZE / VQ_CROP: 2026-12-02 measured 256 px on 96 px crops (pixel AUROC 62.8 after 90 min on one
    # core); crops hurt the VQ-VAE (benchmarks/crop_agreement.py: 64 px whole 91.7 against 45.1 on
    # 32 px crops, same steps), so set VQ_CROP=0 and a size the CPU can train whole.
    size=${VQ_SIZE:-256}; crop=${VQ_CROP:-96}
    name=bottle-vqvae-${size}px-crop${crop}-${MINUTES}min
    [[ $crop == 0 ]] && name=bottle-vqvae-${size}px-whole-${MINUTES}min
    curve "$name" "$DATA/mvtec_ad/bottle" vqvae "$(minute_labels)" \
      --set image_size="$size" --set train_crop="$crop" --set epochs=10000 --set max_minutes="$MINUTES" \
      --snapshot-minutes "$SNAPS"
    ;;
  score-resilience-bottle)
    # The paper's U-Net is in its supplement, which we lack; our default widths (64, 128, 256, 256)
    # cost 82 s a step at 192 px here, so the CPU curve uses a quarter of the FLOPs (32, 64, 128, 128).
    curve bottle-score-resilience-192px-w32-crop64-${MINUTES}min "$DATA/mvtec_ad/bottle" score-resilience "$(minute_labels)" \
      --set image_size=192 --set train_crop=64 --set block_out_channels=32,64,128,128 --set norm_num_groups=8 \
      --set epochs=100000 --set max_minutes="$MINUTES" \
      --snapshot-minutes "$SNAPS"
    ;;
  differnet-mtd|differnet-bottle)
    data=$DATA/mtd; tag=mtd; t=${T:-16}; maps=false
    if [[ $GROUP == differnet-bottle ]]; then data=$DATA/mvtec_ad/bottle; tag=bottle; t=${T:-64}; maps=true; fi
    epochs=${EPOCHS:-192}; snaps=${EPOCH_SNAPS:-24,48,96}; labels=""
    for e in ${snaps//,/ }; do labels+="${e}ep "; done
    curve "$tag-differnet-${epochs}ep-cache${COPIES:-16}" "$data" differnet "$labels" \
      --set epochs="$epochs" --set train_copies="${COPIES:-16}" --snapshot-epochs "$snaps" -- \
      --set n_transforms_test="$t" --set maps="$maps"
    ;;
  *)
    echo "unknown group: $GROUP (vqvae-bottle, score-resilience-bottle, differnet-mtd, differnet-bottle)" >&2
    exit 2
    ;;
esac
echo "== $(date +%H:%M:%S) done: JSON in $RESULTS"
