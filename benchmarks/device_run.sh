#!/usr/bin/env bash
# Issue 15's device script: run from the repository root on a fresh GPU (H100/H200) or TPU machine.
#
#   bash benchmarks/device_run.sh            # install what is missing, check, benchmark (< 10 min)
#   bash benchmarks/device_run.sh --dry-run  # CPU: no installs, tiny sizes, kernels interpreted
#
# 1. Installs: `pip install -e . --no-deps --no-build-isolation` (works offline; if it fails the
#    scripts import the checkout directly), then adds jax's GPU/TPU plugin ONLY when an
#    accelerator is present and the installed jax does not see it (same version as the installed
#    jax; a machine without network reports that and stops: nothing is forced).
# 2. Prints the device and the jax version.
# 3. benchmarks/device_check.py: every kernel against its reference ON the device (compiled, no
#    interpret mode).
# 4. benchmarks/device_bench.py: W4A16 dequant-matmul vs the bf16 dot (8192x8192, batch 1-64),
#    the fused TIES/DARE kernel vs device copy bandwidth, the merge of a generated Llama set on
#    the device vs host-to-device transfer.
# Figures go to $OUT/device.md when $OUT is set (the device tool's output folder), else
# benchmarks/results/device.md (--dry-run: a temporary file unless $OUT or DEVICE_REPORT is set).
# Exit status: 0 when every check passed and every benchmark ran, 1 otherwise.
set -uo pipefail

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument $arg; valid: --dry-run, --help" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [[ -n "${DEVICE_REPORT:-}" ]]; then
  REPORT=$DEVICE_REPORT
elif [[ -n "${OUT:-}" ]]; then
  REPORT=$OUT/device.md
elif [[ $DRY == 1 ]]; then
  REPORT=$(mktemp -t device_dry_XXXX.md)
else
  REPORT=benchmarks/results/device.md
fi
mkdir -p "$(dirname "$REPORT")"
: > "$REPORT"
START=$(date +%s)

accelerator() {  # prints gpu / tpu / none
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo gpu
  elif ls /dev/accel* /dev/vfio/[0-9]* >/dev/null 2>&1; then echo tpu
  else echo none; fi
}
jax_backend() { "$PY" -c "import jax; print(jax.default_backend())" 2>/dev/null || echo missing; }

if [[ $DRY == 1 ]]; then
  export JAX_PLATFORMS=cpu
  echo "dry run: no installs, CPU, tiny sizes"
else
  "$PY" -m pip install -q -e . --no-deps --no-build-isolation 2>&1 | tail -2 \
    || echo "pip install -e . failed: the scripts import the checkout directly"
  ACC=$(accelerator)
  BACKEND=$(jax_backend)
  echo "accelerator: $ACC, jax backend: $BACKEND"
  if [[ $ACC != none && $BACKEND != "$ACC" ]]; then
    JAXV=$("$PY" -c "import jax; print(jax.__version__)" 2>/dev/null || echo "")
    if [[ $ACC == gpu ]]; then
      CUDA_MAJOR=$(nvidia-smi | sed -n 's/.*CUDA Version: \([0-9]*\).*/\1/p' | head -1)
      EXTRA="cuda${CUDA_MAJOR:-12}"; [[ ${CUDA_MAJOR:-12} -ge 13 ]] || EXTRA=cuda12
    else
      EXTRA=tpu
    fi
    echo "jax does not see the $ACC: pip install jax[$EXTRA]${JAXV:+==$JAXV}"
    "$PY" -m pip install -q "jax[$EXTRA]${JAXV:+==$JAXV}" 2>&1 | tail -2
    BACKEND=$(jax_backend)
    if [[ $BACKEND != "$ACC" ]]; then
      echo "jax still sees '$BACKEND', not the $ACC (no network?): stopping" | tee -a "$REPORT"
      exit 1
    fi
  fi
fi

{
  echo "## Device run ($(date -u +%Y-%m-%dT%H:%MZ)$([[ $DRY == 1 ]] && echo ', dry run'))"
  echo
  "$PY" - <<'EOF'
import platform, jax, jaxlib
d = jax.devices()[0]
print(f"- device: {d.platform} {getattr(d, 'device_kind', d)} x{jax.device_count()}; "
      f"jax {jax.__version__}, jaxlib {jaxlib.__version__}; python {platform.python_version()}")
EOF
  if [[ $DRY == 0 ]] && command -v nvidia-smi >/dev/null 2>&1; then
    echo "- nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
  fi
  echo
} | tee -a "$REPORT"

FLAGS=()
[[ $DRY == 1 ]] && FLAGS+=(--dry-run)
STATUS=0
"$PY" benchmarks/device_check.py --out "$REPORT" ${FLAGS[@]+"${FLAGS[@]}"} || STATUS=1
"$PY" benchmarks/device_bench.py --out "$REPORT" ${FLAGS[@]+"${FLAGS[@]}"} || STATUS=1
echo "Total: $(( $(date +%s) - START )) s, exit status $STATUS." | tee -a "$REPORT"
echo "report: $REPORT"
exit $STATUS
