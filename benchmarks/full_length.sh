#!/usr/bin/env bash
# Full-length benchmark runs of the paper detectors, in groups that each fit one 10-minute
# command of a lent GPU machine (the device tool: 30 minutes of device time a session, 64 MiB
# carried). See docs/benchmarks.md, "Full-length runs on a GPU", for what to carry with each
# group and how long each took.
#
#   bash benchmarks/full_length.sh GROUP [DATA] [OUT]
#
# DATA is the packed data (benchmarks/pack_datasets.py; default .data), OUT the folder for the
# JSON results (default $OUT when the device tool sets it, else out/full). With SMOKE=1 every
# run is shrunk to a few images and one epoch: a check of the commands on a CPU, not a result.
#
# Groups: differnet-bottle differnet-mtd vqvae-bottle vqvae-mtd score-resilience-bottle
#         score-resilience-mtd sanf ldm
set -euo pipefail

GROUP=${1:?usage: full_length.sh GROUP [DATA] [OUT]}
DATA=${2:-.data}
RESULTS=${3:-${OUT:-out/full}}
MODELS=${MODELS:-/tmp/ai-models}
export PYTHONUNBUFFERED=1

# On the device machine the project is not installed: put carried wheels (.whl/) on the path.
PY=${PY:-python3}
if ! "$PY" -c "import FrEIA" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$RESULTS" "$MODELS"

BOTTLE=$DATA/mvtec_ad/bottle
MTD=$DATA/mtd
if [[ "${SMOKE:-0}" == 1 ]]; then
  SMALL=(--max-train 12 --max-test 8)
else
  SMALL=()
fi

bench() {  # bench NAME DATASET DETECTOR [args...] -> $RESULTS/NAME.json
  local name=$1 data=$2 det=$3
  shift 3
  echo "== $name: bench $data --detector $det $*"
  "$PY" -m app bench "$data" --detector "$det" --device "${DEVICE:-auto}" -q --json "$RESULTS/$name.json" "$@"
}

case "$GROUP" in
  differnet-bottle|differnet-mtd)
    data=$BOTTLE; tag=bottle
    [[ $GROUP == differnet-mtd ]] && data=$MTD && tag=mtd
    if [[ "${SMOKE:-0}" == 1 ]]; then
      sets=(--set epochs=1 --set n_transforms_test=2 --set image_size=64 --set subnet_width=64)
    else
      sets=()  # the paper's settings: 192 epochs, batch 96, T = 64, maps on
    fi
    rm -rf "$MODELS/differnet-$tag"
    bench "$tag-differnet-full" "$data" differnet "${sets[@]}" "${SMALL[@]}" --save-model "$MODELS/differnet-$tag"
    bench "$tag-differnet-full-T1" "$data" differnet "${SMALL[@]}" --model "$MODELS/differnet-$tag" \
      --set n_transforms_test=1
    bench "$tag-differnet-16shot" "$data" differnet "${sets[@]}" --max-train 16 ${SMALL[@]:+--max-test 8}
    ;;
  vqvae-bottle|vqvae-mtd)
    data=$BOTTLE; tag=bottle
    [[ $GROUP == vqvae-mtd ]] && data=$MTD && tag=mtd
    if [[ "${SMOKE:-0}" == 1 ]]; then
      sets=(--set epochs=1 --set image_size=32 --set hidden=16 --set embedding_dim=16)
    else
      sets=(--set epochs="${VQVAE_EPOCHS:-300}")  # 256 px, depth 256, M = 512 (paper)
    fi
    rm -rf "$MODELS/vqvae-$tag"
    bench "$tag-vqvae-ssim_am-mean" "$data" vqvae "${sets[@]}" "${SMALL[@]}" --save-model "$MODELS/vqvae-$tag"
    for variant in "ssim_am max" "ssim mean" "ssim max"; do
      set -- $variant
      bench "$tag-vqvae-$1-$2" "$data" vqvae "${SMALL[@]}" --model "$MODELS/vqvae-$tag" --set map="$1" --set score_reduce="$2"
    done
    ;;
  score-resilience-bottle|score-resilience-mtd)
    data=$BOTTLE; tag=bottle
    [[ $GROUP == score-resilience-mtd ]] && data=$MTD && tag=mtd
    # The training-time curve: one training per budget (minutes), each scored on the whole test split.
    for minutes in ${SR_MINUTES:-2 5}; do
      if [[ "${SMOKE:-0}" == 1 ]]; then
        sets=(--set epochs=1 --set image_size=32 --set block_out_channels=8,16 --set norm_num_groups=4)
      else
        sets=(--set max_minutes="$minutes")
      fi
      bench "$tag-score-resilience-${minutes}min" "$data" score-resilience "${sets[@]}" "${SMALL[@]}"
    done
    ;;
  sanf)
    if [[ "${SMOKE:-0}" == 1 ]]; then sets=(--set epochs=1 --set hidden_width=32); else sets=(--set epochs="${SANF_EPOCHS:-50}"); fi
    [[ -d $BOTTLE ]] && bench bottle-sanf "$BOTTLE" sanf "${sets[@]}" "${SMALL[@]}"
    [[ -d $BOTTLE ]] && bench bottle-sanf-nocaff "$BOTTLE" sanf "${sets[@]}" "${SMALL[@]}" --set caff=false
    [[ -d $MTD ]] && bench mtd-sanf "$MTD" sanf "${sets[@]}" "${SMALL[@]}"
    ;;
  ldm)
    if [[ "${SMOKE:-0}" == 1 ]]; then
      sets=(--set epochs=1 --set image_size=32 --set timesteps=4 --set block_out_channels=8,16 --set norm_num_groups=4)
    else
      sets=(--set image_size=64 --set timesteps=50 --set max_minutes="${LDM_MINUTES:-2}")
    fi
    for g in ${LDM_GROUPS:-ncut kmeans gmm}; do
      [[ -d $BOTTLE ]] && bench "bottle-ldm-batch-$g" "$BOTTLE" ldm-zero-shot --set model=batch --set group=$g "${sets[@]}" "${SMALL[@]}"
    done
    ;;
  *)
    echo "unknown group: $GROUP" >&2
    exit 2
    ;;
esac
echo "== done: results in $RESULTS"
