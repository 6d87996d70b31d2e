#!/usr/bin/env bash
# An MLP family model (TASK: mnist-mlp, or digits-mlp) end to end on the 2 CPU cores: harvests the mixed-architecture zoo
# (HARVEST_MINUTES, resumable), times training on it against a single-architecture zoo (40 steps each,
# same preset and --batch-params), trains the family model for MINUTES, and scores it per member with
# eval/family.py (held-out widths, two-layer shapes, the width-10 specialist zero-shot), then audits each
# member the zoo held with eval/audit.py (distance to its nearest training checkpoint, the retrieval
# baseline; BANK checkpoints). Logs and reports go to $OUT; $OUT/summary.json gathers them.
#
#   nohup bash benchmarks/family_cpu.sh > data/family.log 2>&1 &             # the recipe (~2.5 h)
#   TASK=digits-mlp HARVEST_PRESET=gpt ...: the scikit-learn digits family 64 -> h1 (-> h2) -> 10 instead of MNIST's
#     784 -> ... (zoos $DATA/$TASK-family.h5 and $DATA/$TASK-h64.h5; the specialist $TASK-loss), its zoo trained by
#     SGD as the digits specialist's was (in 250 steps, Adam at lr 1e-3 leaves most digits nets far from trained);
#     with RUNS=31488 DATA=data/digits32k MINUTES=50 HARVEST_MINUTES=40, the shipped digits-mlp-family-loss (digits
#     runs are cheap: on 4,000 runs the narrow members, drawn most often, overfit their ~100 runs each)
#   WIDTH_POWER=1.5 RUNS=7040 DATA=data/wp15 ...: the zoo's widths drawn with density width^-1.5 instead of
#     log-uniform (gpt-params harvest --width-power), so narrow members, the cheapest cohorts, hold more runs;
#     RUNS=12000 HARVEST_MINUTES=20 on a copy (cp -al) of that zoo grows it with the rest of a 45-minute harvest budget
#     (11,072 runs: better at widths 4-8, worse from width 96 up, 9% fewer steps; the ablation)
#   OUTPUT_WEIGHT=1 EVAL_EVERY=250 ...: with the function-space term and validation R^2 of the narrowest,
#     middle and widest members with val runs in train.log
#   OUTPUT_WEIGHT=4 ...: that term weighted 4 times as much (the ablation: worse on all 17 members at 85 minutes)
#   OUTPUT_SCHEDULE=flat ...: that term at every timestep, not weighted by alpha_bar_t (train/diffuse.py
#     --output-schedule; the ablation: worse from width 10 up at 85 minutes, 0.386 against 0.314 at width 256)
#   WIDTH=128 DEPTH=4 ...: the preset narrowed and made shallower (0: the preset's own), for more steps (WIDTH=256:
#     6.33M parameters, 2.3x the step time, worse on 15 of 17 members at 85 minutes);
#     EDGE_WIDTH=64 ...: the preset's edge width instead of 16 (two-layer members' steps take 1.5x as long; the
#     edge-width-64 model did better on two-layer members, worse on one-layer ones with its fewer steps)
#   BATCH_PARAMS=8388608 ...: a batch's pairs x member parameters capped at 8M instead of 2M, so members wider than
#     about 32 get 4x more pairs per step and their steps take 2-4x as long (benchmarks/step_time.py): half the steps,
#     a worse model on every member measured
#   BATCH_UNITS=0 ...: no cap of 4,096 on a batch's pairs x hidden units (train/diffuse.py --batch-units), so members
#     with many units and few parameters (784-4-174-10: 256 pairs, 4.5 s a step, instead of 23) take their full batch
#   MEMBER_POWER=0 ...: members drawn in proportion to their runs alone, not to their runs times their hidden
#     units^-1, so narrow one-layer members (cheap steps, the worst one-step results) are trained less often
#     (the ablation; 0.5 lies between)
#   BATCH_SIZE=1024 ...: at most 1,024 pairs per batch instead of 256 (members narrower than about 8 get more)
#   EDGE_MESSAGES=0 ...: two-layer members' unit tokens get the weights between the layers pooled alone, not
#     the other layer's tokens weighted by them (train/diffuse.py --no-edge-messages; the ablation);
#     MESSAGE_NORM=mean ...: those messages averaged over the other layer instead of centred and divided by sqrt(n)
#   BLOCK_MESSAGES=0 ...: messages only in the tokens, not passed again after every transformer block
#     (train/diffuse.py --no-block-messages; the ablation)
#   EDGE_RANK=0 ...: the weights between the hidden layers decoded by the additive per-weight head alone, without
#     the rank-16 bilinear term p(unit a) . q(unit b) (the ablation)
#   LR=2e-3 ...: peak learning rate 2e-3 instead of 1e-3 (same warm-up and cosine decay; the ablation: the narrowest
#     members learn slower, and at 90 minutes 16 of 17 members ended worse)
#   GRAD_PROBES=512 ...: the model's tokens also read the gradient of the training loss at the start on 512 fixed
#     training examples (train/diffuse.py --grad-probes; LearnedOptimizer.step computes it the same way; the ablation:
#     more learnt per step, a quarter fewer steps, worse at 90 minutes on the 2 cores)
#   SIZE_EMBEDDING=0 / BALANCE_ROLES=0 / WIDTH_LAW=0 / T_POWER=1 ...: the model not told its members' widths /
#     plain MSE over all coordinates instead of each tensor role weighing the same / one normalising std per role
#     instead of a power law of the tensor's fans / uniform diffusion timesteps instead of a density proportional
#     to t, which weights high noise, where a one-step sample's first prediction is made (the ablations)
#   RUNS=64 COHORT=16 EPOCHS=1 HARVEST_MINUTES=2 MINUTES=0.2 PRESET=tiny NETS=2 WIDTHS="4 10" SHAPES="8,4" \
#     ADAM_STEPS=20 TIMING_STEPS=3 OUT=/tmp/fam bash benchmarks/family_cpu.sh  # a smoke run (minutes)
set -euo pipefail
cd "$(dirname "$0")/.."  # repository root: train/ and eval/ scripts by relative path
RUNS=${RUNS:-4000}; COHORT=${COHORT:-32}; CKPTS=${CKPTS:-20}; HARVEST_MINUTES=${HARVEST_MINUTES:-40}
HARVEST_PRESET=${HARVEST_PRESET:-adam}  # the zoo's training recipe (gpt-params harvest --preset: gpt, adam or varied)
WIDTH_POWER=${WIDTH_POWER:-1}  # gpt-params harvest --width-power: widths drawn with density width^-P (1: log-uniform)
PRESET=${PRESET:-small}; MINUTES=${MINUTES:-88}; TIMING_STEPS=${TIMING_STEPS:-40}
NETS=${NETS:-16}; BANK=${BANK:-2000}; ADAM_STEPS=${ADAM_STEPS:-3000}; EPOCHS=${EPOCHS:-25}
WIDTHS=${WIDTHS:-"4 6 8 10 12 16 24 32 48 64 96 128 192 256"}; SHAPES=${SHAPES:-"32,16 64,64 128,32"}
TASK=${TASK:-mnist-mlp}; SPECIALIST=${SPECIALIST:-$TASK-loss}  # the family; its shipped single-width model
DATA=${DATA:-data}; OUT=${OUT:-runs/$TASK-family}; PY=${PYTHON:-python3}
ZOO=$DATA/$TASK-family.h5; SINGLE=$DATA/$TASK-h64.h5
OUTPUT_WEIGHT=${OUTPUT_WEIGHT:-0}; EVAL_EVERY=${EVAL_EVERY:-0}  # function-space term; per-member validation
OUTPUT_SCHEDULE=${OUTPUT_SCHEDULE:-signal}  # train/diffuse.py --output-schedule: that term's weight over timesteps
WIDTH=${WIDTH:-0}; DEPTH=${DEPTH:-0}  # model width and depth (0: the preset's)
EDGE_WIDTH=${EDGE_WIDTH:-16}  # per-weight features between the two hidden layers (0: the preset's, 64)
BATCH_PARAMS=${BATCH_PARAMS:-2097152}  # most pairs x member parameters per batch (train/diffuse.py --batch-params)
BATCH_SIZE=${BATCH_SIZE:-256}  # most pairs per batch (train/diffuse.py --batch-size)
BATCH_UNITS=${BATCH_UNITS:-4096}  # most pairs x hidden units per batch (train/diffuse.py --batch-units; 0: no cap)
MEMBER_POWER=${MEMBER_POWER:-1}  # members drawn by runs x hidden units^-MEMBER_POWER (train/diffuse.py --member-power)
SIZE_EMBEDDING=${SIZE_EMBEDDING:-1}; ((SIZE_EMBEDDING)) && SIZE=--size-embedding || SIZE=--no-size-embedding
EDGE_MESSAGES=${EDGE_MESSAGES:-1}; ((EDGE_MESSAGES)) && MSG=--edge-messages || MSG=--no-edge-messages
BALANCE_ROLES=${BALANCE_ROLES:-1}; ((BALANCE_ROLES)) && BALANCE=--balance-roles || BALANCE=--no-balance-roles
WIDTH_LAW=${WIDTH_LAW:-1}; ((WIDTH_LAW)) && LAW=--width-law || LAW=--no-width-law
BLOCK_MESSAGES=${BLOCK_MESSAGES:-1}; ((BLOCK_MESSAGES)) && BLOCK=--block-messages || BLOCK=--no-block-messages
MESSAGE_NORM=${MESSAGE_NORM:-sqrt}  # train/diffuse.py --message-norm: an edge message's sum centred, over sqrt(n); or over n
EDGE_RANK=${EDGE_RANK:-16}  # train/diffuse.py --edge-rank: a bilinear term in the weights-between-layers decoder (0: none)
PRECISION=${PRECISION:-auto}  # train/diffuse.py --mixed-precision: auto is bf16 where the CPU has AVX-512 / AMX, else fp32
LR=${LR:-1e-3}  # train/diffuse.py --lr: the peak learning rate (warm-up 300 steps, then cosine decay over MINUTES)
T_POWER=${T_POWER:-2}  # diffusion timesteps drawn as floor(1000 u^(1/T_POWER)): >1 favours high noise
GRAD_PROBES=${GRAD_PROBES:-0}  # train/diffuse.py --grad-probes: tokens read the training loss's gradient on N examples
TRAIN=(--preset "$PRESET" --width "$WIDTH" --depth "$DEPTH" --edge-width "$EDGE_WIDTH" --batch-size "$BATCH_SIZE" --batch-params "$BATCH_PARAMS" --batch-units "$BATCH_UNITS" --member-power "$MEMBER_POWER" "$SIZE" "$MSG" --message-norm "$MESSAGE_NORM" "$BLOCK" --edge-rank "$EDGE_RANK" "$BALANCE" "$LAW" --lr "$LR" --init-frac 0.5 --late-bias 2 --warmup-steps 300
  --mixed-precision "$PRECISION" --output-weight "$OUTPUT_WEIGHT" --output-schedule "$OUTPUT_SCHEDULE" --output-probes 32 --t-power "$T_POWER")
