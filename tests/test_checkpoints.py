"""One checkpoint format across both runtimes: t5x's.

tests/data/t5x_tiny/checkpoint_2 was written by upstream `t5x.train` (tests/data/make_t5x_tiny.sh;
model tests/data/t5x_tiny.gin). flip_t5x resumes it (step, parameters and optimizer state; the
tf.data position falls back to skipping batches), reads it everywhere weights are loaded (eval,
predict, unmasked tuning, import), writes the same tree and files, and still reads t5x's legacy
msgpack checkpoints and its own earlier layout.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

from flax import serialization
from flax import traverse_util
import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest
import tensorflow as tf

from flip_t5x.data import shards
from flip_t5x import checkpoints
from flip_t5x import train_state
from flip_t5x.checkpoints import release
from flip_t5x.runtime import gin_utils
from flip_t5x.runtime import optimizers
from flip_t5x.runtime import partitioning

import test_train_helpers as h

ROOT = h.ROOT
T5X_GIN = "tests/data/t5x_tiny.gin"
T5X_DIR = os.path.join(ROOT, "tests", "data", "t5x_tiny")
T5X_STEP_DIR = os.path.join(T5X_DIR, "checkpoint_2")
CLASSES = ("red", "green", "blue")
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "photo", "of", "the", "red", "green", "blue",
         "square", "number", "0", "1", "2", ".", "itself", "bad", "good", "close", "up", "art",
         "small", "large", "cropped", "bright", "dark", "origami", "clean", "weird", "rendition",
         "jpeg", "corrupted", "blurry", "nice", "in", "video", "game", "toy", "sculpture",
         "drawing", "painting", "plastic", "tattoo", "embroidered", "sketch", "cartoon", "black",
         "and", "white", "pixelated", "low", "resolution", "hard", "to", "see", "my", "one",
         "{}", ",", "there", "is", "this", "it", "an", "many", "sculpture", "picture"]


def _model():
  gin.clear_config()
  try:
    return gin_utils.parse_gin_flags_for_model([ROOT], [T5X_GIN], [], finalize_config=False)
  finally:
    gin.clear_config()


def _raw_state(step_dir: str):
  """t5x's `state` item read by orbax alone (no flip_t5x code), as host arrays."""
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.restore(os.path.join(step_dir, "state"))
  return jax.tree_util.tree_map(np.asarray, tree)


def _files(step_dir: str):
  """Relative file names of a step directory; orbax's content-addressed blobs as `d/*`."""
  out = set()
  for d, _, fs in os.walk(step_dir):
    rel = os.path.relpath(d, step_dir)
    for f in fs:
      path = os.path.normpath(os.path.join(rel, f))
      out.add(os.path.join(os.path.dirname(path), "*") if os.path.basename(d) == "d" else path)
  return out


@pytest.fixture(scope="module")
def model():
  return _model()


@pytest.fixture(scope="module")
def layout(model):
  # AdamW with a schedule, as gin_configs/runs/pretrain.gin gives t5x.train.
  tx = optimizers.unwrap(optimizers.adamw(lambda step: 1e-3))
  return train_state.StateLayout(model, tx,
                                 partitioning.PjitPartitioner(),
                                 model.input_shapes(4))


def test_locate_names_the_path_and_what_is_there(tmp_path):
  loc = checkpoints.locate(T5X_DIR)
  assert (loc.step, loc.format, loc.path.name) == (2, checkpoints.T5X, "checkpoint_2")
  assert checkpoints.locate(T5X_STEP_DIR) == loc
  with pytest.raises(checkpoints.NoCheckpointError,
                     match=f"no readable checkpoint at {tmp_path}/nope: nothing exists there"):
    checkpoints.locate(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoints.NoCheckpointError, match="an empty directory"):
    checkpoints.locate(str(tmp_path / "empty"))
  (tmp_path / "run" / "checkpoint_3.orbax-checkpoint-tmp-1").mkdir(parents=True)
  (tmp_path / "run" / "config.gin").write_text("")
  with pytest.raises(checkpoints.NoCheckpointError) as e:
    checkpoints.locate(str(tmp_path / "run"))
  assert "checkpoint_3.orbax-checkpoint-tmp-1, config.gin" in str(e.value)
  assert "\n" not in str(e.value)


