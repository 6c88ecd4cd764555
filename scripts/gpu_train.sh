#!/usr/bin/env bash
# Train two transformers side by side on one GPU within a fixed wall-clock budget, then refit
# their read-out heads: by default run A continues a shipped model (training/configs/gpu/
# gst_continue.yaml) and run B trains a wider one from scratch (gst_scratch.yaml; with INIT_B it
# continues a model too); both then gst_heads.yaml. The number
# of optimizer steps is chosen from throughput measured here (a short probe of both runs at
# once), so the cosine schedule ends inside the budget. docs/training.md, "One GPU lease".
#
#   scripts/gpu_train.sh TRAIN_SHARDS VAL_SHARDS OUT_DIR [BUDGET_S]
#
# Environment: PY (python, default python3), INIT (model dir run A starts from and whose
# tokenizers both runs use, default models/gst_small), CONFIG_A / CONFIG_B (the runs' configs,
# defaults above), INIT_B (a gst/ directory run B starts from; default none: from scratch),
# EXTRA_A / EXTRA_B (train_gst arguments for that run alone), DEVICE (default cuda), PROBE_STEPS (60),
# HEADS_S (seconds kept for the heads, default 80), SCALE (multiplies every step count), EXTRA
# (more train_gst arguments for every run, e.g. "--set val_batches=1"), BATCH (every run's
# batch size, default the configs'; SCALE, EXTRA and BATCH make a CPU test of this script
# short). OUT_DIR/A and OUT_DIR/B are ordinary train_gst run directories (resumable; model/ is
# the engine's model directory).
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,19p "$0"; exit 2; }
TRAIN=$1; VAL=$2; OUT=$3; BUDGET=${4:-480}
PY=${PY:-python3}; INIT=${INIT:-models/gst_small}; DEVICE=${DEVICE:-cuda}
PROBE_STEPS=${PROBE_STEPS:-60}; HEADS_S=${HEADS_S:-80}; SCALE=${SCALE:-1}; EXTRA=${EXTRA:-}
CONFIG_A=${CONFIG_A:-training/configs/gpu/gst_continue.yaml}; CONFIG_B=${CONFIG_B:-training/configs/gpu/gst_scratch.yaml}
# each run's own arguments: A continues INIT, B starts from INIT_B or from scratch
read -r -a args_A <<<"--init-from $INIT/gst ${EXTRA_A:-}"
read -r -a args_B <<<"${INIT_B:+--init-from $INIT_B} ${EXTRA_B:-}"
START=$(date +%s)
mkdir -p "$OUT"
elapsed() { echo $(( $(date +%s) - START )); }
common=(--shards "$TRAIN" --val-shards "$VAL" --no-progress
        --set "device=$DEVICE" --set "image_tokenizer=$INIT/image_tokenizer"
        --set "camera_tokenizer=$INIT/camera_tokenizer" ${BATCH:+--set batch_size=$BATCH} $EXTRA)
train() {  # name config extra-args...: one train_gst run into $OUT/name, its output in name.log;
    local name=$1 config=$2; shift 2  # stopped after $LIMIT s when set (0: no limit)
    timeout "${LIMIT:-0}" "$PY" -m training.train_gst --config "$config" --out "$OUT/$name" "${common[@]}" "$@" \
        >"$OUT/$name.log" 2>&1 || echo "run $name stopped: exit $? (its log: $OUT/$name.log)"
}
steps_per_s() {  # median optimizer steps/s of a run's CSV log after its first rows (0: no log)
    "$PY" - "$1" "${BATCH:-256}" "$TRAIN/manifest.json" <<'EOF'
import csv, json, os, sys
path, batch, manifest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
gy, gx = json.load(open(manifest))["grid"]
tokens_per_pair = 3 * gy * gx  # the sequence minus its last token: what tokens_per_s counts
rows = [r for r in csv.DictReader(open(path)) if r.get("tokens_per_s")] if os.path.isfile(path) else []
rates = sorted(float(r["tokens_per_s"]) for r in rows[2:] or rows)
print(rates[len(rates) // 2] / (batch * tokens_per_pair) if rates else 0.0)
EOF
}

echo "[$(elapsed) s] probe: $PROBE_STEPS steps of each run at once"
train probe_A "$CONFIG_A" "${args_A[@]}" --steps "$PROBE_STEPS" &
a=$!
train probe_B "$CONFIG_B" ${args_B[@]+"${args_B[@]}"} --steps "$PROBE_STEPS" &
b=$!
wait $a; wait $b
rate_A=$(steps_per_s "$OUT/probe_A/train_log.csv"); rate_B=$(steps_per_s "$OUT/probe_B/train_log.csv")
left=$(( BUDGET - $(elapsed) - HEADS_S - 40 ))   # 40 s: start-up, validation, export, packing
# 0.75: on the H200 the checkpoints, validations and start-up took ~20% of a run's wall clock
# beside the steps the probe times (0.9 let the budget stop run B at step 4,620 of 4,917)
read -r steps_A steps_B < <("$PY" -c "
r = [float(x) for x in '$rate_A $rate_B'.split()]
print(*[max(5, int(x * $left * 0.75 * $SCALE)) if x > 0 else 0 for x in r])")
echo "[$(elapsed) s] probe: A $rate_A steps/s, B $rate_B steps/s (both at once); $left s left for training:" \
     "A $steps_A steps, B $steps_B steps"

main_end=$(( BUDGET - HEADS_S - 15 - $(elapsed) )); [ "$main_end" -gt 0 ] || main_end=1  # timeout 0 = no limit
[ "$steps_A" -gt 0 ] && { LIMIT=$main_end train A "$CONFIG_A" "${args_A[@]}" --set "max_steps=$steps_A" & }
[ "$steps_B" -gt 0 ] && { LIMIT=$main_end train B "$CONFIG_B" ${args_B[@]+"${args_B[@]}"} \
    --set "max_steps=$steps_B" & }
wait
for run in A B; do  # a run stopped by the budget still has its last checkpoint: export that
    if [ ! -f "$OUT/$run/model/gst/model.safetensors" ] && [ -f "$OUT/$run/checkpoint.pt" ]; then
        echo "[$(elapsed) s] run $run did not finish: exporting its last checkpoint"
        cfg=CONFIG_$run
        "$PY" -m training.train_gst --config "${!cfg}" --out "$OUT/$run" "${common[@]}" --export-only
    fi
    tail -n 2 "$OUT/$run/train_log.csv" 2>/dev/null || echo "run $run: no log"
done
echo "[$(elapsed) s] main runs done"

heads_steps=$("$PY" -c "print(max(5, int(1200 * $SCALE)))")
heads_end=$(( BUDGET - 10 - $(elapsed) )); [ "$heads_end" -gt 0 ] || heads_end=1
for run in A B; do
    if [ -f "$OUT/$run/model/gst/model.safetensors" ]; then
        LIMIT=$heads_end train "${run}_heads" training/configs/gpu/gst_heads.yaml --init-from "$OUT/$run/model/gst" \
            --set "max_steps=$heads_steps" &
    fi
done
wait
for run in A B; do
    tail -n 2 "$OUT/${run}_heads/train_log.csv" 2>/dev/null || echo "run $run: no heads"
done
echo "[$(elapsed) s] done"