MIXED=(--grad-probes "$GRAD_PROBES")  # options of a mixed zoo's (family) model alone
logged() {  # logged LOG CMD...: CMD's output to LOG; on failure, its last lines and exit
  local log=$1; shift
  "$@" > "$log" 2>&1 || { echo "family_cpu.sh: failed: $*" >&2; tail -n 3 "$log" >&2; exit 1; }
}
mkdir -p "$OUT" "$DATA"
SECONDS=0
# the harvest stops after HARVEST_MINUTES (a cohort is lost at most); rerunning resumes it
timeout "${HARVEST_MINUTES}m" $PY -m gpt_params.cli harvest --task "$TASK" --architectures mixed --preset "$HARVEST_PRESET" \
  --epochs "$EPOCHS" --runs "$RUNS" --cohort-size "$COHORT" --ckpts-per-run "$CKPTS" --width-power "$WIDTH_POWER" \
  --out "$ZOO" > "$OUT/harvest.log" 2>&1 \
  || { rc=$?; ((rc == 124)) || { echo "family_cpu.sh: harvest failed" >&2; tail -n 3 "$OUT/harvest.log" >&2; exit 1; }; }
echo "harvest: ${SECONDS}s"
logged "$OUT/harvest-single.log" $PY -m gpt_params.cli harvest --task "$TASK" --hidden 64 --preset "$HARVEST_PRESET" \
  --epochs "$EPOCHS" --runs $((2 * COHORT)) --cohort-size "$COHORT" --ckpts-per-run "$CKPTS" --out "$SINGLE"
