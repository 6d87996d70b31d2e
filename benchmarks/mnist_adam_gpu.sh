#!/usr/bin/env bash
# mnist-mlp on the `adam` zoo, on one GPU machine with many cores: what does the late-checkpoint bias
# (--late-bias), bf16 autocast and a larger batch do to the one step, at equal wall
# time? Harvests the documented 5,000-run `adam` zoo in SHARDS processes, trains every variant at the
# same time on the one GPU for MINUTES, then scores each on the zoo's 32 unseen test-split inits
# (eval/prompting.py, DDIM-5, guidance 1; eval/vs_gradient.py against Adam lr 1e-3) and writes one
# summary to $OUT/summary.json (default runs/mnist-adam-gpu).
#
#   SHARDS=16 MINUTES=3.5 OUT=runs/mnist-adam-gpu bash benchmarks/mnist_adam_gpu.sh
#   LATE_BIASES="2 3 4" MINUTES=2 OUT=runs/mnist-adam-gpu-late bash benchmarks/mnist_adam_gpu.sh
set -euo pipefail
RUNS=${RUNS:-5000}; SHARDS=${SHARDS:-16}; MINUTES=${MINUTES:-3.5}; NETS=${NETS:-32}
OUT=${OUT:-runs/mnist-adam-gpu}; PY=${PYTHON:-python3}; EVAL_LIMIT=${EVAL_LIMIT:-200}; DEVICE=${DEVICE:-cuda}
ZOO=data/mnist-mlp-adam${RUNS}.h5
declare -A VARIANTS=(
  [small-b256]="--preset small --batch-size 256"
  [small-b256-late2]="--preset small --batch-size 256 --late-bias 2"
  [small-b256-late2-bf16]="--preset small --batch-size 256 --late-bias 2 --mixed-precision bf16"
  [small-b1024-late2-bf16]="--preset small --batch-size 1024 --late-bias 2 --mixed-precision bf16"
)
if [[ -n ${LATE_BIASES:-} ]]; then  # instead: batch 256, fp32, one variant per late bias
  VARIANTS=()
  for b in $LATE_BIASES; do VARIANTS[small-b256-late$b]="--preset small --batch-size 256 --late-bias $b"; done
fi
mkdir -p "$OUT" data
SECONDS=0
pids=()
for ((r = 0; r < SHARDS; r++)); do
  OMP_NUM_THREADS=1 RANK=$r WORLD_SIZE=$SHARDS $PY -m gpt_params.cli harvest --task mnist-mlp \
    --preset adam --runs "$RUNS" --ckpts-per-run 50 --out "$ZOO" \
    > "$OUT/harvest-$r.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
$PY -m gpt_params.cli zoo merge data/mnist-mlp-adam"${RUNS}".shard*of"${SHARDS}".h5 --out "$ZOO" --virtual
echo "harvest: ${SECONDS}s"
pids=()
for v in "${!VARIANTS[@]}"; do
  # shellcheck disable=SC2086
  $PY train/diffuse.py --zoo "$ZOO" --out "$OUT/$v" --max-minutes "$MINUTES" --max-steps 1000000 \
    --lr 1e-3 --init-frac 0.5 --warmup-steps 300 --eval-every 0 --save-every 0 ${VARIANTS[$v]} \
    > "$OUT/train-$v.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
echo "train: ${SECONDS}s"
pids=()
for v in "${!VARIANTS[@]}"; do
  OMP_NUM_THREADS=1 timeout "$EVAL_LIMIT" $PY eval/prompting.py --model "$OUT/$v" --zoo "$ZOO" --nets "$NETS" --samplers ddim:5 \
    --device "$DEVICE" > "$OUT/prompting-$v.log" 2>&1 &
  pids+=($!)
  OMP_NUM_THREADS=1 timeout "$EVAL_LIMIT" $PY eval/vs_gradient.py --model "$OUT/$v" --zoo "$ZOO" --nets "$NETS" --adam-lrs 1e-3 \
    --sgd-lrs 0.03 --max-steps 800 > "$OUT/vs-gradient-$v.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
echo "eval: ${SECONDS}s"
$PY - "$OUT" "${!VARIANTS[@]}" <<'EOF'
import json, re, sys
from pathlib import Path
out, variants = Path(sys.argv[1]), sys.argv[2:]
summary = {}
for v in variants:
    row = {}
    log = (out / f"train-{v}.log").read_text().splitlines()
    done = [line for line in log if line.startswith("{")]
    row["train"] = json.loads(done[-1]) if done else log[-3:]
    for name, key in (("prompting.json", "prompting"), ("vs_gradient.json", "vs_gradient")):
        f = out / v / name
        if f.exists():
            r = json.loads(f.read_text())
            row[key] = r["results"] if key == "prompting" else {"gpt": r["gpt"], "adam_lr1e-3": r["baselines"].get("adam_lr1e-3")}
    cfg = out / v / "config.json"
    if cfg.exists():
        c = json.loads(cfg.read_text())
        row["n_model_params"], row["train_steps"] = c["n_model_params"], c["train_steps"]
    summary[v] = row
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary)[:6000])
EOF
exit $status
