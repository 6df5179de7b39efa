#!/usr/bin/env bash
# The main job. Until the training binaries land this runs the smallest end-to-end path that
# exists: build FLIP ViT-B/16 from its gin file and print its sizes and FLOPs at mask 0 / 0.5.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
for ratio in 0.0 0.5 0.75; do
  .venv/bin/python -m flip_t5x.model_info --gin_file=gin_configs/models/flip_vit_b16.gin \
    --gin.MASK_RATIO="$ratio" 2>/dev/null | tail -n 1
done
