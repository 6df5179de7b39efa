r"""FLIP pre-training and unmasked tuning with t5x.train's command line and gin vocabulary.

  python -m flip_t5x.train --gin_file=gin_configs/flip_vit_l.gin \
      --gin.MODEL_DIR=\"/path/to/run\" --gin.TRAIN_DATA_PATTERN=\"/data/laion/*.tfrecord\"

The gin files say `import __main__ as train_script` and bind `train_script.train.*`, so the same
files drive upstream `t5x.train` when it is installed. A rerun with the same MODEL_DIR resumes from
the latest checkpoint, data position included; INITIAL_CHECKPOINT_PATH (unmasked tuning) restores
parameters only, with a fresh optimizer.
"""
from __future__ import annotations

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

from absl import flags
from absl import logging
from clu import periodic_actions
import gin
import jax
from jax.experimental import multihost_utils
import numpy as np
import seqio
import tensorflow as tf

from flip_t5x.evaluation import zeroshot
from flip_t5x.data import preprocessors
from flip_t5x import checkpoints
from flip_t5x.runtime import gin_utils
from flip_t5x.runtime import monitoring
from flip_t5x.runtime import t5x_interop
from flip_t5x.runtime import train_state as train_state_lib
from flip_t5x.runtime import trainer as trainer_lib
from flip_t5x.runtime import utils

FLAGS = flags.FLAGS
PyTree = Any


class TrainConfigError(gin_utils.GinConfigError):
  """A gin value of the right name but unusable value/type; the message names the binding."""


def _check(cond: bool, binding: str, message: str) -> None:
  if not cond:
    raise TrainConfigError(f"{binding}: {message}")


def _is_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _validate(model, train_dataset_cfg, checkpoint_cfg, partitioner, model_dir, total_steps,
              eval_period, eval_steps, stats_period, random_seed) -> None:
  """Type/value checks of the bindings, before anything is compiled."""
  _check(hasattr(model, "loss_fn") and hasattr(model, "module"), "train.model (MODEL)",
         f"expected a FlipModel, got {type(model).__name__}")
  _check(isinstance(model_dir, (str, os.PathLike)), "train.model_dir (MODEL_DIR)",
         f"expected a string path, got {model_dir!r} ({type(model_dir).__name__}); on the "
         "command line quote it: --gin.MODEL_DIR=\\\"/path\\\"")
  _check(_is_int(total_steps) and total_steps > 0, "train.total_steps (TRAIN_STEPS)",
         f"expected a positive int, got {total_steps!r} ({type(total_steps).__name__})")
  _check(train_dataset_cfg is not None, "train.train_dataset_cfg", "is required")
  bs = train_dataset_cfg.batch_size
  _check(_is_int(bs) and bs > 0, "train/utils.DatasetConfig.batch_size (BATCH_SIZE)",
         f"expected a positive int, got {bs!r} ({type(bs).__name__})")
  tfl = train_dataset_cfg.task_feature_lengths
  _check(isinstance(tfl, Mapping) and set(tfl) == {"image", "targets"},
         "train/utils.DatasetConfig.task_feature_lengths (TASK_FEATURE_LENGTHS)",
         f"expected {{'image': S, 'targets': L}}, got {tfl!r}")
  _check(all(_is_int(v) and v > 0 for v in tfl.values()),
         "TASK_FEATURE_LENGTHS", f"lengths must be positive ints, got {tfl!r}")
  _check(tfl["targets"] <= model.module.text.max_length, "TASK_FEATURE_LENGTHS['targets']",
         f"{tfl['targets']} exceeds the text tower's length {model.module.text.max_length}")
  _check(isinstance(train_dataset_cfg.mixture_or_task_name, str) or hasattr(
      train_dataset_cfg.mixture_or_task_name, "get_dataset"),
         "train/utils.DatasetConfig.mixture_or_task_name (MIXTURE_OR_TASK_NAME)",
         f"expected a task name, got {train_dataset_cfg.mixture_or_task_name!r}")
  for name, v in (("eval_period (EVAL_PERIOD)", eval_period), ("eval_steps", eval_steps),
                  ("stats_period", stats_period)):
    _check(v is None or (_is_int(v) and v >= 0), f"train.{name}",
           f"expected a non-negative int or None, got {v!r}")
  _check(random_seed is None or _is_int(random_seed), "train.random_seed (RANDOM_SEED)",
         f"expected an int or None, got {random_seed!r}")
  _check(hasattr(partitioner, "mesh"), "train.partitioner",
         f"expected a partitioning.PjitPartitioner, got {type(partitioner).__name__}")
  try:
    data_size = partitioner.data_size
  except ValueError as e:
    raise TrainConfigError(f"partitioning.PjitPartitioner.num_partitions (NUM_PARTITIONS): "
                           f"{e}") from e
  _check(bs % data_size == 0, "train/utils.DatasetConfig.batch_size (BATCH_SIZE)",
         f"{bs} is not divisible by the {data_size} devices of the mesh's data axis "
         f"({jax.device_count()} devices / NUM_PARTITIONS)")
  save = getattr(checkpoint_cfg, "save", None)
  if save is not None:
    _check(save.period is None or (_is_int(save.period) and save.period > 0),
           "utils.SaveCheckpointConfig.period", f"expected a positive int, got {save.period!r}")
    _check(save.keep is None or (_is_int(save.keep) and save.keep > 0),
           "utils.SaveCheckpointConfig.keep", f"expected a positive int, got {save.keep!r}")
  _check_data(train_dataset_cfg)


