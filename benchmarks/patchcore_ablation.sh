#!/usr/bin/env bash
# PatchCore without a fixture (issue 24): the ablation, one factor changed from the default at a
# time, each row one `anomaly-inspector bench` with its JSON.
#
#   bash benchmarks/patchcore_ablation.sh DATASET TAG [ROW ...]
#
# DATASET: a data set folder (MTD, an MVTec category, or a no-fixture variant written by
# benchmarks/unaligned.py); TAG names it in the JSON files (RESULTS/TAG-ROW.json). Without ROWs
# every row below runs. BASE (extra --set arguments every row shares, e.g. the new defaults when
# measuring a combination), PY, RESULTS (default docs/bench/ablation), EXTRA (more bench arguments,
# last). A row whose JSON exists is skipped (delete it to run it again), so the script resumes.
set -euo pipefail

DATASET=${1:?usage: patchcore_ablation.sh DATASET TAG [ROW ...]}
TAG=${2:?usage: patchcore_ablation.sh DATASET TAG [ROW ...]}
shift 2
RESULTS=${RESULTS:-docs/bench/ablation}
if [[ -z "${PY:-}" ]]; then PY=python3; [[ -x .venv/bin/python ]] && PY=.venv/bin/python; fi
export PYTHONUNBUFFERED=1
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
mkdir -p "$RESULTS"

# name | the --set arguments of the row (one factor each). plain-knn is the issue's plain patch-kNN
# script as settings: the stages concatenated, a random 25 % of all training patches as the bank,
# exact L2, the image score the maximum of the blurred map. The bank rows lift the 200,000-patch
# bound so that 25 % and "all" mean all the training patches.
ROWS=(
  "default|"
  "plain-knn|stage_weighting=concat bank_sampling=random coreset_ratio=0.25 image_score=blurred_max max_patches=100000000 memory_mb=8192"
  "weighting-concat|stage_weighting=concat"
  "weighting-standardize|stage_weighting=standardize"
  "score-max|image_score=max"
  "score-blurred-max|image_score=blurred_max"
  "score-top1pct|image_score=top_mean top=0.01"
  "score-top10|image_score=top_mean top=10"
  "bank-coreset10|coreset_ratio=0.1"
  "bank-random25|bank_sampling=random coreset_ratio=0.25 max_patches=100000000 memory_mb=8192"
  "bank-all|coreset_ratio=1 max_patches=100000000 memory_mb=8192"
  "distance-cosine|distance=cosine"
  "size-320|image_size=320"
  "size-448|image_size=448"
  "resize-keep|resize=keep"
  "resize-pad|resize=pad"
  "resize-native|resize=native"
  "tile-256|tile_size=256"
  "backbone-lite2|backbone=efficientnet-lite2"
  "backbone-lite0+lite2|backbone=efficientnet-lite0+efficientnet-lite2"
  "augment-flip|augment=flip"
  "augment-rot4|augment=rot4"
  "augment-rot8|augment=rot8"
  "foreground|foreground=true"
)

want=("$@")
for row in "${ROWS[@]}"; do
  name=${row%%|*}
  sets=${row#*|}
  if [[ ${#want[@]} -gt 0 && ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  out="$RESULTS/$TAG-$name.json"
  if [[ -f "$out" ]]; then echo "== $name: $out exists, skipped"; continue; fi
  args=()
  for kv in ${BASE:-} $sets; do args+=(--set "$kv"); done
  echo "== $(date +%H:%M:%S) $TAG $name: bench $DATASET --detector patchcore ${args[*]}"
  "$PY" -m app bench "$DATASET" --detector patchcore --device cpu -q --json "${out%.json}.part.json" "${args[@]}" "${EXTRA_ARGS[@]}" \
    | grep -E "image AUROC|pixel AUROC|^fit|^scoring" | tr '\n' ' '
  echo
  mv "${out%.json}.part.json" "$out"
done