def test_reads_what_t5x_train_wrote(model):
  raw = _raw_state(T5X_STEP_DIR)
  params = checkpoints.load_params(T5X_DIR, model)
  flat = traverse_util.flatten_dict(params, sep="/")
  want = traverse_util.flatten_dict(raw["target"], sep="/")
  assert sorted(flat) == sorted(want)
  for k, v in want.items():
    np.testing.assert_array_equal(np.asarray(flat[k]), v, err_msg=k)
  assert checkpoints.checkpoint_step(T5X_DIR) == 2 == int(raw["state"]["step"])
  assert checkpoints.read_meta(T5X_DIR) == {}  # t5x stores no flip_t5x seeds


def test_resume_state_from_t5x_and_flip_writes_the_same_tree_and_files(layout, tmp_path):
  # Resume: t5x's train state (step, params, AdamW state) comes back exactly.
  model_dir = tmp_path / "from_t5x"
  shutil.copytree(T5X_STEP_DIR, model_dir / "checkpoint_2")
  ckpt = checkpoints.TrainCheckpointer(str(model_dir), layout, enable_async=False)
  state, meta = ckpt.restore(ckpt.latest_step())
  assert meta == {} and int(state.step) == 2
  raw = _raw_state(T5X_STEP_DIR)
  ours = jax.tree_util.tree_map(np.asarray, checkpoints.t5x_state_dict(state))
  assert (traverse_util.flatten_dict(ours, sep="/").keys()
          == traverse_util.flatten_dict(raw, sep="/").keys())
  jax.tree_util.tree_map(np.testing.assert_array_equal, ours, raw)
  counts = [int(v) for k, v in traverse_util.flatten_dict(raw, sep="/").items()
            if k.endswith("/count")]
  assert counts and set(counts) == {2}

  # Save it again through flip_t5x's writer, with a tf.data position: t5x's files and tree.
  ckpt.close()
  it = iter(tf.data.Dataset.range(10))
  next(it)
  writer = checkpoints.TrainCheckpointer(str(tmp_path / "flip"), layout, enable_async=False)
  writer.save(state, {"step": 2, "seed": 5}, input_iterator=it)
  writer.close()
  flip_dir = tmp_path / "flip" / "checkpoint_2"
  assert _files(T5X_STEP_DIR) == _files(str(flip_dir)) - {
      "dataset/flip_counters-000-of-001.index",
      "dataset/flip_counters-000-of-001.data-00000-of-00001"}
  metadata = [json.loads((d / "state" / "_METADATA").read_text())["tree_metadata"]
              for d in (flip_dir, checkpoints.absolute(T5X_STEP_DIR))]
  assert metadata[0] == metadata[1]
  jax.tree_util.tree_map(np.testing.assert_array_equal, _raw_state(str(flip_dir)), raw)
  assert checkpoints.read_meta(str(flip_dir)) == {"step": 2, "seed": 5}
  # The tf.data position is t5x's `ds` key: a plain tf.train.Checkpoint(ds=...) restores it.
  fresh = iter(tf.data.Dataset.range(10))
  tf.train.Checkpoint(ds=fresh).read(
      str(flip_dir / "dataset" / "train_ds-000-of-001")).assert_consumed()
  assert int(next(fresh)) == 1


def test_data_position_from_another_pipeline_is_refused(layout, tmp_path):
  model_dir = tmp_path / "run"
  shutil.copytree(T5X_STEP_DIR, model_dir / "checkpoint_2")
  ckpt = checkpoints.TrainCheckpointer(str(model_dir), layout, enable_async=False)
  assert ckpt.has_input_position(2)
  other = iter(tf.data.Dataset.range(10).map(lambda x: x * 2))
  with pytest.raises(checkpoints.InputPositionError, match="identical graph"):
    ckpt.restore_input_position(2, other)
  ckpt.close()


def _official_tree(params, module):
  flat = {}
  for path, v in traverse_util.flatten_dict(params).items():
    name = release.official_name(path)
    flat[tuple(name.split("/"))] = np.asarray(v).reshape(
        release.official_shape(path, np.shape(v), module))
  flat[tuple(release.OFFICIAL_IMAGE_POS_EMBED.split("/"))] = (
      release.image_pos_embedding(module))
  return traverse_util.unflatten_dict(flat)


def _write_msgpack(step_dir, target, step):
  step_dir.mkdir(parents=True)
  tree = {"version": 3, "optimizer": {"target": target, "state": {"step": np.int32(step)}}}
  (step_dir / "checkpoint").write_bytes(serialization.msgpack_serialize(tree))


