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
# Checks (one PASS/FAIL line each; the exit status is the number of failures). Every run binds
# RANDOM_SEED=0, so a rerun reproduces each figure.
#   pretrain          t5x.train, models/flip_tiny.gin + runs/pretrain.gin, 20 steps: checkpoint_20.
#   seeded            t5x.train again, same RANDOM_SEED: checkpoint_20 bit-identical to pretrain's.
#   unmasked_tuning   t5x.train + runs/unmasked_tuning.gin from pretrain's checkpoint_20: parameters
#                     restored, optimizer state re-initialised, steps restart at 0 (checkpoint_3).
#   exp/<file>        t5x.train on each top-level experiment gin_configs/flip_*.gin with the tiny
#                     model swapped in (2 steps on 2 CPU devices; t5x's CPU mesh puts both on
#                     `model`, so PARTITION_STATES has no `data` axis to shard over here).
#   flip_train        flip_t5x.train in this venv (t5x importable), 20 steps: checkpoint_20.
#   flip_train_envs   the same command in the project's own venv (FLIP_PY, default
#                     $ROOT/.venv/bin/python; no t5x there): the same metric keys in
#                     metrics.jsonl and the same trainer.Trainer bindings in operative_config.gin.
#   train_step        t5x.train and flip_t5x.train from the same RANDOM_SEED (same initial state,
#                     masks and batches), compiled alike: parameters and optimizer state after
#                     steps 1 and 2 equal to rtol 1e-5 (here bit-identical), and the logged
#                     learning rate at step 0, at the end of warmup and at the last step equal.
#   zeroshot/<who>, retrieval/<who>
#                     t5x.eval and flip_t5x.eval, each with the README's command (model file, then
#                     runs/eval.gin or runs/eval_retrieval.gin), on t5x.train's checkpoint_20 and
#                     on flip_t5x.train's checkpoint_20: zero-shot top-1/top-5 and retrieval
#                     recall@1/5/10 equal to 1e-6, printed side by side.
#   eval_experiment   t5x.eval, the tiny model file then runs/eval_zeroshot_imagenet.gin, with the
#                     folder task swapped in.
#   One checkpoint format (t5x's orbax layout), across runtimes:
#   t5x_to_flip_predict
#                     flip_t5x.predict on t5x.train's checkpoint_20.
#   t5x_resumes_flip, flip_resumes_t5x
#                     each train binary, plain runs/pretrain.gin command, resumes the other's
#                     MODEL_DIR at learning rate 0: step, parameters (bit-identical) and optimizer
#                     counts continue. Both read FLIP's input pipeline (runs/pretrain.gin's
#                     get_dataset_fn), so the tf.data position crosses too; a position that does
#                     not fit the pipeline skips `step` batches with a warning, in either runtime.
# Takes ~15 minutes on 2 CPU cores once the venv exists.
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
FLIP_PY="${FLIP_PY:-$ROOT/.venv/bin/python}"
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
if [ ! -f "$DATA/.ready-2" ]; then  # -2: the 8-class zero-shot tree
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
for color in colors:  # 8 classes (every name in the vocabulary), so top-5 is scored too
  for shape in shapes:
    os.makedirs(f"{data}/zeroshot/{color}_{shape}")
    for j in range(4):
      image(color, shape).save(f"{data}/zeroshot/{color}_{shape}/{j:03d}.png")
EOF
  ) || exit 1
  (cd "$ROOT" && "$PY" -m flip_t5x.make_shards --images_dir="$DATA/photos" \
      --output_dir="$DATA/shards" --prefix=tiny --examples_per_shard=48) \
      >"$DATA/make_shards.log" 2>&1 || { tail -5 "$DATA/make_shards.log"; exit 1; }
  (cd "$ROOT" && "$PY" -m flip_t5x.build_vocab --captions="$DATA/captions.txt" --vocab_size=200 \
      --output="$DATA/vocab.txt") >"$DATA/build_vocab.log" 2>&1 \
      || { tail -5 "$DATA/build_vocab.log"; exit 1; }
  touch "$DATA/.ready-2"
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
  grep -E "^[A-Za-z_.]*(Error|Exception)\b|error:|^(AssertionError|compare): " \
    "$RUNS/${1//\//_}.log" | grep -v cuInit | head -1 | cut -c1-200
}
# py NAME: runs a python snippet (stdin) in the t5x venv, output appended to NAME's log; its last
# line is the check's detail.
py() {
  local name="$1"; shift
  "$PY" - "$@" >>"$RUNS/${name//\//_}.log" 2>&1
}
detail() { tail -1 "$RUNS/${1//\//_}.log" | cut -c1-400; }