for zoo in "$ZOO" "$SINGLE"; do  # throughput, mixed against single, same preset and batch size in parameters
  name=$(basename "${zoo%.h5}"); extra=(); [[ $zoo == "$ZOO" ]] && extra=("${MIXED[@]}")
  logged "$OUT/timing-$name.log" $PY train/diffuse.py --zoo "$zoo" --out "$OUT/timing-$name" "${TRAIN[@]}" "${extra[@]}" \
    --max-steps "$TIMING_STEPS" --max-minutes 30 --eval-every 0 --save-every 1000000
done
echo "timing: ${SECONDS}s"
logged "$OUT/train.log" $PY train/diffuse.py --zoo "$ZOO" --out "$OUT/model" "${TRAIN[@]}" "${MIXED[@]}" --max-minutes "$MINUTES" \
  --max-steps 1000000 --eval-every "$EVAL_EVERY" --save-every 1000
echo "train: ${SECONDS}s"
# shellcheck disable=SC2086
logged "$OUT/family.log" $PY eval/family.py --model "$OUT/model" --zoo "$ZOO" --widths $WIDTHS --shapes $SHAPES \
  --specialist "$SPECIALIST" --nets "$NETS" --adam-steps "$ADAM_STEPS" --out "$OUT/family.json"
echo "eval: ${SECONDS}s"
# members the zoo held: the novelty audit and the retrieval baseline, on each one's test-split runs
held=$($PY -c 'import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print(" ".join(sorted({",".join(map(str, r["hidden"])) for r in rows if r["held_by_zoo"]})))' "$OUT/family.json")
for h in $held; do
  logged "$OUT/audit-h${h/,/-}.log" $PY eval/audit.py --model "$OUT/model" --zoo "$ZOO" --hidden "$h" \
    --nets "$NETS" --bank "$BANK" --out "$OUT/audit/h${h/,/-}.json"
done
echo "audit: ${SECONDS}s"
$PY - "$OUT" "$TASK" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
cfg = lambda d: json.loads((out / d / "config.json").read_text())
summary = {
    "timing": {d: cfg(f"timing-{d}")["timing"] for d in (f"{sys.argv[2]}-family", f"{sys.argv[2]}-h64")},
    "model": {k: cfg("model").get(k) for k in ("n_model_params", "train_steps", "timing")},
    "family": json.loads((out / "family.json").read_text()),
    "audit": {p.stem: {k: v for k, v in json.loads(p.read_text()).items() if k != "per_net"}
              for p in sorted((out / "audit").glob("*.json"))},
}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
PYEOF
echo "done: ${SECONDS}s; $OUT/summary.json"