def _tasks(cfg: Any) -> Sequence[seqio.Task]:
  """The seqio tasks a DatasetConfig reads (a mixture's sub-tasks)."""
  try:
    utils.import_module(getattr(cfg, "module", None))
  except ImportError as e:
    raise TrainConfigError(f"train/utils.DatasetConfig.module (MIXTURE_OR_TASK_MODULE): "
                           f"{e}") from e
  name = cfg.mixture_or_task_name
  try:
    found = seqio.get_mixture_or_task(name) if isinstance(name, str) else name
  except ValueError as e:
    raise TrainConfigError(f"MIXTURE_OR_TASK_NAME: {gin_utils.one_line(e)}") from e
  return list(found.tasks) if isinstance(found, seqio.Mixture) else [found]


def _check_data(cfg: Any) -> None:
  """The training data files and vocabulary files exist.

  Reading them starts after the model is set up (minutes for a large model); a typo'd pattern
  or path should cost seconds.
  """
  for task in _tasks(cfg):
    try:
      task.source.list_shards(cfg.split)  # Img2DatasetSource: raises naming an unmatched glob
      vocab_files = {k: getattr(f.vocabulary, "vocab_file", None)
                     for k, f in task.output_features.items()}
    except (ValueError, OSError, tf.errors.OpError) as e:
      raise TrainConfigError(f"data of task {task.name!r}: {gin_utils.one_line(e)}") from e
    for key, path in vocab_files.items():
      _check(path is None or tf.io.gfile.exists(path), "VOCAB_FILE",
             f"vocabulary file {path!r} (of task {task.name!r}'s {key!r}) does not exist")


def _draw_seed() -> int:
  """A fresh seed agreed by every process (process 0's draw)."""
  seed = np.int32(np.random.SeedSequence().entropy % (2**31 - 1))
  if jax.process_count() > 1:
    seed = multihost_utils.broadcast_one_to_all(seed)
  return int(seed)


def _initial_checkpoint_path(restore_cfg: Any) -> Optional[str]:
  if restore_cfg is None or not restore_cfg.path:
    return None
  paths = [restore_cfg.path] if isinstance(restore_cfg.path, str) else list(restore_cfg.path)
  if len(paths) != 1:
    raise TrainConfigError(f"utils.RestoreCheckpointConfig.path: one checkpoint expected, got "
                           f"{paths}")
  return paths[0]


