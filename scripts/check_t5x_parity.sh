#!/usr/bin/env bash
# check_t5x_parity.sh: maintainer tool. Checks that flip_t5x's model and gin files run under
# UPSTREAM t5x (`python -m t5x.train` / `python -m t5x.eval`), on a tiny model and tiny data, on
# CPU. Not run by CI or the test suite: upstream t5x is not on PyPI and is never a dependency of
# flip_t5x; nothing of t5x is copied into this repository.
#
#   scripts/check_t5x_parity.sh /path/to/t5x [WORK_DIR]
#
# /path/to/t5x: a t5x source checkout (the directory holding setup.py and t5x/train.py), or a
#   bare git repository of one (its HEAD is exported).
# WORK_DIR (default ${TMPDIR:-/tmp}/flip_t5x_t5x_parity; must be outside the repository) gets:
#   venv/     a separate virtual environment: this project's dependencies (`pip install -e .`,
#             from your usual index/cache), t5x with --no-deps, and the pure-python packages t5x
#             needs beyond ours (fiddle, tensorstore, jaxtyping, chex, cached_property). Reused
#             on later runs; delete it to rebuild. The project's own .venv is never touched.
#   stubs/    on PYTHONPATH for every t5x command: a throwaway `airio` stub (t5x/utils.py
#             imports airio.core at the top; airio is not on PyPI and t5x only needs its names for
#             isinstance checks) and a sitecustomize that gives jax.experimental.pjit back the
#             `PartitionSpec` jestimator 0.3.3 imports (t5x imports jestimator before flip_t5x
#             can patch it).
#   data/     tiny synthetic data built with the project's own tools: captioned images ->
#             img2dataset shards (flip_t5x.make_shards), a WordPiece vocabulary
#             (flip_t5x.build_vocab) and a class-per-folder zero-shot tree.
#   runs/     MODEL_DIRs, eval outputs and one log per check (runs/<check>.log).
#
# Checks (one PASS/FAIL line each; the exit status is the number of failures):
#   pretrain          t5x.train, models/flip_tiny.gin + runs/pretrain.gin, 5 steps: checkpoint_5.
#   unmasked_tuning   t5x.train + runs/unmasked_tuning.gin from pretrain's checkpoint_5: parameters
#                     restored, optimizer state re-initialised, steps restart at 0 (checkpoint_3).
#   exp/<file>        t5x.train on each top-level experiment gin_configs/flip_*.gin with the tiny
#                     model swapped in (2 steps on 2 CPU devices; t5x's CPU mesh puts both on
#                     `model`, so PARTITION_STATES has no `data` axis to shard over here).
#   eval_zeroshot     t5x.eval + runs/eval.gin on flip_folder_zeroshot_seqio: top1/top5 logged.
#   eval_experiment   t5x.eval + runs/eval_zeroshot_imagenet.gin, tiny model and folder task
#                     swapped in.
#   flip_train, flip_eval
#                     flip_t5x's own binaries in the same environment (t5x_interop.T5X_AVAILABLE is
#                     True there, so flip_t5x.runtime re-exports t5x's classes).
#   One checkpoint format (t5x's orbax layout), across runtimes:
#   t5x_to_flip_eval, t5x_to_flip_predict
#                     flip_t5x.eval / flip_t5x.predict on t5x.train's checkpoint_5.
#   flip_to_t5x_eval  t5x.eval on flip_t5x.train's checkpoint_3.
#   t5x_resumes_flip, flip_resumes_t5x
#                     each train binary resumes the other's MODEL_DIR at learning rate 0: step,
#                     parameters (bit-identical) and optimizer counts continue. The tf.data
#                     position does not cross (t5x's seqio pipeline and flip_t5x's are different
#                     graphs): flip_t5x.train falls back to skipping `step` batches with a warning;
#                     t5x.train has no fallback and resumes with save_dataset=False.
# Takes ~10 minutes on 2 CPU cores once the venv exists.
set -uo pipefail