def test_t5x_msgpack_checkpoints_our_names_and_the_official_release(model, tmp_path):
  raw = _raw_state(T5X_STEP_DIR)["target"]
  _write_msgpack(tmp_path / "ours" / "checkpoint_9", raw, 9)
  _write_msgpack(tmp_path / "official" / "checkpoint_4", _official_tree(raw, model.module), 4)
  for name, step in (("ours", 9), ("official", 4)):
    assert checkpoints.locate(str(tmp_path / name)).format == checkpoints.T5X_MSGPACK
    assert checkpoints.checkpoint_step(str(tmp_path / name)) == step
    loaded = checkpoints.load_params(str(tmp_path / name), model)
    jax.tree_util.tree_map(np.testing.assert_array_equal,
                           jax.tree_util.tree_map(np.asarray, loaded), raw)
  narrower = type(model)(model.module.clone(embed_dim=4), mask_ratio=0.5)
  with pytest.raises(checkpoints.CheckpointShapeError, match="img_mlp1/kernel"):
    checkpoints.load_params(str(tmp_path / "official"), narrower)


def _save_earlier_layout(path, state, step: int, seed: int) -> None:
  """Writes `state` as earlier flip_t5x releases did: params/ opt_state/ meta/ items."""
  handlers = {"params": ocp.StandardCheckpointHandler(),
              "opt_state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(path, item_handlers=handlers, options=ocp.CheckpointManagerOptions(
      step_prefix="checkpoint", enable_async_checkpointing=False)) as manager:
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        meta=ocp.args.JsonSave({"step": step, "seed": seed, "data_seed": seed})))


@pytest.mark.slow
def test_earlier_flip_t5x_layout_still_loads_and_resumes(layout, model, tmp_path):
  fresh = layout.initialize(jax.random.PRNGKey(3))
  _save_earlier_layout(tmp_path, fresh, step=6, seed=11)
  assert checkpoints.locate(str(tmp_path)).format == checkpoints.FLIP_ITEMS
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         checkpoints.load_params(str(tmp_path), model), fresh.params)
  ckpt = checkpoints.TrainCheckpointer(str(tmp_path), layout, enable_async=False)
  state, meta = ckpt.restore(6)
  ckpt.close()
  assert int(state.step) == 6 and meta["seed"] == 11
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.opt_state, fresh.opt_state)


@pytest.mark.slow
def test_earlier_flip_t5x_input_position_still_restores(layout, tmp_path):
  """An earlier release kept `input_position/input_position-<i>-of-<n>` (iterator and skip
  counters in one tf checkpoint) beside params/ opt_state/ meta/: resuming reads it."""
  from flip_t5x.data import preprocessors  # pylint: disable=g-import-not-at-top
  fresh = layout.initialize(jax.random.PRNGKey(3))
  _save_earlier_layout(tmp_path, fresh, step=4, seed=2)
  saved = iter(tf.data.Dataset.range(10))
  for _ in range(4):
    next(saved)
  tf.train.Checkpoint(iterator=saved, **preprocessors.counter_variables(["train"])).write(
      str(tmp_path / "checkpoint_4" / "input_position" / "input_position-00000-of-00001"))
  ckpt = checkpoints.TrainCheckpointer(str(tmp_path), layout, enable_async=False)
  assert ckpt.has_input_position(4)
  resumed = iter(tf.data.Dataset.range(10))
  ckpt.restore_input_position(4, resumed)
  ckpt.close()
  assert int(next(resumed)) == 4


# ------------------------------------------------------------------------------------------------
# The binaries on t5x's checkpoint.
def _png(rgb, size=24):
  rng = np.random.RandomState(sum(rgb))
  a = (rng.rand(size, size, 3) * 60).astype(np.uint8) + np.asarray(rgb, np.uint8) // 2
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format="PNG")
  return buf.getvalue()


COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Starts eval, predict, unmasked tuning and the bad-path runs in parallel."""
  d = tmp_path_factory.mktemp("t5x_ckpt_binaries")
  (d / "vocab.txt").write_text("\n".join(dict.fromkeys(WORDS)) + "\n")
  for c, rgb in COLORS.items():
    (d / "zeroshot" / c).mkdir(parents=True)
    for j in range(2):
      (d / "zeroshot" / c / f"{j}.png").write_bytes(_png(tuple(x + j for x in rgb)))
  (d / "shards").mkdir()
  with tf.io.TFRecordWriter(str(d / "shards" / "tiny-00000-of-00001.tfrecord")) as w:
    for k in range(8):
      c = CLASSES[k % 3]
      w.write(shards.make_example(f"{k:05d}", _png(COLORS[c]), f"a photo of a {c} square",
                                  24, 24).SerializeToString())
  vocab = f"--gin.VOCAB_FILE='{d}/vocab.txt'"
  eval_gin = d / "eval.gin"
  eval_gin.write_text("\n".join([
      f"include '{T5X_GIN}'", "include 'gin_configs/runs/eval.gin'",
      "MIXTURE_OR_TASK_NAME = 'flip_folder_zeroshot'", f"ZEROSHOT_FOLDER = '{d}/zeroshot'",
      "utils.DatasetConfig.batch_size = 3"]) + "\n")

  def start(name, args):
    return subprocess.Popen([sys.executable, "-m", f"flip_t5x.{name}", *args], cwd=ROOT,
                            env=h.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)

  pretrain = ["--gin_file=" + T5X_GIN, "--gin_file=gin_configs/runs/pretrain.gin"]
  train = [pretrain[0], pretrain[1], "--gin_file=gin_configs/runs/unmasked_tuning.gin"]
  data = ["--gin.MIXTURE_OR_TASK_NAME='flip_img2dataset'",
           f"--gin.TRAIN_DATA_PATTERN='{d}/shards/*.tfrecord'", vocab,
           "--gin.TASK_FEATURE_LENGTHS={'image': 16, 'targets': 16}", "--gin.BATCH_SIZE=4",
           "--gin.TRAIN_STEPS=1", "--gin.WARMUP_STEPS=1", "--gin.WARMUP_EPOCHS=None",
           "--gin.BASE_LEARNING_RATE=0.0", "--gin.CHECKPOINT_PERIOD=1", "--gin.RANDOM_SEED=1",
           "--gin.EVAL_PERIOD=0"]
  train += data
  shutil.copytree(T5X_STEP_DIR, d / "resumed" / "checkpoint_2")
  procs = {
      # flip_t5x.train continues t5x.train's MODEL_DIR (learning rate 0: parameters unchanged).
      "resume": start("train", pretrain + data + ["--gin.TRAIN_STEPS=3",
                                                  f"--gin.MODEL_DIR='{d}/resumed'"]),
      "eval": start("eval", [f"--gin_file={eval_gin}", f"--gin.CHECKPOINT_PATH='{T5X_DIR}'",
                             f"--gin.EVAL_OUTPUT_DIR='{d}/eval'", vocab]),
      "predict": start("predict", [f"--checkpoint={T5X_STEP_DIR}", f"--gin_file={T5X_GIN}",
                                   f"--vocab_file={d}/vocab.txt", f"--images={d}/zeroshot/red",
                                   "--labels=red,green,blue", "--format=jsonl"]),
      "tune": start("train", train + [f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_STEP_DIR}'",
                                      f"--gin.MODEL_DIR='{d}/tuned'"]),
      "import": start("import_checkpoint", [f"--source={T5X_DIR}", f"--gin_file={T5X_GIN}",
                                            f"--output={d}/imported"]),
      "import_nothing": start("import_checkpoint", [f"--source={d}/nope", f"--gin_file={T5X_GIN}",
                                                    f"--output={d}/imported_bad"]),
      "eval_nothing": start("eval", [f"--gin_file={eval_gin}", vocab,
                                     f"--gin.CHECKPOINT_PATH='{d}/zeroshot'",
                                     f"--gin.EVAL_OUTPUT_DIR='{d}/eval_bad'"]),
      "predict_nothing": start("predict", [f"--checkpoint={d}/nope", f"--gin_file={T5X_GIN}",
                                           f"--images={d}/zeroshot/red", "--labels=red,blue"]),
      "tune_nothing": start("train", train + [f"--gin.INITIAL_CHECKPOINT_PATH='{d}/shards'",
                                              f"--gin.MODEL_DIR='{d}/tuned_bad'"]),
      # A checkpoint of another model (its embedding width): one line, exit 2.
      "tune_other_model": start("train", train + [
          f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_STEP_DIR}'", f"--gin.MODEL_DIR='{d}/tuned_other'",
          "--gin.network.FlipTwoTower.embed_dim=4"]),
  }
  yield d, procs
  for p in procs.values():
    if p.poll() is None:
      p.kill()


def _finish(proc):
  out, err = proc.communicate(timeout=400)
  return proc.returncode, out, err


@pytest.mark.e2e
def test_resume_eval_predict_tuning_and_import_read_the_t5x_checkpoint(runs, model):
  d, procs = runs
  rc, out, err = _finish(procs["eval"])
  assert rc == 0, err[-3000:]
  metrics = json.loads((d / "eval" / "zeroshot_metrics.json").read_text())
  assert metrics["checkpoint_step"] == 2 and metrics["num_examples"] == 6
  assert metrics["checkpoint_path"] == T5X_STEP_DIR

  rc, out, err = _finish(procs["predict"])
  assert rc == 0, err[-3000:]
  rows = [json.loads(line) for line in out.strip().splitlines()]
  assert len(rows) == 2 and all(len(r["labels"]) == 3 for r in rows), out

  rc, out, err = _finish(procs["tune"])
  assert rc == 0, err[-3000:]
  assert "t5x checkpoint, step 2" in err
  # Learning rate 0: the tuned parameters are t5x's exactly; a fresh optimizer counted 1 step.
  tuned = _raw_state(str(d / "tuned" / "checkpoint_1"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, tuned["target"],
                         _raw_state(T5X_STEP_DIR)["target"])
  assert int(tuned["state"]["step"]) == 1
  assert int(tuned["state"]["param_states"]["0"]["count"]) == 1

  rc, out, err = _finish(procs["resume"])
  assert rc == 0, err[-3000:]
  assert "resumed from" in err and "carries no flip_t5x seeds" in err
  # t5x's seqio pipeline is another tf.data graph: its position cannot be restored here.
  assert "does not fit this run's input pipeline" in err and "skipping 2 batches" in err
  resumed = _raw_state(str(d / "resumed" / "checkpoint_3"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed["target"],
                         _raw_state(T5X_STEP_DIR)["target"])
  counts = {int(v) for k, v in traverse_util.flatten_dict(
      resumed["state"]["param_states"], sep="/").items() if k.endswith("count")}
  assert int(resumed["state"]["step"]) == 3 and counts == {3}  # t5x's optimizer state went on

  # import_checkpoint takes t5x.train's checkpoint too (it used to want a msgpack file).
  rc, out, err = _finish(procs["import"])
  assert rc == 0, err[-3000:]
  assert f"imported {T5X_DIR} (step 2) -> {d}/imported/checkpoint_2" in out
  imported = checkpoints.read_arrays(str(d / "imported"))
  want = traverse_util.flatten_dict(_raw_state(T5X_STEP_DIR)["target"], sep="/")
  assert sorted(imported) == sorted(want)
  for k, v in want.items():
    np.testing.assert_array_equal(imported[k], v, err_msg=k)


@pytest.mark.e2e
def test_a_path_without_a_checkpoint_is_one_line_and_exit_2(runs):
  d, procs = runs
  for name, binary, path, what in (
      ("eval_nothing", "eval", d / "zeroshot", "a directory holding blue, green, red"),
      ("predict_nothing", "predict", d / "nope", "nothing exists there"),
      ("import_nothing", "import_checkpoint", d / "nope", "nothing exists there"),
      ("tune_nothing", "train", d / "shards",
       "a directory holding tiny-00000-of-00001.tfrecord; expected")):
    rc, _, err = _finish(procs[name])
    assert rc == 2, (name, err[-3000:])
    assert f"no readable checkpoint at {path}: {what}" in err, (name, err[-2000:])
    assert "Traceback" not in err, name
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"flip_t5x.{binary}: error: "), last  # gin_utils.run's one format
    assert "no readable checkpoint" in last, name


@pytest.mark.e2e
def test_a_checkpoint_of_another_model_is_one_line_and_exit_2(runs):
  d, procs = runs
  rc, _, err = _finish(procs["tune_other_model"])
  assert rc == 2, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  # The message opens with the binary's name and lists each parameter that does not fit.
  assert [l for l in err.splitlines() if l.startswith("flip_t5x.train: ")], err[-2000:]
  assert "text_tower/projection/kernel: checkpoint (8, 8) vs model (8, 4)" in err, err[-2000:]