TINY=(--gin_file=gin_configs/models/flip_tiny.gin)
# RANDOM_SEED: every run here is reproducible (t5x.train's too: see the `seeded` check). The
# learning rate and PRE steps of pre-training give checkpoints whose zero-shot scores are not
# chance, for the eval checks.
PRE=20
NEXT=$((PRE + 2))
DATA_ARGS=(--gin.TRAIN_DATA_PATTERN="\"$DATA/shards/*.tfrecord\"" --gin.VOCAB_FILE="\"$DATA/vocab.txt\""
           --gin.TASK_FEATURE_LENGTHS="{'image': 32, 'targets': 16}" --gin.BATCH_SIZE=8
           --gin.WARMUP_STEPS=1 --gin.WARMUP_EPOCHS=None --gin.RANDOM_SEED=0
           --gin.BASE_LEARNING_RATE=0.05)
PRETRAIN=(--gin_file=gin_configs/runs/pretrain.gin --gin.MIXTURE_OR_TASK_NAME="'flip_img2dataset'")

# The state trees of two checkpoints: same names, parameters and optimizer state equal to RTOL
# (0: bit-identical), same step. Prints the largest differences.
compare_states() {  # compare_states NAME STEP_DIR_A STEP_DIR_B RTOL
  py "$1" "$2" "$3" "$4" <<'EOF'
import sys
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
a_dir, b_dir, rtol = sys.argv[1], sys.argv[2], float(sys.argv[3])
with ocp.PyTreeCheckpointer() as ckptr:
  a, b = (ckptr.restore(f"{p}/state") for p in (a_dir, b_dir))
fa, fb = (traverse_util.flatten_dict(x, sep="/") for x in (a, b))
if fa.keys() != fb.keys():
  sys.exit(f"compare: state entries differ: {sorted(set(fa) ^ set(fb))[:5]}")
worst = {"target": (0.0, ""), "state": (0.0, "")}
bad = []
for k in sorted(fa):
  x, y = np.asarray(fa[k], np.float64), np.asarray(fb[k], np.float64)
  # relative to the tensor's scale: moments near 0 are compared against their largest entry
  rel = float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-30)) if x.size else 0.0
  part = k.split("/")[0]
  if rel >= worst[part][0]:
    worst[part] = (rel, k)
  if (rel > rtol) if rtol else not np.array_equal(x, y):
    bad.append(f"{k} ({rel:.2e})")
if bad:
  sys.exit(f"compare: {len(bad)} of {len(fa)} entries differ beyond rtol {rtol:g}: {bad[:3]}")
same = all(np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa)
print(f"{len(fa)} entries " + ("bit-identical" if same else
      f"within rtol {rtol:g} (max rel diff: params {worst['target'][0]:.1e}, optimizer state "
      f"{worst['state'][0]:.1e})"))
EOF
}

# 1. pre-training
rm -rf "$RUNS/pretrain"
if run pretrain "$PY" -m t5x.train "${TINY[@]}" "${PRETRAIN[@]}" \
    --gin.MODEL_DIR="\"$RUNS/pretrain\"" --gin.TRAIN_STEPS=$PRE --gin.CHECKPOINT_PERIOD=$PRE \
    "${DATA_ARGS[@]}" && [ -d "$RUNS/pretrain/checkpoint_$PRE" ]; then
  record pretrain PASS "$(grep -o 'collection=train .*loss=[0-9.e+-]*' "$RUNS/pretrain.log" | tail -1 | grep -o 'loss=[0-9.e+-]*' | tail -1)"
else
  record pretrain FAIL "$(fail_detail pretrain)"
fi

# 2. t5x.train again with the same RANDOM_SEED: the same checkpoint, bit for bit (parameters
# init and masks from RANDOM_SEED, the data order from train/utils.DatasetConfig.seed, which
# runs/pretrain.gin binds to RANDOM_SEED: t5x seeds a dataset without one from the clock).
rm -rf "$RUNS/seeded"
if [ -d "$RUNS/pretrain/checkpoint_$PRE" ] && run seeded "$PY" -m t5x.train "${TINY[@]}" \
    "${PRETRAIN[@]}" --gin.MODEL_DIR="\"$RUNS/seeded\"" --gin.TRAIN_STEPS=$PRE \
    --gin.CHECKPOINT_PERIOD=$PRE "${DATA_ARGS[@]}" \
    && compare_states seeded "$RUNS/pretrain/checkpoint_$PRE" "$RUNS/seeded/checkpoint_$PRE" 0; then
  record seeded PASS "t5x.train twice, RANDOM_SEED=0: checkpoint_$PRE $(detail seeded)"
