#!/usr/bin/env bash
# Issue 19's device check, prepared but not run (no GPU was lent to that session). From the repository root:
#
#   OUT=/tmp/gpu_sharded bash benchmarks/gpu_sharded.sh                  # on the GPU machine
#   QUICK=1 DEVICE=cpu OUT=/tmp/x bash benchmarks/gpu_sharded.sh         # dry run of every step, small shapes
#
# Throughput on an ML-20M-shaped synthetic set (138,493 users, 26,744 items, 20,000,263 uniform random
# interactions, 4 negatives each) at a batch of 2^20 on one GPU, NVIDIA's NCF configuration (64 factors,
# MLP 256-256-128-64; DeepLearningExamples PyTorch/Recommendation/NCF defaults), against NVIDIA's published
# 22.59M samples/s on one A100 40GB, TF32 (their README, "Training performance: NVIDIA DGX A100"):
#   1. ncf's ordinary path (the model on the GPU, one-rank DDP under torchrun, Adam);
#   2. --shard-tables: both tables in TorchRec/FBGEMM kernels with row-wise AdaGrad fused into the
#      backward (one rank: the "sharding" is placement on the one GPU), then the same with --sharding row_wise;
#   3. memory: table and optimizer bytes per rank of each path (printed in the JSON lines).
# Every step writes $OUT/NAME.log and appends to $OUT/results.jsonl; none stops the script.
#
# Needs torch with CUDA and, for steps 2-3, TorchRec with the CUDA build of FBGEMM paired with that torch
# (torch 2.13: torchrec==1.8.0 and fbgemm-gpu==1.8.0). The machine has no network: where they are not
# installed, put the wheels in a directory and set WHEELS=dir (pip install --no-index --no-deps from it);
# without them steps 2-3 are skipped with a note and step 1 still runs.
set -u
source benchmarks/gpu_env.sh /tmp/gpu_sharded
if [ -n "${QUICK:-}" ]; then
  USERS=2000; ITEMS=1000; NNZ=50000; BATCH=8192; STEPS=3
else
  USERS=138493; ITEMS=26744; NNZ=20000263; BATCH=1048576; STEPS=${STEPS:-30}
fi
SHAPE=(--users "$USERS" --items "$ITEMS" --interactions "$NNZ" --batch "$BATCH" --steps "$STEPS"
       --factors 64 --layers 256,256,128,64 --device "$DEVICE" --json "$OUT/results.jsonl")
run() {  # run NAME TIMEOUT CMD...: log to $OUT/NAME.log, never stop the script
  local name=$1 t=$2; shift 2
  echo "=== $name: $*" | tee "$OUT/$name.log"
  local t0=$SECONDS
  timeout "$t" "$@" >>"$OUT/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
  tail -n 6 "$OUT/$name.log" | grep -v '^=== '
}
TR=($PY -m torch.distributed.run --standalone --nproc-per-node 1)

run plain 300 "${TR[@]}" benchmarks/sharded.py --worker --path ddp "${SHAPE[@]}"

if ! $PY -c "import torchrec, fbgemm_gpu" 2>/dev/null && [ -n "${WHEELS:-}" ]; then
  run install 120 $PY -m pip install --no-index --no-deps --find-links "$WHEELS" torchrec fbgemm-gpu tensordict \
    torchmetrics pyre-extensions pyvers lightning-utilities
fi
if $PY -c "import torchrec, fbgemm_gpu" 2>/dev/null; then
  run sharded 300 "${TR[@]}" benchmarks/sharded.py --worker --path sharded --sharding auto "${SHAPE[@]}"
  if [ "$DEVICE" = cuda ]; then  # TorchRec's planner offers row-wise sharding on GPUs only
    run sharded_rw 300 "${TR[@]}" benchmarks/sharded.py --worker --path sharded --sharding row_wise "${SHAPE[@]}"
  fi
else
  echo "torchrec / fbgemm_gpu not importable here (set WHEELS=dir with the CUDA wheels): sharded steps skipped" \
    | tee "$OUT/sharded_skipped.txt"
fi
echo "NVIDIA reference: 22.59M samples/s, 1x A100 40GB, TF32, batch 2^20" | tee -a "$OUT/env.txt"
grep -h samples_per_second "$OUT/results.jsonl" 2>/dev/null | $PY -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print(f\"{r['path']:>8} {r['sharding'] or '':>10}: {r['samples_per_second'] / 1e6:6.2f}M samples/s \"
          f\"({r['samples_per_second'] / 22.59e6:.2f}x NVIDIA's A100 TF32), \"
          f\"tables+optimizer {sum(p['table_bytes'] + p['optimizer_bytes'] for p in r['per_rank']) / 2**20:.0f} MB\")
" | tee "$OUT/summary.txt"
