#!/usr/bin/env bash
# One device run for issue 3 (and issue 4's GPU figure at the current code), from the
# repository root:
#
#   OUT=/tmp/gpu_repro NCF_DATA_DIR=../shared/data bash benchmarks/gpu_reproduce.sh
#   QUICK=1 DEVICE=cpu OUT=/tmp/x bash benchmarks/gpu_reproduce.sh   # dry run on a CPU box (ml-100k)
#
# 1. benchmarks/train_speed.py on the GPU, alone (default `ncf train`, 20 epochs);
# 2. benchmarks/tune_pretrain.py: NeuMF-64 with pre-training, every stage chosen on validation
#    (GMF and MLP grids, then fine-tunings of the chosen pair), JOBS runs sharing the GPU. The
#    grid is the one that fitted the device time (194 s on an H200 with 4 jobs); the script's
#    default grid as 14 processes on one H200 did not (each run about 4x slower than alone);
# 3. alongside 2, benchmarks/reproduce_ncf.py at the defaults for the paper's table (so its
#    wall times are those of a shared GPU).
# Logs and JSON go to $OUT; run directories to /tmp (too large to bring back).
set -u
source benchmarks/gpu_env.sh /tmp/gpu_repro
JOBS=${JOBS:-4}
if [ -n "${QUICK:-}" ]; then
  DATA=ml-100k; EPOCHS=2; REF=50
  TUNE=(--factors 8 --layers 16,8 --gmf-lr 0.003 --gmf-l2 0,1e-4 --mlp-lr 0.003 --mlp-dropout 0.1
        --finetune sgd:0.1,adam:0.001)
  ONLY=(--only gmf-8,neumf-8)
else
  DATA=ncf-ml-1m; EPOCHS=20; REF=300; ONLY=()
  TUNE=(--batch-size 8192 --gmf-lr 0.002 --gmf-l2 0,0.001 --mlp-lr 0.002 --mlp-dropout 0.1,0.3
        --finetune sgd:0.01,sgd:0.1,adam:0.0001)
fi

echo "=== speed"
timeout 90 $PY benchmarks/train_speed.py --dataset "$DATA" --device "$DEVICE" --epochs "$EPOCHS" \
  --ref-steps "$REF" --json "$OUT/speed.json" >"$OUT/speed.log" 2>&1
echo "exit $?"; tail -n 16 "$OUT/speed.log"

echo "=== tuning and reproduction"
OMP_NUM_THREADS=2 timeout 400 $PY benchmarks/reproduce_ncf.py --dataset "$DATA" --device "$DEVICE" --epochs "$EPOCHS" "${ONLY[@]}" \
  --out /tmp/repro --json "$OUT/reproduce.json" >"$OUT/reproduce.log" 2>&1 &
REPRO=$!
OMP_NUM_THREADS=2 timeout 400 $PY benchmarks/tune_pretrain.py --dataset "$DATA" --device "$DEVICE" --epochs "$EPOCHS" "${TUNE[@]}" \
  --jobs "$JOBS" --out /tmp/tune --json "$OUT/tune.json" >"$OUT/tune.log" 2>&1
echo "tune exit $?"; cat "$OUT/tune.log"
wait $REPRO
echo "reproduce exit $?"; grep '^|' "$OUT/reproduce.log" | tail -n 9
cp /tmp/tune/*.log "$OUT/" 2>/dev/null
echo "=== done"