def _skipped_counts() -> Mapping[str, float]:
  """Records the input pipeline kept and dropped (flip_t5x.data.preprocessors' counters).

  Cumulative, and ahead of the step by the records in the prefetch buffers.
  """
  counts = preprocessors.skipped_counts("train")
  out = {f"input/skipped/{k}": float(v) for k, v in counts.items()}
  out["input/kept"] = float(preprocessors.kept_count("train"))
  return out


def _batch_shapes(cfg: Any) -> Mapping[str, Tuple[int, ...]]:
  s, length = cfg.task_feature_lengths["image"], cfg.task_feature_lengths["targets"]
  return {"images": (cfg.batch_size, s, s, 3), "texts": (cfg.batch_size, length)}


def train(*, model: Any, train_dataset_cfg: Any, train_eval_dataset_cfg: Any = None,
          infer_eval_dataset_cfg: Any = None, checkpoint_cfg: Any, partitioner: Any,
          trainer_cls: Callable[..., Any] = trainer_lib.FlipTrainer, model_dir: str,
          total_steps: int, eval_steps: int = 20, eval_period: int = 1000,
          relative_steps: Optional[int] = None, stats_period: Optional[int] = None,
          random_seed: Optional[int] = None, use_hardware_rng: bool = False,
          summarize_config_fn: Callable[..., None] = gin_utils.summarize_gin_config,
          inference_evaluator_cls: Any = None,
          get_dataset_fn: Callable[..., Any] = utils.get_dataset,
          concurrent_metrics: bool = True, actions: Any = None,
          train_eval_get_dataset_fn: Any = None, run_eval_before_training: bool = False,
          train_state_initializer_cls: Any = None, use_orbax: bool = True,
          verify_matching_vocabs_fn: Any = None, gc_period: int = 0
          ) -> Tuple[int, train_state_lib.TrainState]:
  """Trains `model` to `total_steps`, resuming from MODEL_DIR's latest checkpoint.

  Parameter names are t5x.train's; those about t5x machinery FLIP does not use
  (`inference_evaluator_cls`, `train_state_initializer_cls`, `actions`, `use_orbax`, ...) are
  accepted so t5x gin files bind cleanly. Returns (final step, final train state).
  """
  del inference_evaluator_cls, concurrent_metrics, train_eval_get_dataset_fn
  del train_state_initializer_cls, use_orbax, verify_matching_vocabs_fn, gc_period
  if actions:
    raise TrainConfigError("train.actions: t5x trainer actions are not supported by flip_t5x")
  if use_hardware_rng:
    logging.info("use_hardware_rng ignored: FLIP's masks come from threefry (mesh-invariant)")
  _validate(model, train_dataset_cfg, checkpoint_cfg, partitioner, model_dir, total_steps,
            eval_period, eval_steps, stats_period, random_seed)
  logging.info("configuration checked; setting up the model and its train state")
  trainer_cls = t5x_interop.flip_class(trainer_cls)  # t5x's Trainer (for t5x.train) -> ours
  model_dir = os.fspath(model_dir)
  save_cfg = checkpoint_cfg.save if checkpoint_cfg is not None else None
  restore_cfg = checkpoint_cfg.restore if checkpoint_cfg is not None else None
  monitor = monitoring.monitoring_config()
  batch_size = int(train_dataset_cfg.batch_size)
  if jax.process_index() == 0:
    os.makedirs(model_dir, exist_ok=True)
  multihost_utils.sync_global_devices("flip_t5x.train: model_dir")
  writer = monitoring.create_writer(model_dir)

  # ------------------------------------------------------------ state
  tx = trainer_lib.unwrap_optimizer(model)
  layout = train_state_lib.StateLayout(model, tx, partitioner, _batch_shapes(train_dataset_cfg))
  data_layout = partitioner.get_data_layout(batch_size)
  keep = save_cfg.keep if save_cfg is not None else None
  ckpt = checkpoints.TrainCheckpointer(model_dir, layout, keep=keep,
                                       enable_async=getattr(save_cfg, "use_async", True),
                                       shard_id=data_layout.shard_id,
                                       num_shards=data_layout.num_shards)
  latest = ckpt.latest_step()
  meta = {}
  if latest is not None:
    state, meta = ckpt.restore(latest)
    if "seed" not in meta:  # written by upstream t5x.train: no FLIP seeds in it
      logging.warning("checkpoint_%d carries no flip_t5x seeds (written by t5x?): masks and "
                      "augmentation continue from RANDOM_SEED or a new seed", latest)
    seed = int(meta.get("seed", random_seed if random_seed is not None else _draw_seed()))
    logging.info("resumed from %s/checkpoint_%d", model_dir, latest)
  else:
    seed = int(random_seed) if random_seed is not None else _draw_seed()
    init_rng = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    init_path = _initial_checkpoint_path(restore_cfg)
    if init_path is not None:
      # Unmasked tuning / imported weights: parameters only, fresh optimizer, step 0.
      found = checkpoints.locate(init_path)  # a checkpoint_<step> dir or a MODEL_DIR
      params = checkpoints.restore_params(found, layout.abstract.params,
                                          layout.shardings.params, model)
      state = layout.from_params(params, step=0)
      logging.info("initialised parameters from %s (%s checkpoint, step %s); optimizer state is "
                   "fresh", found.path, found.format, found.step)
    else:
      state = layout.initialize(init_rng)
  if relative_steps:
    total_steps = int(state.step) + int(relative_steps)
  start_step = int(state.step)
  data_seed = train_dataset_cfg.seed if train_dataset_cfg.seed is not None else seed
  if "data_seed" in meta:
    data_seed = int(meta["data_seed"])
  summarize_config_fn(model_dir, writer, start_step)

  if start_step >= total_steps:
    logging.info("already at step %d >= TRAIN_STEPS=%d: nothing to do", start_step, total_steps)
    ckpt.close()
    writer.close()
    return start_step, state

  save_period = save_cfg.period if save_cfg is not None and save_cfg.period else None
  save_steps = set(getattr(save_cfg, "checkpoint_steps", None) or ())
  save_dataset = bool(getattr(save_cfg, "save_dataset", False))

  def is_save_step(step: int) -> bool:
    return bool((save_period and step % save_period == 0) or step in save_steps
                or step == total_steps)

  # ------------------------------------------------------------- data
  # The data position: the checkpoint's tf.data iterator state when it has one (save_dataset)
  # and it fits this pipeline; otherwise skip `step` batches of the seeded stream (exact for a
  # flip_t5x run, but re-reads the consumed data).
  def input_batches(skip: int) -> utils.DeviceIterator:
    # Per-process rows: batch / shards (t5x's DataLayout.batch_size is the global batch).
    ds = get_dataset_fn(train_dataset_cfg, data_layout.shard_id, data_layout.num_shards,
                        model.FEATURE_CONVERTER_CLS, batch_size // data_layout.num_shards,
                        skip_batches=skip, seed=data_seed)
    return utils.DeviceIterator(ds, partitioner.data_sharding, batch_size,
                                prefetch=monitor.prefetch_batches,
                                hold_at=is_save_step if save_dataset else None,
                                start_step=start_step)

  batches = None
  if latest is not None and ckpt.has_input_position(latest):
    batches = input_batches(0)
    try:
      ckpt.restore_input_position(latest, batches.synced_iterator())
      logging.info("input stream repositioned from checkpoint_%d", latest)
    except checkpoints.InputPositionError as e:
      logging.warning("%s; skipping %d batches to resume the data stream instead", e, start_step)
      batches = None
  elif latest is not None:
    logging.warning("checkpoint_%d has no input position: skipping %d batches to resume the "
                    "data stream (set SaveCheckpointConfig.save_dataset = True to avoid this)",
                    latest, start_step)
  if batches is None:
    batches = input_batches(start_step)

  step_rng = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
  trainer = trainer_cls(model=model, train_state=state, partitioner=partitioner,
                        eval_names=[], summary_dir=model_dir, train_state_axes=layout,
                        rng=step_rng)
  stats_period = stats_period or eval_period or 100
  throughput = monitoring.Throughput(
      model, batch_size, total_steps,
      monitoring.peak_flops_per_device(
          jax.devices()[0], monitor.peak_flops_per_device,
          measure_dtype=(getattr(model.module, "dtype", "float32")
                         if monitor.measure_peak_flops else None)),
      jax.device_count())
  hooks = [periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                           every_steps=stats_period, every_secs=None)]
  if monitor.profile_steps > 0 and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(
        logdir=model_dir, num_profile_steps=monitor.profile_steps,
        first_profile=start_step + monitor.profile_first_step, every_steps=None,
        every_secs=None, profile_duration_ms=None))

  meta_base = {"seed": seed, "data_seed": int(data_seed), "batch_size": batch_size,
               "data_position": ("dataset item" if save_dataset
                                 else "batches consumed = step")}
  accumulator = monitoring.MetricsAccumulator()
  pending = None  # (step, scalars) whose loss has not been checked yet
  last_saved = latest

  def check_finite(p):
    step, scalars = p
    loss = float(jax.device_get(scalars["loss"]))
    if not math.isfinite(loss):
      ckpt.close()  # finish any earlier (good) save; nothing of this step is written
      raise trainer_lib.NonFiniteLossError(
          f"loss is {loss} at step {step}: training stopped; the latest checkpoint "
          f"({'checkpoint_%d' % last_saved if last_saved is not None else 'none'}) is untouched. "
          "Lower the learning rate or set optimizers.adamw.grad_clip_norm.")

  def run_evals(step: int, params: PyTree) -> None:
    if train_eval_dataset_cfg is not None and eval_steps:
      _train_eval(trainer, params, train_eval_dataset_cfg, model, partitioner, get_dataset_fn,
                  eval_steps, writer, step)
    if infer_eval_dataset_cfg is not None:
      cfg = infer_eval_dataset_cfg
      lengths = cfg.task_feature_lengths or train_dataset_cfg.task_feature_lengths
      res = zeroshot.zeroshot_evaluate(model, params, task_name=cfg.mixture_or_task_name, split=cfg.split,
                     feature_lengths=lengths, batch_size=cfg.batch_size,
                     max_examples=(eval_steps * cfg.batch_size) if eval_steps else None,
                     mesh=partitioner.mesh)
      name = cfg.mixture_or_task_name
      writer.write_scalars(step, {f"zeroshot/{name}/top1": res["top1"],
                                  f"zeroshot/{name}/top5": res.get("top5", float("nan"))})

  if run_eval_before_training:
    run_evals(start_step, state.params)
  throughput.start(start_step)
  logging.info("training steps %d..%d, global batch %d, %d device(s) as %s", start_step,
               total_steps, batch_size, jax.device_count(), dict(partitioner.mesh.shape))
  step = start_step
  t_start = time.time()
  progress = monitoring.ProgressLine(total_steps) if jax.process_index() == 0 else None
  try:
    for step in range(start_step, total_steps):
      batch = next(batches)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, scalars = trainer.train_step(state, batch)
      new_step = step + 1
      if step == start_step:
        jax.block_until_ready(scalars)  # keep compilation out of the throughput figures
        throughput.start(new_step)
      if pending is not None:
        check_finite(pending)
      pending = (new_step, scalars)
      accumulator.add(scalars)
      for hook in hooks:
        hook(new_step)
      is_last = new_step == total_steps
      if new_step % stats_period == 0 or is_last:
        check_finite(pending)
        out = dict(accumulator.result())
        out.update(throughput.report(new_step))
        out.update(_skipped_counts())
        writer.write_scalars(new_step, out)
        if progress is not None:
          progress.update(new_step, out)
      elif progress is not None:
        progress.update(new_step)
      if is_save_step(new_step):
        check_finite(pending)
        ckpt.save(state, dict(meta_base, step=new_step),
                  input_iterator=batches.synced_iterator() if save_dataset else None)
        last_saved = new_step
      if eval_period and new_step % eval_period == 0 and not is_last:
        run_evals(new_step, state.params)
    step = total_steps
    if eval_period:
      run_evals(step, state.params)
  finally:
    if progress is not None:
      progress.close(step)
    writer.flush()
    ckpt.close()  # waits for the last asynchronous save
  writer.close()
  logging.info("finished at step %d in %.1fs", step, time.time() - t_start)
  return step, state


