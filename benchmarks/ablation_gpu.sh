#!/usr/bin/env bash
# The tokenizer/augmentation ablation on one GPU machine with many cores: harvest a `gpt`-recipe
# mnist-mlp zoo in SHARDS parallel processes, join the shards, then train every variant at once
# for MINUTES each (benchmarks/ablation.py --parallel) and score them on unseen test-split inits.
#
#   RUNS=2000 SHARDS=8 MINUTES=4 OUT=runs/ablation-gpu bash benchmarks/ablation_gpu.sh
set -euo pipefail
RUNS=${RUNS:-2000}; SHARDS=${SHARDS:-8}; COHORT=${COHORT:-250}; MINUTES=${MINUTES:-4}
PRESET=${PRESET:-small}; NETS=${NETS:-32}; SAMPLER=${SAMPLER:-ddim:5}; OUT=${OUT:-runs/ablation-gpu}; PY=${PYTHON:-python3}
ZOO=data/ablation-gpt${RUNS}.h5
mkdir -p "$OUT" data
pids=()
for ((r = 0; r < SHARDS; r++)); do
  OMP_NUM_THREADS=2 RANK=$r WORLD_SIZE=$SHARDS $PY -m gpt_params.cli harvest --task mnist-mlp \
    --preset gpt --runs "$RUNS" --ckpts-per-run 50 --cohort-size "$COHORT" --out "$ZOO" \
    > "$OUT/harvest-$r.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
$PY -m gpt_params.cli zoo merge data/ablation-gpt"${RUNS}".shard*of"${SHARDS}".h5 --out "$ZOO" --virtual
$PY benchmarks/ablation.py --zoo "$ZOO" --minutes "$MINUTES" --preset "$PRESET" --nets "$NETS" \
  --sampler "$SAMPLER" --parallel --out "$OUT"