else
  record seeded FAIL "$(fail_detail seeded)"
fi

# 3. unmasked tuning from the t5x checkpoint: params only, fresh optimizer, step 0
rm -rf "$RUNS/unmasked_tuning"
if [ -d "$RUNS/pretrain/checkpoint_$PRE" ] && run unmasked_tuning "$PY" -m t5x.train "${TINY[@]}" \
    "${PRETRAIN[@]}" --gin_file=gin_configs/runs/unmasked_tuning.gin \
    --gin.MODEL_DIR="\"$RUNS/unmasked_tuning\"" --gin.TRAIN_STEPS=3 --gin.CHECKPOINT_PERIOD=3 \
    --gin.INITIAL_CHECKPOINT_PATH="\"$RUNS/pretrain/checkpoint_$PRE\"" "${DATA_ARGS[@]}" \
    && [ -d "$RUNS/unmasked_tuning/checkpoint_3" ] \
    && ! grep -q "Initializing param=target" "$RUNS/unmasked_tuning.log" \
    && grep -q "Initializing param=state/param_states" "$RUNS/unmasked_tuning.log" \
    && py unmasked_tuning "$RUNS/pretrain/checkpoint_$PRE/state" "$RUNS/unmasked_tuning/checkpoint_0/state" <<'EOF'
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

# 4. top-level experiments, tiny model swapped in, 2 CPU devices
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

# 5. flip_t5x.train in this venv (t5x installed) and in the project's own venv (no t5x): the same
# trainer, the same trainer.Trainer bindings in operative_config.gin, the same metric keys.
rm -rf "$RUNS/flip_train" "$RUNS/flip_train_own_venv"
if run flip_train "$PY" -m flip_t5x.train "${TINY[@]}" "${PRETRAIN[@]}" \
    --gin.MODEL_DIR="\"$RUNS/flip_train\"" --gin.TRAIN_STEPS=$PRE --gin.CHECKPOINT_PERIOD=$PRE \
    "${DATA_ARGS[@]}" && [ -d "$RUNS/flip_train/checkpoint_$PRE" ]; then
  record flip_train PASS "$PRE steps"
else
  record flip_train FAIL "$(fail_detail flip_train)"
fi
if [ ! -x "$FLIP_PY" ]; then
  record flip_train_envs FAIL "no python at FLIP_PY=$FLIP_PY (the project's venv, without t5x)"
elif [ -d "$RUNS/flip_train/checkpoint_$PRE" ] && run flip_train_own_venv "$FLIP_PY" -m flip_t5x.train \
    "${TINY[@]}" "${PRETRAIN[@]}" --gin.MODEL_DIR="\"$RUNS/flip_train_own_venv\"" \
    --gin.TRAIN_STEPS=$PRE --gin.CHECKPOINT_PERIOD=$PRE "${DATA_ARGS[@]}" \
    && py flip_train_own_venv "$RUNS/flip_train" "$RUNS/flip_train_own_venv" <<'EOF'
import json, sys
def keys_and_bindings(model_dir):
  keys = set()
  with open(f"{model_dir}/metrics.jsonl") as f:
    for line in f:
      keys |= set(json.loads(line))
  with open(f"{model_dir}/operative_config.gin") as f:
    bindings = [l.strip() for l in f if l.startswith("trainer.Trainer.")]
  return keys, bindings
(k_t5x, b_t5x), (k_own, b_own) = keys_and_bindings(sys.argv[1]), keys_and_bindings(sys.argv[2])
if k_t5x != k_own:
  sys.exit(f"compare: metric keys differ: t5x venv only {sorted(k_t5x - k_own)}, "
           f"own venv only {sorted(k_own - k_t5x)}")
if b_t5x != b_own or not b_own:
  sys.exit(f"compare: trainer bindings differ: t5x venv {b_t5x} | own venv {b_own}")
assert "learning_rate" in k_own, sorted(k_own)
print(f"{len(k_own)} metric keys (learning_rate among them) and trainer bindings "
      f"{'; '.join(b.replace('trainer.Trainer.', '') for b in b_own)} equal in both venvs")
EOF
then
  record flip_train_envs PASS "$(detail flip_train_own_venv)"
