#!/usr/bin/env bash
# The main job: FLIP end to end on a CPU, no download. Prepares the demo data once (Fashion-MNIST
# photos from a Debian package, captions, WordPiece vocabulary -> img2dataset shards), pre-trains
# with 50% masking, tunes unmasked from that checkpoint, evaluates zero-shot on held-out photos
# after each stage, and prints a table and one JSON line. Same binaries and tasks as LAION runs.
# With --compare it also trains the same model unmasked from scratch for the masked pre-training's
# wall-clock time and compares the two (table, JSON line, RUN_DIR/flip_vs_unmasked.png).
#
# Options (all optional): --data_dir=DIR --run_dir=DIR --pretrain_steps=N --tune_steps=N
#   --num_train=N --num_eval_per_class=N   (the test suite runs a shortened demo with these)
#   --compare
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

data_dir=demo_data run_dir=runs/demo pretrain_steps="" tune_steps="" num_train=20000 num_eval=100
compare=""
for arg in "$@"; do
  case "$arg" in
    --data_dir=*) data_dir="${arg#*=}" ;;
    --run_dir=*) run_dir="${arg#*=}" ;;
    --pretrain_steps=*) pretrain_steps="${arg#*=}" ;;
    --tune_steps=*) tune_steps="${arg#*=}" ;;
    --num_train=*) num_train="${arg#*=}" ;;
    --num_eval_per_class=*) num_eval="${arg#*=}" ;;
    --compare) compare=1 ;;
    *) echo "demo.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

# Debian packages: the demo images (required) and jemalloc (optional, ~15% faster CPU steps).
missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
ls /usr/lib/*/libjemalloc.so.2 >/dev/null 2>&1 || missing+=(libjemalloc2)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[demo] installing ${missing[*]} (Debian packages)" >&2
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
    source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"  # picks up jemalloc
  elif [ ! -d /usr/share/datasets/fashion-mnist ]; then
    echo "demo.sh: needs the demo images: sudo apt-get install dataset-fashion-mnist" >&2
    exit 1
  fi
fi
py=.venv/bin/python
$py -m flip_t5x.demo_data --output_dir="$data_dir" --num_train="$num_train" \
  --num_eval_per_class="$num_eval" >/dev/null
vocab_size=$(( $(wc -l < "$data_dir/vocab.txt") + 1 ))

# Every binary gets the demo's data paths and vocabulary size as gin bindings.
common=(--gin.VOCAB_SIZE="$vocab_size" --gin.VOCAB_FILE="\"$data_dir/vocab.txt\"")
train_data=(--gin.TRAIN_DATA_PATTERN="\"$data_dir/train/*.tfrecord\"")
eval_data=(--gin.ZEROSHOT_FOLDER="\"$data_dir/zeroshot\""
           --gin.ZEROSHOT_CLASS_NAMES="\"$data_dir/zeroshot/class_names.txt\""
           --gin.ZEROSHOT_TEMPLATES="\"$data_dir/templates.txt\"")
# Shortened runs (tests) scale the warmup with the step count.
steps_args() { [ -n "$1" ] && echo "--gin.TRAIN_STEPS=$1 --gin.WARMUP_STEPS=$(( $1 / 10 ))"; true; }
pre_steps=($(steps_args "$pretrain_steps"))
tun_steps=($(steps_args "$tune_steps"))
# --compare: the trainer reports throughput and uptime every 5 steps (the equal-time step count
# and the figure's x axis come from these) and evaluates zero-shot POINTS times per run, at
# multiples of 5 steps. 300 and 60: TRAIN_STEPS of gin_configs/demo/{pretrain,unmasked_tuning}.gin.
stats_period=5
eval_args() {  # STEPS POINTS
  local period=$(( stats_period * ( ($1 + $2 * stats_period / 2) / ($2 * stats_period) ) ))
  period=$(( period > 0 ? period : stats_period ))
  echo "--gin.train_script.train.stats_period=$stats_period --gin.EVAL_PERIOD=$period"
}
if [ -n "$compare" ]; then
  pre_steps+=($(eval_args "${pretrain_steps:-300}" 6))
  tun_steps+=($(eval_args "${tune_steps:-60}" 3))
fi

rm -rf "$run_dir"
mkdir -p "$run_dir/logs"
start=$(date +%s)
# Each stage logs to run_dir/logs/NAME.log (TensorBoard summaries are in each MODEL_DIR); a failed
# stage shows the end of its log.
stage() {
  local name=$1 what=$2; shift 2
  echo "[demo] $(( $(date +%s) - start ))s  $what  (log: $run_dir/logs/$name.log)" >&2
  if ! "$@" >"$run_dir/logs/$name.log" 2>&1; then
    tail -n 40 "$run_dir/logs/$name.log" >&2
    echo "demo.sh: stage '$name' failed; full log: $run_dir/logs/$name.log" >&2
    exit 1
  fi
}
stage pretrain "masked pre-training (MASK_RATIO=0.5)" \
$py -m flip_t5x.train --gin_file=gin_configs/demo/pretrain.gin "${common[@]}" "${train_data[@]}" \
  "${eval_data[@]}" --gin.MODEL_DIR="\"$run_dir/pretrain\"" "${pre_steps[@]}"
stage eval_pretrain "zero-shot eval after pre-training" \
$py -m flip_t5x.eval --gin_file=gin_configs/demo/eval.gin "${common[@]}" "${eval_data[@]}" \
  --gin.CHECKPOINT_PATH="\"$run_dir/pretrain\"" --gin.EVAL_OUTPUT_DIR="\"$run_dir/eval_pretrain\""
stage tune "unmasked tuning from the pre-trained checkpoint (MASK_RATIO=0.0)" \
$py -m flip_t5x.train --gin_file=gin_configs/demo/unmasked_tuning.gin "${common[@]}" \
  "${train_data[@]}" "${eval_data[@]}" --gin.INITIAL_CHECKPOINT_PATH="\"$run_dir/pretrain\"" \
  --gin.MODEL_DIR="\"$run_dir/tuned\"" "${tun_steps[@]}"
stage eval_tuned "zero-shot eval after tuning" \
$py -m flip_t5x.eval --gin_file=gin_configs/demo/eval.gin "${common[@]}" "${eval_data[@]}" \
  --gin.CHECKPOINT_PATH="\"$run_dir/tuned\"" --gin.EVAL_OUTPUT_DIR="\"$run_dir/eval_tuned\""
wall=$(( $(date +%s) - start ))
if [ -n "$compare" ]; then
  # Fixed before the run starts (seeded, repeatable): the masked run's training seconds at the
  # unmasked throughput that the tuning measured (the same model, masking off).
  unmasked_steps=$($py -m flip_t5x.demo_compare --run_dir="$run_dir" --equal_time_steps)
  stage unmasked "unmasked from scratch (MASK_RATIO=0.0), $unmasked_steps steps: equal time" \
  $py -m flip_t5x.train --gin_file=gin_configs/demo/pretrain.gin "${common[@]}" "${train_data[@]}" \
    "${eval_data[@]}" --gin.MODEL_DIR="\"$run_dir/unmasked\"" --gin.MASK_RATIO=0.0 \
    $(steps_args "$unmasked_steps") $(eval_args "$unmasked_steps" 6)
fi
$py -m flip_t5x.demo_summary --run_dir="$run_dir" --wall_seconds="$wall"
if [ -n "$compare" ]; then
  $py -m flip_t5x.demo_compare --run_dir="$run_dir"
  echo "[demo] $(( $(date +%s) - start ))s  done; the comparison: $run_dir/flip_vs_unmasked.png" >&2
fi
