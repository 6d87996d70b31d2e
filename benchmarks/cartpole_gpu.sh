#!/usr/bin/env bash
# CartPole on one GPU machine with many cores: harvest the documented 500-run `varied` PPO zoo with
# WORKERS processes, then train the `small` model on it twice at the same time on the one GPU, with and
# without --early-stop (runs cut at their best return), for MINUTES each; score both on the zoo's
# test-split inits (eval/prompting.py) and on fresh policies (eval/rollout.py), and export both at half
# precision into OUT.
#
#   WORKERS=15 MINUTES=3.5 OUT=runs/cartpole-gpu bash benchmarks/cartpole_gpu.sh
set -euo pipefail
RUNS=${RUNS:-500}; WORKERS=${WORKERS:-15}; COHORT=${COHORT:-100}; MINUTES=${MINUTES:-3.5}
PRESET=${PRESET:-small}; NETS=${NETS:-32}; POLICIES=${POLICIES:-16}; EPISODES=${EPISODES:-100}
ZOO=${ZOO:-data/cartpole.h5}; OUT=${OUT:-runs/cartpole-gpu}; PY=${PYTHON:-python3}
EVAL_LIMIT=${EVAL_LIMIT:-240}  # seconds each evaluation may take before it is cut
mkdir -p "$OUT" "$(dirname "$ZOO")"
SECONDS=0
OMP_NUM_THREADS=1 $PY -m gpt_params.cli harvest --task cartpole --runs "$RUNS" --ckpts-per-run 50 \
  --workers "$WORKERS" --cohort-size "$COHORT" --out "$ZOO" > "$OUT/harvest.log" 2>&1
echo "harvest: ${SECONDS}s"
$PY -m gpt_params.cli zoo info "$ZOO" | head -n 20
pids=()
for v in early-stop full; do
  flag=(); [[ $v == early-stop ]] && flag=(--early-stop)
  $PY train/diffuse.py --zoo "$ZOO" --preset "$PRESET" --out "$OUT/$v" --max-minutes "$MINUTES" \
    --max-steps 1000000 --lr 1e-3 --init-frac 0.5 --warmup-steps 300 --eval-every 0 --save-every 0 \
    "${flag[@]}" > "$OUT/train-$v.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
echo "train: ${SECONDS}s"
tail -n 1 "$OUT"/train-*.log
pids=()
for v in early-stop full; do
  timeout "$EVAL_LIMIT" $PY eval/prompting.py --model "$OUT/$v" --zoo "$ZOO" --nets "$NETS" \
    --samplers ddim:10 --guidance 1 2 --out "$OUT/$v/prompting.json" > "$OUT/prompting-$v.log" 2>&1 &
  pids+=($!)
  timeout "$EVAL_LIMIT" $PY eval/rollout.py --model "$OUT/$v" --nets "$POLICIES" --episodes "$EPISODES" \
    --prompts 100 300 500 --sampler-steps 10 --out "$OUT/$v/rollout.json" > "$OUT/rollout-$v.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
echo "eval: ${SECONDS}s (last failing status: $status)"
for v in early-stop full; do
  echo "== $v"; tail -n 12 "$OUT/prompting-$v.log" "$OUT/rollout-$v.log"
  $PY -m gpt_params.cli export "$OUT/$v" --out "$OUT/$v-fp16" --dtype float16
done