else
  record flip_train_envs FAIL "$(fail_detail flip_train_own_venv)"
fi

# 6. one train step, t5x.train against flip_t5x.train: pre-training from RANDOM_SEED=0, which
# gives both the same initial parameters and masks (flip_t5x.train splits PRNGKey(RANDOM_SEED) as
# t5x.train does), on the same seeded batches (both read FLIP's input pipeline: runs/pretrain.gin's
# get_dataset_fn), compiled alike (flip_t5x.train's CPU matmuls use Eigen by default, t5x's XLA's
# default library: same maths, other rounding; xla_default.gin aligns them). Step 1 runs at
# learning rate 0, so checkpoint_1 holds the initial parameters and the first gradient's moments,
# checkpoint_2 the first update: parameters and optimizer state agree to rtol 1e-5, and the
# learning rate each logs agrees at every step.
STEP=(--gin.TRAIN_STEPS=4 --gin.WARMUP_STEPS=2 --gin.CHECKPOINT_PERIOD=1 --gin.KEEP_CHECKPOINTS=None
      --gin.BASE_LEARNING_RATE=0.05 --gin.EVAL_PERIOD=1)  # no eval bound: metrics every step
printf '%s\n' "from __gin__ import dynamic_registration" "from flip_t5x import xla_options" \
  "xla_options.XlaOptions.cpu_dot_library = 'xla_default'" > "$RUNS/xla_default.gin"
rm -rf "$RUNS/step_t5x" "$RUNS/step_flip"
if run step_t5x "$PY" -m t5x.train "${TINY[@]}" "${PRETRAIN[@]}" "${DATA_ARGS[@]}" "${STEP[@]}" \
       --gin.MODEL_DIR="\"$RUNS/step_t5x\"" \
    && run step_flip "$PY" -m flip_t5x.train "${TINY[@]}" "${PRETRAIN[@]}" \
       --gin_file="$RUNS/xla_default.gin" "${DATA_ARGS[@]}" "${STEP[@]}" \
       --gin.MODEL_DIR="\"$RUNS/step_flip\"" \
    && compare_states step_flip "$RUNS/step_t5x/checkpoint_1" "$RUNS/step_flip/checkpoint_1" 1e-5 \
    && compare_states step_flip "$RUNS/step_t5x/checkpoint_2" "$RUNS/step_flip/checkpoint_2" 1e-5 \
    && py step_flip "$RUNS/step_t5x" "$RUNS/step_flip" <<'EOF'
import glob, json, sys
import numpy as np
import tensorflow as tf
t5x_dir, flip_dir = sys.argv[1:3]
t5x = {}
for path in glob.glob(f"{t5x_dir}/train/events.out.tfevents.*"):
  for event in tf.compat.v1.train.summary_iterator(path):
    for v in event.summary.value:
      if v.tag == "learning_rate":
        t5x[event.step] = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
with open(f"{flip_dir}/metrics.jsonl") as f:
  flip = {r["step"]: r["learning_rate"] for r in map(json.loads, f) if "learning_rate" in r}
# Written after step s+1 is the rate step s used: step 0, the end of warmup (2), the last (3).
points = {"step 0": 1, "warmup end (step 2)": 3, "last (step 3)": 4}
missing = [w for w, s in points.items() if s not in t5x or s not in flip]
if missing or sorted(t5x) != sorted(flip):
  sys.exit(f"compare: learning rate not logged at every step: t5x {sorted(t5x)}, flip {sorted(flip)}")
bad = [s for s in flip if not np.isclose(t5x[s], flip[s], rtol=1e-6, atol=0)]
if bad:
  sys.exit(f"compare: learning rates differ at steps {bad}: t5x {t5x} | flip {flip}")
print("lr t5x.train | flip_t5x.train: " + "; ".join(
    f"{w} {t5x[s]:.6g} | {flip[s]:.6g}" for w, s in points.items()))
EOF
then
  states="$(grep -E '^[0-9]+ entries ' "$RUNS/step_flip.log" | paste -sd';' | sed 's/;/; /')"
  record train_step PASS "checkpoint_1, checkpoint_2: ${states}; $(detail step_flip)"
else
  record train_step FAIL "$(fail_detail step_flip || true) $(fail_detail step_t5x)"
fi

