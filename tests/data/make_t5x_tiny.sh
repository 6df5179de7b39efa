#!/usr/bin/env bash
# Regenerates tests/data/t5x_tiny: a checkpoint written by upstream `t5x.train` (not by flip_t5x),
# which the tests read to prove flip_t5x reads what t5x writes. Maintainer tool, never run by CI.
#
#   scripts/check_t5x_parity.sh /path/to/t5x WORK    # builds WORK/venv (real t5x) and WORK/stubs
#   tests/data/make_t5x_tiny.sh WORK
#
# Model: tests/data/t5x_tiny.gin (flip_tiny.gin at smaller sizes). Data: 16 synthetic 16-px
# captioned images, 4 per shard, so the saved tf.data position (which holds the TFRecord read
# buffer) stays small. 2 steps of batch 4; only checkpoint_2 is kept (~0.1 MB).
set -euo pipefail
WORK="$(cd "${1:?usage: $0 WORK_DIR_OF_check_t5x_parity.sh}" && pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="$WORK/venv/bin/python"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
export PYTHONPATH="$WORK/stubs" JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=2
"$PY" - "$TMP" <<'PYEOF'
import os, sys
import numpy as np
from PIL import Image
out = sys.argv[1]
rng = np.random.default_rng(0)
os.makedirs(f"{out}/photos")
colors = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
with open(f"{out}/captions.txt", "w") as captions:
  for i in range(16):
    name = list(colors)[i % 4]
    x = rng.integers(0, 60, size=(16, 16, 3)) + np.array(colors[name])[None, None] // 2
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(f"{out}/photos/{i:03d}.jpg")
    text = f"a photo of a {name} square number {i % 3}"
    with open(f"{out}/photos/{i:03d}.txt", "w") as f:
      f.write(text + "\n")
    captions.write(text + "\n")
PYEOF
cd "$ROOT"
"$PY" -m flip_t5x.make_shards --images_dir="$TMP/photos" --output_dir="$TMP/shards" --prefix=tiny \
  --examples_per_shard=4 >"$TMP/make_shards.log" 2>&1
"$PY" -m flip_t5x.build_vocab --captions="$TMP/captions.txt" --vocab_size=100 \
  --output="$TMP/vocab.txt" >"$TMP/build_vocab.log" 2>&1
"$PY" -m t5x.train --gin_file=tests/data/t5x_tiny.gin --gin_file=gin_configs/runs/pretrain.gin \
  --gin.MODEL_DIR="'$TMP/run'" --gin.TRAIN_STEPS=2 --gin.CHECKPOINT_PERIOD=2 --gin.RANDOM_SEED=0 \
  --gin.MIXTURE_OR_TASK_NAME="'flip_img2dataset'" --gin.TRAIN_DATA_PATTERN="'$TMP/shards/*.tfrecord'" \
  --gin.VOCAB_FILE="'$TMP/vocab.txt'" --gin.TASK_FEATURE_LENGTHS="{'image': 16, 'targets': 16}" \
  --gin.BATCH_SIZE=4 --gin.WARMUP_STEPS=1 --gin.WARMUP_EPOCHS=None \
  --gin.tasks.TaskConfig.record_shuffle_buffer_size=4 >"$TMP/train.log" 2>&1 \
  || { tail -20 "$TMP/train.log"; exit 1; }
rm -rf tests/data/t5x_tiny
mkdir -p tests/data/t5x_tiny
cp -r "$TMP/run/checkpoint_2" tests/data/t5x_tiny/
du -sh tests/data/t5x_tiny
