# Sourced by the device scripts (gpu_check.sh, gpu_reproduce.sh), from the repository root:
#   source benchmarks/gpu_env.sh DEFAULT_OUT
# sets OUT (default DEFAULT_OUT), DEVICE (cuda), PY (python3), runs the package from src/,
# reads data from $NCF_DATA_DIR (default ./.gpu-data, git-ignored), and writes the machine's
# description to $OUT/env.txt.
OUT=${OUT:-$1}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NCF_DATA_DIR=${NCF_DATA_DIR:-$PWD/.gpu-data}
{
  date -u; uname -m; nproc; lscpu | grep -m1 'Model name'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda',
    'nccl', torch.cuda.nccl.version() if torch.cuda.is_available() else '-')"
} 2>&1 | tee "$OUT/env.txt"