# 7. t5x.eval and flip_t5x.eval, each with the README's command (model file, then the eval file),
# on the same checkpoint: the same zero-shot top-1/top-5 and retrieval recall@1/5/10 (1e-6).
# t5x.eval's figures come from seqio's JSONLogger (EVAL_OUTPUT_DIR/inference_eval/<task>-metrics.jsonl),
# flip_t5x.eval's from its <mode>_metrics.json.
compare_eval() {  # compare_eval NAME T5X_JSONL FLIP_JSON GROUP:KEY[,KEY...] ...
  py "$@" <<'EOF'
import json, sys
t5x_file, flip_file, groups = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(t5x_file) as f:
  t5x = json.loads(f.read().splitlines()[-1])
with open(flip_file) as f:
  flip = json.load(f)
parts, bad = [], []
for group in groups:
  label, keys = group.split(":")
  keys = keys.split(",")
  missing = [k for k in keys if k not in t5x or k not in flip]
  if missing:
    sys.exit(f"compare: {missing} missing: t5x.eval has {sorted(t5x)}, flip_t5x.eval {sorted(flip)}")
  bad += [k for k in keys if abs(t5x[k] - flip[k]) > 1e-6]
  parts.append(f"{label} {'/'.join(f'{t5x[k]:.4f}' for k in keys)} | "
               f"{'/'.join(f'{flip[k]:.4f}' for k in keys)}")
line = "t5x.eval | flip_t5x.eval: " + "; ".join(parts)
if bad:
  sys.exit(f"compare: {bad} differ: {line}")
print(line)
EOF
}
ZS_T5X=(--gin_file=gin_configs/runs/eval.gin --gin.MIXTURE_OR_TASK_NAME="'flip_folder_zeroshot_seqio'"
        --gin.ZEROSHOT_FOLDER="\"$DATA/zeroshot\"" --gin.utils.DatasetConfig.split="'validation'"
        --gin.VOCAB_FILE="\"$DATA/vocab.txt\"")
ZS_FLIP=(--gin_file=gin_configs/runs/eval.gin --gin.MIXTURE_OR_TASK_NAME="'flip_folder_zeroshot'"
         --gin.ZEROSHOT_FOLDER="\"$DATA/zeroshot\"" --gin.utils.DatasetConfig.split="'validation'"
         --gin.VOCAB_FILE="\"$DATA/vocab.txt\"")
RET=(--gin_file=gin_configs/runs/eval_retrieval.gin --gin.RETRIEVAL_DATA_PATTERN="\"$DATA/shards/*.tfrecord\""
     --gin.VOCAB_FILE="\"$DATA/vocab.txt\"")
R_KEYS=(i2t:image_to_text/recall@1,image_to_text/recall@5,image_to_text/recall@10
        t2i:text_to_image/recall@1,text_to_image/recall@5,text_to_image/recall@10)
for ckpt in "t5x.train:$RUNS/pretrain/checkpoint_$PRE" "flip_t5x.train:$RUNS/flip_train/checkpoint_$PRE"; do
  who="${ckpt%%:*}"; path="${ckpt#*:}"
  for mode in zeroshot retrieval; do
    name="${mode}/${who}"; out="$RUNS/${mode}_${who}"
    rm -rf "$out"
    if [ "$mode" = zeroshot ]; then
      t5x_args=("${ZS_T5X[@]}"); flip_args=("${ZS_FLIP[@]}"); keys=(top1:top1 top5:top5)
      task=flip_folder_zeroshot_seqio
    else
      t5x_args=("${RET[@]}"); flip_args=("${RET[@]}"); keys=("${R_KEYS[@]}")
      task=flip_img2dataset_retrieval
    fi
    if [ -d "$path" ] \
        && run "${name}_t5x" "$PY" -m t5x.eval "${TINY[@]}" "${t5x_args[@]}" \
           --gin.CHECKPOINT_PATH="\"$path\"" --gin.EVAL_OUTPUT_DIR="\"$out/t5x\"" \
        && run "$name" "$PY" -m flip_t5x.eval "${TINY[@]}" "${flip_args[@]}" \
           --gin.CHECKPOINT_PATH="\"$path\"" --gin.EVAL_OUTPUT_DIR="\"$out/flip\"" \
        && compare_eval "$name" "$out/t5x/inference_eval/$task-metrics.jsonl" \
           "$out/flip/${mode}_metrics.json" "${keys[@]}"; then
      record "$name" PASS "$(detail "$name")"
    else
      record "$name" FAIL "$(fail_detail "$name" || true) $(fail_detail "${name}_t5x")"
    fi
  done
done

