#!/usr/bin/env bash
# G.pt's CNN half at G.pt's recipes, for users with GPUs: harvests `mnist-cnn` (the `gpt` recipe, 25
# epochs on MNIST-5k) and `cifar10-cnn` (50 epochs on the 45,000 training images, G.pt's random flips
# and 4-pixel crops) with every process on its own GPU (`accelerate launch`, one shard each), trains a
# PRESET model on each for MINUTES with `accelerate launch train/diffuse.py`, and scores each on its
# zoo's unseen test-split inits (eval/prompting.py, eval/vs_gradient.py) into $OUT/summary.json.
#
#   GPUS=8 MINUTES=60 bash benchmarks/cnn_gpu.sh                       # the full recipes
#   CIFAR_DIR=/data/cifar10 GPUS=1 bash benchmarks/cnn_gpu.sh          # torchvision files or JPEG tree
#   DEVICE=cpu RUNS=8 MNIST_EPOCHS=1 CIFAR_EPOCHS=1 CKPTS=3 PRESET=tiny MINUTES=0.05 NETS=1 \
#     ADAM_STEPS=20 bash benchmarks/cnn_gpu.sh                         # a CPU smoke run (minutes)
#
# CIFAR_DIR defaults to ../shared/datasets/cifar10-jpeg.tar.gz extracted once into data/cifar10-jpeg.
set -euo pipefail
cd "$(dirname "$0")/.."  # repository root: train/ and eval/ scripts by relative path
GPUS=${GPUS:-1}; DEVICE=${DEVICE:-cuda}; RUNS=${RUNS:-1000}; CKPTS=${CKPTS:-24}
MNIST_EPOCHS=${MNIST_EPOCHS:-25}; CIFAR_EPOCHS=${CIFAR_EPOCHS:-50}
PRESET=${PRESET:-base}; MINUTES=${MINUTES:-60}; NETS=${NETS:-32}; ADAM_STEPS=${ADAM_STEPS:-3000}
OUT=${OUT:-runs/cnn-gpu}; DATA=${DATA:-data}; PY=${PYTHON:-python3}
ACCELERATE=${ACCELERATE:-accelerate}
ARCHIVE=../shared/datasets/cifar10-jpeg.tar.gz
if [[ -z ${CIFAR_DIR:-} ]]; then
  CIFAR_DIR=$DATA/cifar10-jpeg
  if [[ ! -d $CIFAR_DIR/train ]]; then
    [[ -f $ARCHIVE ]] || { echo "cnn_gpu.sh: set CIFAR_DIR (no $ARCHIVE to extract)" >&2; exit 2; }
    mkdir -p "$CIFAR_DIR.tmp" && tar -xzf "$ARCHIVE" -C "$CIFAR_DIR.tmp" && mv "$CIFAR_DIR.tmp" "$CIFAR_DIR"
  fi
fi
launch() {  # one process per GPU; plain python for one
  if ((GPUS > 1)); then
    "$ACCELERATE" launch --num_machines 1 --num_processes "$GPUS" --multi_gpu --mixed_precision no \
      --dynamo_backend no "$@"
  else
    $PY "$@"
  fi
}
logged() {  # logged LOG CMD...: CMD's output to LOG; on failure, its last lines and exit
  local log=$1; shift
  "$@" > "$log" 2>&1 || { echo "cnn_gpu.sh: failed: $*" >&2; tail -n 3 "$log" >&2; exit 1; }
}
mkdir -p "$OUT" "$DATA"
SECONDS=0
declare -A ZOOS=([mnist-cnn]="$DATA/mnist-cnn-gpt-e$MNIST_EPOCHS.h5" [cifar10-cnn]="$DATA/cifar10-cnn-gpt-e$CIFAR_EPOCHS.h5")
declare -A FLAGS=([mnist-cnn]="--epochs $MNIST_EPOCHS" [cifar10-cnn]="--epochs $CIFAR_EPOCHS --augment --data-dir $CIFAR_DIR")
for task in mnist-cnn cifar10-cnn; do
  zoo=${ZOOS[$task]}
  # shellcheck disable=SC2086
  logged "$OUT/harvest-$task.log" launch -m gpt_params.cli harvest --task "$task" --preset gpt --runs "$RUNS" \
    --ckpts-per-run "$CKPTS" --cohort-size $((RUNS < 256 ? RUNS : 256)) --device "$DEVICE" ${FLAGS[$task]} --out "$zoo"
  if ((GPUS > 1)); then
    $PY -m gpt_params.cli zoo merge "${zoo%.h5}".shard*of"$GPUS".h5 --out "$zoo" --virtual
  fi
  echo "harvest $task: ${SECONDS}s"
done
for task in mnist-cnn cifar10-cnn; do
  logged "$OUT/train-$task.log" launch train/diffuse.py --zoo "${ZOOS[$task]}" --out "$OUT/$task-$PRESET" \
    --preset "$PRESET" --max-minutes "$MINUTES" --max-steps 1000000 --lr 1e-3 --init-frac 0.5 --warmup-steps 300 \
    --eval-every 0 --save-every 1000
  echo "train $task: ${SECONDS}s"
done
for task in mnist-cnn cifar10-cnn; do
  opts=(--model "$OUT/$task-$PRESET" --zoo "${ZOOS[$task]}" --nets "$NETS")  # data: the zoo's --data-dir
  logged "$OUT/prompting-$task.log" $PY eval/prompting.py "${opts[@]}" --samplers ddim:5 --device "$DEVICE"
  logged "$OUT/vs-gradient-$task.log" $PY eval/vs_gradient.py "${opts[@]}" --adam-lrs 1e-3 3e-3 \
    --max-steps "$ADAM_STEPS"
done
echo "eval: ${SECONDS}s"
$PY - "$OUT" "$PRESET" <<'PYEOF'
import json, sys
from pathlib import Path
out, preset = Path(sys.argv[1]), sys.argv[2]
summary = {}
for task in ("mnist-cnn", "cifar10-cnn"):
    d = out / f"{task}-{preset}"
    row = {"config": {k: json.loads((d / "config.json").read_text()).get(k) for k in ("n_model_params", "train_steps")}}
    for name in ("prompting.json", "vs_gradient.json"):
        if (d / name).exists():
            row[name.removesuffix(".json")] = json.loads((d / name).read_text())
    summary[task] = row
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({t: {k: v for k, v in r.items() if k == "config"} for t, r in summary.items()}))
PYEOF
