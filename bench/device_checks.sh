#!/usr/bin/env bash
# The GPU figures of bench/ and the CUDA-only tests in one run (random-init models: no download
# needed). Each step has a time limit, 9.5 minutes in all. Every figure goes to stdout and to
# $OUT/<name>.txt; a step that fails or runs past its limit is reported and the next one runs. The
# last step prints bench/gpu_plan.py's plan for the paper's grids, to read the figures against.
#
#   bash bench/device_checks.sh                  # on a CUDA machine
#   bash bench/device_checks.sh cpu --quick      # the same steps at toy sizes, to check the script
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=${1:-cuda}
QUICK=${2:-}
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
PY=${PYTHON:-python}
failed=()

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name ($limit s max): $*"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  grep -v " done: val macro-F1" "$OUT/$name.txt"
  if [ "$rc" -ne 0 ]; then
    echo "== $name FAILED (exit $rc)"
    failed+=("$name")
  fi
}

if [ "$QUICK" = "--quick" ]; then
  PLAN_ARGS="--quick"; SIZE=64; FOVS=8; PROBE_EPOCHS=3; PROBE_N=800; KNN_N=2000; FT_SIZE=128; FT_ARGS="--arch vit_tiny_patch16_224 --global-crop 64 --local-crop 32 --local-crops 2 --out-dim 256 --steps 2 --batch-size 4"
else
  PLAN_ARGS="--seconds 1"; SIZE=600; FOVS=64; PROBE_EPOCHS=300; PROBE_N=6120; KNN_N=157504; FT_SIZE=600; FT_ARGS="--arch vit_base_patch8_224 --batch-size 64 --steps 6 --workers 12"
fi

$PY - <<'EOF' | tee "$OUT/device.txt"
import platform, torch
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| python", platform.python_version())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
EOF

if [ "$DEVICE" = "cuda" ]; then
  step cuda-tests 120 $PY -m pytest -q -rs tests/test_backbone_check.py::test_offline_backbones_pass_on_cuda \
       tests/test_loader.py::test_cuda_features_match_cpu_in_fp32_and_within_bf16_tolerance \
       tests/test_sc_knn.py::test_gpu_gives_the_cpu_predictions \
       tests/test_bb_embeddings_trust.py::test_precision_is_in_the_meta_and_bf16_needs_cuda
fi

# Extraction: ViT-B/8 on OpenCell-sized 2-channel uint16 TIFFs, end-to-end vs the bare model, MFU.
for precision in fp32 bf16; do
  [ "$DEVICE" = "cpu" ] && [ "$precision" = "bf16" ] && continue
  step "extract-vitb8-$precision" 75 $PY bench/extract.py --model vit-base8 --size $SIZE --fovs $FOVS \
       --batch-size 16 --repeats 2 --device "$DEVICE" --precision $precision
done

# The paper probe (5 folds x 300 epochs, batch 512); on CUDA the folds train as one stacked model.
# Three runs (--repeats, the default): the median ratio and its min-max.
step probe 60 $PY bench/probe.py --device "$DEVICE" --epochs $PROBE_EPOCHS --n $PROBE_N

# Leave-one-out k-NN over the paper's 157,504 single-cell embeddings: peak memory and matmul ratio.
step knn 60 $PY bench/knn.py --device "$DEVICE" --n $KNN_N

# DINO fine-tuning step (bf16 on CUDA) against the bare model step, with FLOPs and MFU.
if [ "$DEVICE" = "cuda" ]; then FT_PRECISION=bf16; else FT_PRECISION=fp32; fi
# shellcheck disable=SC2086
step finetune 90 $PY bench/finetune.py --device "$DEVICE" --precision $FT_PRECISION --fov-size $FT_SIZE $FT_ARGS

# torchrun (NCCL on GPUs, gloo on CPU): the demo's embeddings from the ranks equal one process's.
torchrun_check() {
  "$PY" -m ocbench --cache-dir "$OUT/cache-one" embed --backbone tiny-vit-random --dataset demo \
      --device "$TR_DEVICE" --export "$OUT/one.npz" > /dev/null || return 1
  torchrun --nproc-per-node "$NPROC" -m ocbench --cache-dir "$OUT/cache-ranks" embed --backbone tiny-vit-random \
      --dataset demo --device "$TR_DEVICE" --export "$OUT/ranks.npz" > /dev/null || return 1
  "$PY" - <<'EOF'
import os

import numpy as np

one, ranks = np.load(os.environ["OUT"] + "/one.npz"), np.load(os.environ["OUT"] + "/ranks.npz")
assert list(one["ids"]) == list(ranks["ids"]), "the item order differs"
diff = float(np.abs(one["features"] - ranks["features"]).max())
print(f"torchrun, {os.environ['NPROC']} processes on {os.environ['TR_DEVICE']} vs one process: "
      f"{len(one['ids'])} FOVs, max |difference| {diff:.2e}")
assert diff < 1e-3, "torchrun embeddings differ from a one-process run"
EOF
}
NPROC=2
TR_DEVICE=cpu
if [ "$DEVICE" = "cuda" ] && [ "$("$PY" -c "import torch; print(torch.cuda.device_count())")" -ge 2 ]; then
  NPROC=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  TR_DEVICE=cuda
elif [ "$DEVICE" = "cuda" ]; then
  echo "== one GPU: the torchrun check runs 2 processes on CPU with gloo (NCCL needs one GPU per process)"
fi
export -f torchrun_check
export OUT PY TR_DEVICE NPROC
step torchrun 60 bash -c torchrun_check

# The plan: FLOPs counted per backbone, decode/crop rates measured here (on this machine's cores),
# the estimated time of the paper's Table 1 and Table 4 grids on 1 and 8 GPUs (assumed MFU).
# shellcheck disable=SC2086
step gpu-plan 30 $PY bench/gpu_plan.py $PLAN_ARGS

echo "== results in $OUT/"
if [ ${#failed[@]} -gt 0 ]; then
  echo "== failed: ${failed[*]}"
  exit 1
fi