rm -rf "$RUNS/eval_experiment"
if run eval_experiment "$PY" -m t5x.eval "${TINY[@]}" \
    --gin_file=gin_configs/runs/eval_zeroshot_imagenet.gin --gin.utils.DatasetConfig.batch_size=8 \
    --gin.EVAL_OUTPUT_DIR="\"$RUNS/eval_experiment\"" --gin.CHECKPOINT_PATH="\"$RUNS/pretrain/checkpoint_$PRE\"" \
    --gin.MIXTURE_OR_TASK_NAME="'flip_folder_zeroshot_seqio'" --gin.ZEROSHOT_FOLDER="\"$DATA/zeroshot\"" \
    --gin.utils.DatasetConfig.split="'validation'" --gin.VOCAB_FILE="\"$DATA/vocab.txt\"" \
    && grep -q "flip_folder_zeroshot_seqio/top1 at step $PRE" "$RUNS/eval_experiment.log"; then
  record eval_experiment PASS "$(grep -o "top1 at step $PRE: [0-9.]*" "$RUNS/eval_experiment.log")"
else
  record eval_experiment FAIL "$(fail_detail eval_experiment)"
fi

# 8. one checkpoint format: each runtime reads and resumes what the other wrote.
if [ -d "$RUNS/pretrain/checkpoint_$PRE" ] && run t5x_to_flip_predict "$PY" -m flip_t5x.predict \
    --checkpoint="$RUNS/pretrain/checkpoint_$PRE" --gin_file=gin_configs/models/flip_tiny.gin \
    --vocab_file="$DATA/vocab.txt" --images="$DATA/zeroshot/red_square" \
    --labels=red,green,blue,yellow --format=jsonl \
    && [ "$(grep -c '"labels"' "$RUNS/t5x_to_flip_predict.log")" = 4 ]; then
  record t5x_to_flip_predict PASS "4 images labelled from t5x.train's checkpoint_$PRE"
else
  record t5x_to_flip_predict FAIL "$(fail_detail t5x_to_flip_predict)"
fi

# Resuming the other runtime's MODEL_DIR at learning rate 0, with the plain pretrain.gin command:
# the parameters must stay bit-identical, the step and every optax `count` must go on from the
# checkpoint's (a fresh optimizer would count from 0), so step, parameters and optimizer state
# were restored exactly. Both runtimes read FLIP's input pipeline, so the tf.data position
# crosses too; one that does not fit skips `step` batches with a warning (either runtime).
check_resumed() {  # check_resumed NAME BEFORE_STEP_DIR AFTER_STEP_DIR STEP
  py "$1" "$2" "$3" "$4" <<'EOF'
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
print(f"step {start} -> {step}, parameters bit-identical, optimizer counts {start} -> {step}")
EOF
}
# resume_check NAME PROGRAM FROM_DIR WRITER: `python -m PROGRAM` resumes a copy of FROM_DIR's
# checkpoint_$PRE (written by WRITER) up to step NEXT at learning rate 0.
resume_check() {
  local name="$1" program="$2" from="$3" writer="$4" data
  rm -rf "$RUNS/$name"
  if [ -d "$from/checkpoint_$PRE" ] && mkdir -p "$RUNS/$name" \
      && cp -r "$from/checkpoint_$PRE" "$RUNS/$name/" \
      && run "$name" "$PY" -m "$program" "${TINY[@]}" "${PRETRAIN[@]}" \
         --gin.MODEL_DIR="\"$RUNS/$name\"" --gin.TRAIN_STEPS=$NEXT --gin.CHECKPOINT_PERIOD=$NEXT \
         "${DATA_ARGS[@]}" --gin.BASE_LEARNING_RATE=0.0 \
      && check_resumed "$name" "$from/checkpoint_$PRE" "$RUNS/$name/checkpoint_$NEXT" $NEXT; then
    # Both runtimes warn "... skipping N batches to resume the data stream" on a misfit.
    if grep -q "to resume the data stream" "$RUNS/$name.log"; then
      data="$writer's data position did not fit: skipped $PRE batches (warned)"
    else
      data="data position restored from $writer's dataset item"
    fi
    record "$name" PASS "$(detail "$name"); $data"
  else
    record "$name" FAIL "$(fail_detail "$name")"
  fi
}
resume_check t5x_resumes_flip t5x.train "$RUNS/flip_train" flip_t5x.train
resume_check flip_resumes_t5x flip_t5x.train "$RUNS/pretrain" t5x.train

echo
echo "t5x parity ($T5X_SRC; logs in $RUNS):"
printf '  %s\n' "${RESULTS[@]}"
exit "$FAILED"