if [ $# -lt 1 ] || [ ! -e "$1" ]; then
  echo "usage: $0 /path/to/t5x-checkout [WORK_DIR]" >&2
  exit 64
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T5X_IN="$(cd "$1" && pwd)"
WORK="${2:-${TMPDIR:-/tmp}/flip_t5x_t5x_parity}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
case "$WORK/" in
  "$ROOT"/*) echo "WORK_DIR must be outside the repository ($ROOT)" >&2; exit 64 ;;
esac
PYTHON="${PYTHON:-python3}"
VENV="$WORK/venv"
PY="$VENV/bin/python"
STUBS="$WORK/stubs"
DATA="$WORK/data"
RUNS="$WORK/runs"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export JAX_PLATFORMS=cpu

log() { echo "[t5x-parity] $*" >&2; }

# ------------------------------------------------------------------ t5x source
if [ -f "$T5X_IN/t5x/train.py" ]; then
  T5X_SRC="$T5X_IN"
elif git -C "$T5X_IN" rev-parse --git-dir >/dev/null 2>&1; then
  T5X_SRC="$WORK/t5x-src"
  if [ ! -f "$T5X_SRC/t5x/train.py" ]; then
    log "exporting t5x HEAD from $T5X_IN"
    mkdir -p "$T5X_SRC"
    # testdata may be stored out of line (LFS); the checks do not need it.
    git -C "$T5X_IN" archive HEAD -- . ':(exclude)*/testdata/*' 2>"$WORK/git_archive.log" \
      | tar -x -C "$T5X_SRC"
    [ -f "$T5X_SRC/t5x/train.py" ] || exit 1
  fi
else
  echo "$T5X_IN is neither a t5x checkout nor a git repository of one" >&2
  exit 64
fi

# ------------------------------------------------------------------ venv
if [ ! -f "$VENV/.parity_ready" ]; then
  log "building $VENV (first run: a few minutes)"
  "$PYTHON" -m venv "$VENV" || exit 1
  "$PY" -m pip install -q -e "$ROOT" || exit 1
  "$PY" -m pip install -q --no-deps -e "$T5X_SRC" || exit 1
  "$PY" -m pip install -q fiddle tensorstore jaxtyping chex cached_property || exit 1
  touch "$VENV/.parity_ready"
fi

# ------------------------------------------------------------------ stubs
mkdir -p "$STUBS/airio/core"
echo '"""Throwaway airio stub for running upstream t5x without airio (check_t5x_parity.sh)."""' \
  > "$STUBS/airio/__init__.py"
cat > "$STUBS/airio/core/__init__.py" <<'EOF'
"""Names t5x uses in isinstance checks and type hints; no airio task can exist here."""
from airio.core import dataset_providers  # noqa: F401


class Task: pass
class Mixture: pass
class DatasetProviderBase: pass
class AirIODatasetIterator: pass
EOF
cat > "$STUBS/airio/core/dataset_providers.py" <<'EOF'
def get_vocabularies(mixture_or_task):
  raise NotImplementedError("airio is stubbed out")
EOF
cat > "$STUBS/sitecustomize.py" <<'EOF'
"""jestimator 0.3.3 imports PartitionSpec from jax.experimental.pjit, which jax dropped."""
try:
  import jax.experimental.pjit as _pjit
  import jax.sharding as _sharding
  if not hasattr(_pjit, "PartitionSpec"):
    _pjit.PartitionSpec = _sharding.PartitionSpec
except Exception:  # pylint: disable=broad-except
  pass
EOF
export PYTHONPATH="$STUBS${PYTHONPATH:+:$PYTHONPATH}"
if ! (cd "$ROOT" && "$PY" -c "from flip_t5x.runtime import t5x_interop; assert t5x_interop.T5X_AVAILABLE") \
    >"$WORK/import.log" 2>&1; then
  log "t5x does not import in $VENV (see $WORK/import.log)"
  tail -5 "$WORK/import.log" >&2
  exit 1
fi

# ------------------------------------------------------------------ tiny data
if [ ! -f "$DATA/.ready" ]; then
  log "writing tiny data to $DATA"
  rm -rf "$DATA" && mkdir -p "$DATA"
  (cd "$ROOT" && "$PY" - "$DATA" <<'EOF'
import os, sys
import numpy as np
from PIL import Image
data = sys.argv[1]
rng = np.random.default_rng(0)
colors = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
shapes = ["square", "stripe"]
os.makedirs(f"{data}/photos")
def image(color, shape):
  x = rng.integers(0, 60, size=(32, 32, 3)).astype(np.int32)
  if shape == "square":
    x[8:24, 8:24] += colors[color]
  else:
    x[:, 12:20] += colors[color]
  return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
for i in range(96):
  color, shape = list(colors)[i % 4], shapes[(i // 4) % 2]
  image(color, shape).save(f"{data}/photos/{i:04d}.jpg")
  with open(f"{data}/photos/{i:04d}.txt", "w") as f:
    f.write(f"a photo of a {color} {shape} number {i % 7}\n")
  with open(f"{data}/captions.txt", "a") as f:
    f.write(f"a photo of a {color} {shape} number {i % 7}\n")
for color in colors:
  os.makedirs(f"{data}/zeroshot/{color}")
  for j in range(6):
    image(color, shapes[j % 2]).save(f"{data}/zeroshot/{color}/{j:03d}.png")
EOF
  ) || exit 1
  (cd "$ROOT" && "$PY" -m flip_t5x.make_shards --images_dir="$DATA/photos" \
      --output_dir="$DATA/shards" --prefix=tiny --examples_per_shard=48) \
      >"$DATA/make_shards.log" 2>&1 || { tail -5 "$DATA/make_shards.log"; exit 1; }
  (cd "$ROOT" && "$PY" -m flip_t5x.build_vocab --captions="$DATA/captions.txt" --vocab_size=200 \
      --output="$DATA/vocab.txt") >"$DATA/build_vocab.log" 2>&1 \
      || { tail -5 "$DATA/build_vocab.log"; exit 1; }
  touch "$DATA/.ready"
fi

# ------------------------------------------------------------------ checks
mkdir -p "$RUNS"
FAILED=0
RESULTS=()
record() {  # record NAME STATUS DETAIL
  RESULTS+=("$(printf '%-28s %s  %s' "$1" "$2" "$3")")
  echo "$(printf '%-28s %s  %s' "$1" "$2" "$3")"
  [ "$2" = PASS ] || FAILED=$((FAILED + 1))
}
# run NAME CMD...: runs CMD from the repository root, output to runs/NAME.log; returns its status.
run() {
  local name="$1"; shift
  local logf="$RUNS/${name//\//_}.log"
  log "$name"
  (cd "$ROOT" && timeout "${CHECK_TIMEOUT:-900}" "$@") >"$logf" 2>&1
}
fail_detail() {  # the first error line of a check's log
  grep -E "^[A-Za-z_.]*(Error|Exception)\b|error:" "$RUNS/${1//\//_}.log" | grep -v cuInit | head -1 \
    | cut -c1-200
}

TINY=(--gin_file=gin_configs/models/flip_tiny.gin)
DATA_ARGS=(--gin.TRAIN_DATA_PATTERN="\"$DATA/shards/*.tfrecord\"" --gin.VOCAB_FILE="\"$DATA/vocab.txt\""
           --gin.TASK_FEATURE_LENGTHS="{'image': 32, 'targets': 16}" --gin.BATCH_SIZE=8
           --gin.WARMUP_STEPS=1 --gin.WARMUP_EPOCHS=None)

# 1. pre-training
rm -rf "$RUNS/pretrain"
if run pretrain "$PY" -m t5x.train "${TINY[@]}" --gin_file=gin_configs/runs/pretrain.gin \
    --gin.MODEL_DIR="\"$RUNS/pretrain\"" --gin.TRAIN_STEPS=5 --gin.CHECKPOINT_PERIOD=5 \
    --gin.MIXTURE_OR_TASK_NAME="'flip_img2dataset'" "${DATA_ARGS[@]}" \
    && [ -d "$RUNS/pretrain/checkpoint_5" ]; then
  record pretrain PASS "$(grep -o 'collection=train .*loss=[0-9.e+-]*' "$RUNS/pretrain.log" | tail -1 | grep -o 'loss=[0-9.e+-]*' | tail -1)"
else
  record pretrain FAIL "$(fail_detail pretrain)"
fi

# 2. unmasked tuning from the t5x checkpoint: params only, fresh optimizer, step 0
rm -rf "$RUNS/unmasked_tuning"
if [ -d "$RUNS/pretrain/checkpoint_5" ] && run unmasked_tuning "$PY" -m t5x.train "${TINY[@]}" \
    --gin_file=gin_configs/runs/pretrain.gin --gin_file=gin_configs/runs/unmasked_tuning.gin \
    --gin.MODEL_DIR="\"$RUNS/unmasked_tuning\"" --gin.TRAIN_STEPS=3 --gin.CHECKPOINT_PERIOD=3 \
    --gin.INITIAL_CHECKPOINT_PATH="\"$RUNS/pretrain/checkpoint_5\"" \
    --gin.MIXTURE_OR_TASK_NAME="'flip_img2dataset'" "${DATA_ARGS[@]}" \
    && [ -d "$RUNS/unmasked_tuning/checkpoint_3" ] \
    && ! grep -q "Initializing param=target" "$RUNS/unmasked_tuning.log" \
    && grep -q "Initializing param=state/param_states" "$RUNS/unmasked_tuning.log" \
    && "$PY" - "$RUNS/pretrain/checkpoint_5/state" "$RUNS/unmasked_tuning/checkpoint_0/state" \
        >>"$RUNS/unmasked_tuning.log" 2>&1 <<'EOF'
import sys
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
a, b = (ocp.PyTreeCheckpointer().restore(p) for p in sys.argv[1:3])
fa, fb = (traverse_util.flatten_dict(x["target"], sep="/") for x in (a, b))
assert fa.keys() == fb.keys(), "parameter names differ"
diff = [k for k in fa if not np.array_equal(np.asarray(fa[k]), np.asarray(fb[k]))]
assert not diff, f"parameters not restored: {diff[:5]}"
assert int(np.asarray(b["state"]["step"])) == 0, "step was not reset"
print("unmasked_tuning: parameters identical to the pre-training checkpoint; step 0")
EOF
then
  record unmasked_tuning PASS "params restored, optimizer fresh, steps 0..3"
else
  record unmasked_tuning FAIL "$(fail_detail unmasked_tuning)"
fi

# 3. top-level experiments, tiny model swapped in, 2 CPU devices
for exp in "$ROOT"/gin_configs/flip_*.gin; do
  name="exp/$(basename "$exp")"
  dir="$RUNS/exp_$(basename "$exp" .gin)"
  rm -rf "$dir"
  # The experiment, then the tiny model over it (which resets OPTIMIZER: bind it back).
  swap="$RUNS/exp_$(basename "$exp")"
  cat > "$swap" <<EOF
from __gin__ import dynamic_registration
from flip_t5x.runtime import optimizers
include 'gin_configs/$(basename "$exp")'
include 'gin_configs/models/flip_tiny.gin'
OPTIMIZER = @optimizers.adamw()
EOF
  if XLA_FLAGS="--xla_force_host_platform_device_count=2" run "$name" "$PY" -m t5x.train \
      --gin_file="$swap" --gin.MODEL_DIR="\"$dir\"" \
      --gin.TRAIN_STEPS=2 --gin.CHECKPOINT_PERIOD=2 "${DATA_ARGS[@]}" \
      && [ -d "$dir/checkpoint_2" ]; then
    record "$name" PASS "2 steps on 2 devices"
  else
    record "$name" FAIL "$(fail_detail "$name")"
  fi
done

# 4. zero-shot eval of the t5x checkpoint through seqio's Evaluator
EVAL_ARGS=(--gin.CHECKPOINT_PATH="\"$RUNS/pretrain/checkpoint_5\"" --gin.VOCAB_FILE="\"$DATA/vocab.txt\""
           --gin.MIXTURE_OR_TASK_NAME="'flip_folder_zeroshot_seqio'"
           --gin.ZEROSHOT_FOLDER="\"$DATA/zeroshot\"" --gin.utils.DatasetConfig.split="'validation'")
rm -rf "$RUNS/eval_zeroshot"
if run eval_zeroshot "$PY" -m t5x.eval "${TINY[@]}" --gin_file=gin_configs/runs/eval.gin \
    --gin.EVAL_OUTPUT_DIR="\"$RUNS/eval_zeroshot\"" "${EVAL_ARGS[@]}" \
    && grep -q "flip_folder_zeroshot_seqio/top1 at step 5" "$RUNS/eval_zeroshot.log"; then
  record eval_zeroshot PASS "$(grep -o 'top[15] at step 5: [0-9.]*' "$RUNS/eval_zeroshot.log" | tr '\n' ' ')"
else
  record eval_zeroshot FAIL "$(fail_detail eval_zeroshot)"
fi

rm -rf "$RUNS/eval_experiment"
if run eval_experiment "$PY" -m t5x.eval --gin_file=gin_configs/runs/eval_zeroshot_imagenet.gin \
    "${TINY[@]}" --gin.TASK_FEATURE_LENGTHS=None --gin.utils.DatasetConfig.batch_size=8 \
    --gin.EVAL_OUTPUT_DIR="\"$RUNS/eval_experiment\"" "${EVAL_ARGS[@]}" \
    && grep -q "flip_folder_zeroshot_seqio/top1 at step 5" "$RUNS/eval_experiment.log"; then
  record eval_experiment PASS "$(grep -o 'top1 at step 5: [0-9.]*' "$RUNS/eval_experiment.log")"
else
  record eval_experiment FAIL "$(fail_detail eval_experiment)"
fi

# 5. flip_t5x's own binaries with t5x installed (same gin files)
rm -rf "$RUNS/flip_train"
if run flip_train "$PY" -m flip_t5x.train "${TINY[@]}" --gin_file=gin_configs/runs/pretrain.gin \
    --gin.MODEL_DIR="\"$RUNS/flip_train\"" --gin.TRAIN_STEPS=3 --gin.CHECKPOINT_PERIOD=3 \
    --gin.MIXTURE_OR_TASK_NAME="'flip_img2dataset'" "${DATA_ARGS[@]}" \
    && [ -d "$RUNS/flip_train/checkpoint_3" ]; then
  record flip_train PASS "3 steps"
else
  record flip_train FAIL "$(fail_detail flip_train)"
fi
# flip_t5x.eval's arguments on the zero-shot folder (its checkpoint and output dir added per check).
FLIP_EVAL_ARGS=(--gin_file=gin_configs/runs/eval.gin --gin.VOCAB_FILE="\"$DATA/vocab.txt\""
                --gin.MIXTURE_OR_TASK_NAME="'flip_folder_zeroshot'" --gin.ZEROSHOT_FOLDER="\"$DATA/zeroshot\""
                --gin.utils.DatasetConfig.split="'validation'" --gin.utils.DatasetConfig.batch_size=8)
rm -rf "$RUNS/flip_eval"
if [ -d "$RUNS/flip_train/checkpoint_3" ] && run flip_eval "$PY" -m flip_t5x.eval "${TINY[@]}" \
    "${FLIP_EVAL_ARGS[@]}" --gin.EVAL_OUTPUT_DIR="\"$RUNS/flip_eval\"" \
    --gin.CHECKPOINT_PATH="\"$RUNS/flip_train/checkpoint_3\"" \
    && [ -f "$RUNS/flip_eval/zeroshot_metrics.json" ]; then
  record flip_eval PASS "$(tail -1 "$RUNS/flip_eval.log" | cut -c1-120)"
else
  record flip_eval FAIL "$(fail_detail flip_eval)"
fi

# 6. one checkpoint format: each runtime reads, evaluates and resumes what the other wrote.
rm -rf "$RUNS/t5x_to_flip_eval"
if [ -d "$RUNS/pretrain/checkpoint_5" ] && run t5x_to_flip_eval "$PY" -m flip_t5x.eval "${TINY[@]}" \
    "${FLIP_EVAL_ARGS[@]}" --gin.EVAL_OUTPUT_DIR="\"$RUNS/t5x_to_flip_eval\"" \
    --gin.CHECKPOINT_PATH="\"$RUNS/pretrain\"" \
    && grep -q '"checkpoint_step": 5' "$RUNS/t5x_to_flip_eval/zeroshot_metrics.json"; then
  record t5x_to_flip_eval PASS "t5x.train's checkpoint_5: $(grep -o '"top1": [0-9.]*' "$RUNS/t5x_to_flip_eval/zeroshot_metrics.json" | head -n 1)"
else
  record t5x_to_flip_eval FAIL "$(fail_detail t5x_to_flip_eval)"
fi

if [ -d "$RUNS/pretrain/checkpoint_5" ] && run t5x_to_flip_predict "$PY" -m flip_t5x.predict \
    --checkpoint="$RUNS/pretrain/checkpoint_5" --gin_file=gin_configs/models/flip_tiny.gin \
    --vocab_file="$DATA/vocab.txt" --images="$DATA/zeroshot/red" --labels=red,green,blue,yellow \
    --format=jsonl \
    && [ "$(grep -c '"labels"' "$RUNS/t5x_to_flip_predict.log")" = 6 ]; then
  record t5x_to_flip_predict PASS "6 images labelled from t5x.train's checkpoint_5"
else
  record t5x_to_flip_predict FAIL "$(fail_detail t5x_to_flip_predict)"
fi

rm -rf "$RUNS/flip_to_t5x_eval"
if [ -d "$RUNS/flip_train/checkpoint_3" ] && run flip_to_t5x_eval "$PY" -m t5x.eval "${TINY[@]}" \
    --gin_file=gin_configs/runs/eval.gin --gin.EVAL_OUTPUT_DIR="\"$RUNS/flip_to_t5x_eval\"" \
    --gin.CHECKPOINT_PATH="\"$RUNS/flip_train/checkpoint_3\"" --gin.VOCAB_FILE="\"$DATA/vocab.txt\"" \
    --gin.MIXTURE_OR_TASK_NAME="'flip_folder_zeroshot_seqio'" --gin.ZEROSHOT_FOLDER="\"$DATA/zeroshot\"" \
    --gin.utils.DatasetConfig.split="'validation'" \
    && grep -q "flip_folder_zeroshot_seqio/top1 at step 3" "$RUNS/flip_to_t5x_eval.log"; then
  record flip_to_t5x_eval PASS "flip_t5x.train's checkpoint_3: $(grep -o 'top1 at step 3: [0-9.]*' "$RUNS/flip_to_t5x_eval.log")"
else
  record flip_to_t5x_eval FAIL "$(fail_detail flip_to_t5x_eval)"
fi

# Resuming the other runtime's MODEL_DIR at learning rate 0: the parameters must stay
# bit-identical, the step and every optax `count` must go on from the checkpoint's (a fresh
# optimizer would count from 0), so step, parameters and optimizer state were restored exactly.
check_resumed() {  # check_resumed NAME BEFORE_STEP_DIR AFTER_STEP_DIR STEP
  "$PY" - "$2" "$3" "$4" >>"$RUNS/$1.log" 2>&1 <<'EOF'
import sys
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
before, after, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
with ocp.PyTreeCheckpointer() as ckptr:
  a, b = (ckptr.restore(f"{p}/state") for p in (before, after))
fa, fb = (traverse_util.flatten_dict(x["target"], sep="/") for x in (a, b))
assert fa.keys() == fb.keys(), "parameter names differ"
diff = [k for k in fa if not np.array_equal(np.asarray(fa[k]), np.asarray(fb[k]))]
assert not diff, f"parameters not restored exactly: {diff[:5]}"
def counts(x):
  flat = traverse_util.flatten_dict(x["state"]["param_states"], sep="/")
  return {int(np.asarray(v)) for k, v in flat.items() if k.endswith("count")}
start = int(np.asarray(a["state"]["step"]))
assert counts(a) == {start}, counts(a)
assert int(np.asarray(b["state"]["step"])) == step, "step did not continue"
assert counts(b) == {step}, f"optimizer counts {counts(b)}: state not continued from {start}"
print(f"resume check: step {start} -> {step}, parameters bit-identical, optimizer counts {start} -> {step}")
EOF
}
LR0=(--gin.BASE_LEARNING_RATE=0.0)
rm -rf "$RUNS/t5x_resumes_flip"
# t5x restores a tf.data iterator only into an identical graph and has no fallback: its seqio
# pipeline is not flip_t5x's, so it resumes with save_dataset=False (its stream starts over).
if [ -d "$RUNS/flip_train/checkpoint_3" ] && cp -r "$RUNS/flip_train" "$RUNS/t5x_resumes_flip" \
    && run t5x_resumes_flip "$PY" -m t5x.train "${TINY[@]}" --gin_file=gin_configs/runs/pretrain.gin \
    --gin.MODEL_DIR="\"$RUNS/t5x_resumes_flip\"" --gin.TRAIN_STEPS=5 --gin.CHECKPOINT_PERIOD=5 \
    --gin.MIXTURE_OR_TASK_NAME="'flip_img2dataset'" "${DATA_ARGS[@]}" "${LR0[@]}" \
    --gin.utils.SaveCheckpointConfig.save_dataset=False \
    && check_resumed t5x_resumes_flip "$RUNS/flip_train/checkpoint_3" \
       "$RUNS/t5x_resumes_flip/checkpoint_5" 5; then
  record t5x_resumes_flip PASS "$(tail -1 "$RUNS/t5x_resumes_flip.log" | cut -c15-); data: t5x starts its stream over (save_dataset=False)"
else
  record t5x_resumes_flip FAIL "$(fail_detail t5x_resumes_flip)"
fi

rm -rf "$RUNS/flip_resumes_t5x"
if [ -d "$RUNS/pretrain/checkpoint_5" ] && mkdir -p "$RUNS/flip_resumes_t5x" \
    && cp -r "$RUNS/pretrain/checkpoint_5" "$RUNS/flip_resumes_t5x/" \
    && run flip_resumes_t5x "$PY" -m flip_t5x.train "${TINY[@]}" --gin_file=gin_configs/runs/pretrain.gin \
    --gin.MODEL_DIR="\"$RUNS/flip_resumes_t5x\"" --gin.TRAIN_STEPS=7 --gin.CHECKPOINT_PERIOD=7 \
    --gin.MIXTURE_OR_TASK_NAME="'flip_img2dataset'" "${DATA_ARGS[@]}" "${LR0[@]}" \
    && check_resumed flip_resumes_t5x "$RUNS/pretrain/checkpoint_5" \
       "$RUNS/flip_resumes_t5x/checkpoint_7" 7; then
  if grep -q "input stream repositioned" "$RUNS/flip_resumes_t5x.log"; then
    data="data position restored from t5x's dataset item"
  else
    data="t5x's tf.data position does not fit flip_t5x's pipeline: skipped 5 batches (warned)"
  fi
  record flip_resumes_t5x PASS "$(tail -1 "$RUNS/flip_resumes_t5x.log" | cut -c15-); $data"
else
  record flip_resumes_t5x FAIL "$(fail_detail flip_resumes_t5x)"
fi

echo
echo "t5x parity ($T5X_SRC; logs in $RUNS):"
printf '  %s\n' "${RESULTS[@]}"
exit "$FAILED"