def _train_eval(trainer, params, cfg, model, partitioner, get_dataset_fn, eval_steps, writer, step):
  """The unmasked loss and in-batch accuracies on `eval_steps` batches of the eval split."""
  layout = partitioner.get_data_layout(cfg.batch_size)
  ds = get_dataset_fn(cfg, layout.shard_id, layout.num_shards, model.FEATURE_CONVERTER_CLS,
                      cfg.batch_size // layout.num_shards)
  ds = ds.take(eval_steps)
  acc = monitoring.MetricsAccumulator()
  for batch in utils.DeviceIterator(ds, partitioner.data_sharding, cfg.batch_size):
    acc.add(trainer.eval_step(params, batch))
  name = cfg.mixture_or_task_name if isinstance(cfg.mixture_or_task_name, str) else "eval"
  writer.write_scalars(step, {f"train_eval/{name}/{k}": v for k, v in acc.result().items()})


def register_train_for_gin() -> Callable[..., Any]:
  """Makes `train` reachable as `__main__.train`, what gin files call `train_script.train`.

  Under `python -m flip_t5x.train` this module is `__main__` already; a test or notebook that
  imports it gets `train` attached to its `__main__` module, exactly what t5x's binary exposes.
  Returns the gin-configured `train` (call it after parsing the gin files).
  """
  main_module = sys.modules["__main__"]
  if getattr(main_module, "train", None) is not train:
    main_module.train = train
  return lambda: gin.get_configurable(train)()


def define_flags() -> None:
  """t5x.train's flags: gin files/bindings/search paths and multi-process set-up."""
  gin_utils.define_gin_flags()
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 for jax.distributed (multi-process runs)")
  flags.DEFINE_integer("process_count", None, "number of processes (jax.distributed)")
  flags.DEFINE_integer("process_index", None, "this process's index (jax.distributed)")


def _maybe_initialize_distributed() -> None:
  if FLAGS.coordinator_address:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.process_count,
                               process_id=FLAGS.process_index)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app_usage_error(f"unexpected arguments: {argv[1:]}")
  configured_train = register_train_for_gin()
  gin_utils.parse_gin_flags(FLAGS.gin_search_paths, FLAGS.gin_file, FLAGS.gin_bindings)
  _maybe_initialize_distributed()
  # A value a configurable rejects while gin builds train()'s arguments (MASK_RATIO = 1.5 in
  # FlipModel) is a configuration error, raised before anything is compiled.
  gin_utils.call_configured(train, configured_train)


def app_usage_error(message: str) -> Exception:
  from absl import app  # pylint: disable=g-import-not-at-top
  return app.UsageError(message)


def _main_reporting_errors(argv: Sequence[str]) -> None:
  """Errors the user can mend as one clear line and an exit status instead of a traceback.

  Configuration errors (gin_utils.GinConfigError, TrainConfigError) are reported by
  `gin_utils.run`: exit status 2, like every binary's.
  """
  try:
    main(argv)
  except checkpoints.NoCheckpointError as e:  # INITIAL_CHECKPOINT_PATH without a checkpoint
    line = str(e).split("\n  In call to configurable")[0]  # gin's suffix, not the story
    logging.error("%s", line)
    print(f"flip_t5x.train: {line}", file=sys.stderr)
    sys.exit(2)
  except trainer_lib.NonFiniteLossError as e:
    print(f"flip_t5x.train: {e}", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
  define_flags()
  gin_utils.run(_main_reporting_errors)
