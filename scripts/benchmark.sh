#!/usr/bin/env bash
# The standard train-step benchmark set (flip_t5x.benchmark); each run prints one JSON line last.
#
#   scripts/benchmark.sh [--vs-openclip] [--quick] [--out DIR] [extra benchmark flags...]
#
# CPU: a ViT-B/16-proportioned model at depth 4 (both towers), batch 32, float32; under 2 minutes
# on 2 cores. Accelerator (GPU/TPU): the real B/16 and L/16 in bfloat16 as well (on a GPU, L/16
# also with cuDNN's fused attention).
# --vs-openclip: also time OpenCLIP's PyTorch step with patch_dropout on the same shapes, in a
#   separate Python (OPENCLIP_PYTHON, default .venv-openclip/bin/python) with torch and
#   open_clip_torch; skipped with a note when that Python lacks them.
# --gpu-memory: also compile ViT-L/16 at batch 4,096 for an H100 80GB that is not attached
#   (--memory_only --target_config), in .venv-cuda (CUDA_PYTHON), which has jax's CUDA plugin.
# --quick: one round (a smoke run).
# Results go to DIR (default benchmark_results/) as <name>.json and are echoed.
#
# The allocator (jemalloc when installed) is chosen in scripts/_env.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

vs_openclip=0
gpu_memory=0
rounds=3
out_dir=benchmark_results
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --vs-openclip) vs_openclip=1 ;;
    --gpu-memory) gpu_memory=1 ;;
    --quick) rounds=1 ;;
    --out) out_dir="$2"; shift ;;
    *) extra+=("$1") ;;
  esac
  shift
done
mkdir -p "$out_dir"

openclip_flag=()
if [ "$vs_openclip" = 1 ]; then
  oc_python="${OPENCLIP_PYTHON:-.venv-openclip/bin/python}"
  if [ -x "$oc_python" ] && "$oc_python" -c "import sys, types; \
sys.modules['torchvision._meta_registrations'] = types.ModuleType('m'); import torch, open_clip" \
      >/dev/null 2>&1; then
    openclip_flag=(--openclip_python="$oc_python")
  else
    echo "[benchmark] --vs-openclip: $oc_python has no torch/open_clip_torch; skipping OpenCLIP." >&2
    echo "[benchmark]   set it up apart from .venv: python3 -m venv .venv-openclip && \\" >&2
    echo "[benchmark]   .venv-openclip/bin/pip install torch && .venv-openclip/bin/pip install \\" >&2
    echo "[benchmark]   --no-deps open_clip_torch torchvision && .venv-openclip/bin/pip install \\" >&2
    echo "[benchmark]   numpy pillow ftfy regex tqdm" >&2
  fi
fi

platform="$(.venv/bin/python -c 'import jax; print(jax.devices()[0].platform)' 2>/dev/null)"
B16=gin_configs/models/flip_vit_b16.gin
L16=gin_configs/models/flip_vit_l16.gin

run() {  # name, then benchmark flags
  local name="$1"; shift
  echo "[benchmark] $name" >&2
  .venv/bin/python -m flip_t5x.benchmark --rounds="$rounds" --output_json="$out_dir/$name.json" \
    "$@" "${extra[@]}" | tail -n 1
}

# ViT-B/16 proportions at depth 4: the CPU reference point (the numbers in the performance issue).
run vit_b16_depth4_f32 --gin_file="$B16" --gin.network.ImageTowerConfig.depth=4 \
  --gin.network.TextTowerConfig.depth=4 --batch_size=32 "${openclip_flag[@]}"

if [ "$platform" != "cpu" ]; then
  run vit_b16_bf16 --gin_file="$B16" --gin.ACTIVATION_DTYPE="'bfloat16'" --batch_size=256 \
    --steps_per_round=5 --warmup_steps=2 --rounds="$((rounds + 2))"
  run vit_l16_bf16 --gin_file="$L16" --gin.ACTIVATION_DTYPE="'bfloat16'" --batch_size=128 \
    --steps_per_round=5 --warmup_steps=2 --rounds="$((rounds + 2))"
  if [ "$platform" = "gpu" ]; then  # cuDNN's fused attention against XLA's, same shapes
    run vit_l16_bf16_cudnn --gin_file="$L16" --gin.ACTIVATION_DTYPE="'bfloat16'" \
      --gin.network.FlipTwoTower.attention_implementation="'cudnn'" --batch_size=128 \
      --steps_per_round=5 --warmup_steps=2 --rounds="$((rounds + 2))"
  fi
  # What fits: ViT-L/16 at mask 0.5, global batch 4,096, with FLIP's memory options ('minimal'
  # keeps ~191 GiB of activations at this batch, 'full' ~24 GiB: saved_activation_gib).
  run vit_l16_bf16_b4096_memory --gin_file="$L16" --gin.ACTIVATION_DTYPE="'bfloat16'" \
    --gin.REMAT_POLICY="'full'" --batch_size=4096 --mask_ratios=0.5 --memory_only
fi

if [ "$gpu_memory" = 1 ]; then
  cuda_python="${CUDA_PYTHON:-.venv-cuda/bin/python}"
  if [ -x "$cuda_python" ] && "$cuda_python" -c "import jax_plugins.xla_cuda13" >/dev/null 2>&1; then
    for policy in full minimal; do
      echo "[benchmark] vit_l16_bf16_b4096_h100_$policy" >&2
      "$cuda_python" -m flip_t5x.benchmark --gin_file="$L16" --gin.ACTIVATION_DTYPE="'bfloat16'" \
        --gin.REMAT_POLICY="'$policy'" --batch_size=4096 --mask_ratios=0.5 --memory_only \
        --target_config=scripts/gpu_targets/h100_80gb.pbtxt \
        --output_json="$out_dir/vit_l16_bf16_b4096_h100_$policy.json" | tail -n 1
    done
  else
    echo "[benchmark] --gpu-memory: $cuda_python lacks jax's CUDA plugin; skipping. Set it up with" >&2
    echo "[benchmark]   python3 -m venv .venv-cuda && .venv-cuda/bin/pip install -e . 'jax[cuda13]==0.10.2'" >&2
  fi
fi
