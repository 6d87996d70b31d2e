#!/usr/bin/env bash
# Which zoo trains the better model? On one GPU machine with many cores: harvest a `gpt`-recipe and a
# `varied` mnist-mlp zoo of RUNS runs each (SHARDS processes per zoo), then train the default model
# on each at the same time for MINUTES and score both on their zoo's unseen test-split inits.
#
#   RUNS=2000 SHARDS=8 MINUTES=2.5 OUT=runs/zoos bash benchmarks/zoo_comparison_gpu.sh
set -euo pipefail
RUNS=${RUNS:-2000}; SHARDS=${SHARDS:-8}; MINUTES=${MINUTES:-2.5}; NETS=${NETS:-32}
OUT=${OUT:-runs/zoos}; PY=${PYTHON:-python3}
mkdir -p "$OUT" data
pids=()
for preset in gpt varied; do
  for ((r = 0; r < SHARDS; r++)); do
    OMP_NUM_THREADS=1 RANK=$r WORLD_SIZE=$SHARDS $PY -m gpt_params.cli harvest --task mnist-mlp \
      --preset $preset --runs "$RUNS" --ckpts-per-run 50 --cohort-size $((RUNS / SHARDS)) \
      --out "data/zoo-$preset$RUNS.h5" > "$OUT/harvest-$preset-$r.log" 2>&1 &
    pids+=($!)
  done
done
for p in "${pids[@]}"; do wait "$p"; done
pids=()
for preset in gpt varied; do
  $PY -m gpt_params.cli zoo merge data/zoo-$preset"$RUNS".shard*of"$SHARDS".h5 --out "data/zoo-$preset$RUNS.h5" --virtual
  $PY benchmarks/ablation.py --zoo "data/zoo-$preset$RUNS.h5" --variants neuron --minutes "$MINUTES" \
    --nets "$NETS" --out "$OUT/$preset" > "$OUT/$preset.txt" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
cat "$OUT"/gpt.txt "$OUT"/varied.txt
