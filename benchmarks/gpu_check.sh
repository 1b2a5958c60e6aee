#!/usr/bin/env bash
# One short device check for issues 4 and 10, run from the repository root:
#
#   OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh          # NCF_DATA_DIR must hold ncf-ml-1m
#   QUICK=1 DEVICE=cpu OUT=/tmp/x bash benchmarks/gpu_check.sh  # dry run of every step on a CPU box
#
# 1. benchmarks/train_speed.py on the GPU (default `ncf train`, 20 epochs, plain-PyTorch
#    reference on the same GPU);
# 2. DDP with NCCL: torchrun, one rank on the GPU, 3 epochs;
# 3. the same benchmark on two otherwise idle CPU cores (taskset): the default (a worker thread
#    per core), then 5 epochs each with one worker and 2 intra-op threads, and with OpenMP
#    waits active instead of passive, for comparison with the shared development machine;
# 4. DDP on CPU (gloo): 1 process on 1 core vs 2 processes on 2 cores, same global batch.
# Everything goes to $OUT (logs, JSON, PNG). Needs only what the machine has (torch, numpy,
# scipy, pandas, typer, rich, safetensors, matplotlib): the package runs from src/.
set -u
source benchmarks/gpu_env.sh /tmp/gpu_check
EPOCHS=${EPOCHS:-20}
if [ -n "${QUICK:-}" ]; then EPOCHS=2; SHORT=1; CPU_EPOCHS=1; REF=50; else SHORT=5; CPU_EPOCHS=20; REF=400; fi
if command -v taskset >/dev/null; then PIN1=(taskset -c 0); PIN2=(taskset -c 0,1); else PIN1=(); PIN2=(); fi
run() {  # run NAME TIMEOUT CMD...: log to $OUT/NAME.log, never stop the script
  local name=$1 t=$2; shift 2
  echo "=== $name: $*" | tee "$OUT/$name.log"
  local t0=$SECONDS
  timeout "$t" "$@" >>"$OUT/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
  tail -n 22 "$OUT/$name.log" | grep -v '^=== '
}


run speed_gpu 240 $PY benchmarks/train_speed.py --device "$DEVICE" --epochs "$EPOCHS" --ref-steps "$REF" \
  --json "$OUT/speed_gpu.json" --plot "$OUT/speed_gpu.png"

run ddp_nccl 150 $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m ncf train --dataset ncf-ml-1m \
  --epochs 3 --device "$DEVICE" --out /tmp/ncf_ddp_nccl --quiet
cp /tmp/ncf_ddp_nccl/summary.json "$OUT/ddp_nccl_summary.json" 2>/dev/null

run speed_cpu2 200 "${PIN2[@]}" $PY benchmarks/train_speed.py --device cpu --threads 2 --epochs "$CPU_EPOCHS" \
  --ref-steps "$REF" --json "$OUT/speed_cpu2.json"
run speed_cpu2_1worker 120 "${PIN2[@]}" $PY benchmarks/train_speed.py --device cpu --threads 2 \
  --epochs "$SHORT" --ref-steps "$REF" --param workers=1 --json "$OUT/speed_cpu2_1worker.json"
OMP_WAIT_POLICY=ACTIVE run speed_cpu2_active 120 "${PIN2[@]}" $PY benchmarks/train_speed.py --device cpu --threads 2 \
  --epochs "$SHORT" --ref-steps "$REF" --json "$OUT/speed_cpu2_active.json"

COMMON=(--dataset ncf-ml-1m --epochs "$SHORT" --device cpu --quiet --patience 0)
OMP_NUM_THREADS=1 run cpu_1proc 120 "${PIN1[@]}" $PY -m ncf train "${COMMON[@]}" --threads 1 --out /tmp/ncf_cpu1
OMP_NUM_THREADS=1 run cpu_2proc 120 "${PIN2[@]}" $PY -m ncf train "${COMMON[@]}" --batch-size 32768 --nproc 2 \
  --out /tmp/ncf_cpu2
for d in cpu1 cpu2; do cp "/tmp/ncf_$d/summary.json" "$OUT/${d}_summary.json" 2>/dev/null; done
$PY - "$OUT" <<'PYEOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("*.json")):
    d = json.loads(f.read_text())
    keys = ("samples_per_s", "train_only_samples_per_s", "reference_samples_per_s", "ratio", "seconds_per_epoch",
            "eval_sampled_s", "eval_full_s", "test_hr@10", "samples_per_second", "samples_per_second_end_to_end",
            "processes", "peak_rss_mb", "peak_gpu_mb")
    if "test" in d:
        d["test_hr@10"] = d["test"]["hr@10"]
    print(f.name, {k: round(d[k], 4) if isinstance(d.get(k), float) else d.get(k) for k in keys if k in d})
PYEOF
echo "=== done"
