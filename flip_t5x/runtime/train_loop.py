"""The training loop of `flip_t5x.train`, with t5x.train's `train(...)` signature and gin names.

The gin files say `import __main__ as train_script` and bind `train_script.train.*`:
`register_train_for_gin` makes this `train` that name, so the same files drive upstream
`t5x.train` (whose `__main__.train` is t5x's). A rerun with the same MODEL_DIR resumes from the
latest checkpoint, data position included; INITIAL_CHECKPOINT_PATH (unmasked tuning) restores
parameters only, with a fresh optimizer.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Optional, Tuple

from absl import logging
from clu import periodic_actions
import gin
import jax
from jax.experimental import multihost_utils
import numpy as np

from flip_t5x import checkpoints
from flip_t5x import train_state as train_state_lib
from flip_t5x.data import preprocessors
from flip_t5x.evaluation import zeroshot
from flip_t5x.runtime import gin_utils
from flip_t5x.runtime import monitoring
from flip_t5x.runtime import train_checks
from flip_t5x.runtime import trainer as trainer_lib
from flip_t5x.runtime import utils

PyTree = Any


def _draw_seed() -> int:
  """A fresh seed agreed by every process (process 0's draw)."""
  seed = np.int32(np.random.SeedSequence().entropy % (2**31 - 1))
  if jax.process_count() > 1:
    seed = multihost_utils.broadcast_one_to_all(seed)
  return int(seed)


def _rngs(seed: int) -> Tuple[jax.Array, jax.Array]:
  """(init rng, step rng) of a run: t5x.train's split, so one RANDOM_SEED gives both runtimes the
  same initial parameters and masks."""
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_rng, step_rng


def _initial_checkpoint_path(restore_cfg: Any) -> Optional[str]:
  if restore_cfg is None or not restore_cfg.path:
    return None
  paths = [restore_cfg.path] if isinstance(restore_cfg.path, str) else list(restore_cfg.path)
  if len(paths) != 1:
    raise train_checks.TrainConfigError(
        f"utils.RestoreCheckpointConfig.path: one checkpoint expected, got {paths}")
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


def _restore_or_start(ckpt: checkpoints.TrainCheckpointer, layout: train_state_lib.StateLayout,
                      model: Any, model_dir: str, restore_cfg: Any, random_seed: Optional[int]
                      ) -> Tuple[Optional[int], train_state_lib.TrainState, Mapping[str, Any], int]:
  """(latest step, state, its metadata, seed): MODEL_DIR's latest checkpoint if there is one,
  else parameters from INITIAL_CHECKPOINT_PATH (fresh optimizer, step 0) or a fresh init."""
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
    init_rng, _ = _rngs(seed)
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
  return latest, state, meta, seed


def train(*, model: Any, train_dataset_cfg: Any, train_eval_dataset_cfg: Any = None,
          infer_eval_dataset_cfg: Any = None, checkpoint_cfg: Any, partitioner: Any,
          trainer_cls: Callable[..., Any] = trainer_lib.FlipTrainer, model_dir: str,
          total_steps: int, eval_steps: int = 20, eval_period: int = 1000,
          relative_steps: Optional[int] = None, stats_period: Optional[int] = None,
          random_seed: Optional[int] = None, use_hardware_rng: bool = False,
          summarize_config_fn: Callable[..., None] = gin_utils.summarize_gin_config,
          inference_evaluator_cls: Any = None,
          get_dataset_fn: Callable[..., Any] = utils.get_flip_dataset,
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
    raise train_checks.TrainConfigError(
        "train.actions: t5x trainer actions are not supported by flip_t5x")
  if use_hardware_rng:
    logging.info("use_hardware_rng ignored: FLIP's masks come from threefry (mesh-invariant)")
  train_checks.validate(model, train_dataset_cfg, checkpoint_cfg, partitioner, model_dir,
                        total_steps, eval_period, eval_steps, stats_period, random_seed,
                        infer_eval_dataset_cfg)
  logging.info("configuration checked; setting up the model and its train state")
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
  latest, state, meta, seed = _restore_or_start(ckpt, layout, model, model_dir, restore_cfg,
                                                  random_seed)
  if relative_steps:
    total_steps = int(state.step) + int(relative_steps)
  start_step = int(state.step)
  data_seed = train_dataset_cfg.seed if train_dataset_cfg.seed is not None else seed
  if "data_seed" in meta:
    data_seed = int(meta["data_seed"])
  trainer = trainer_cls(model=model, partitioner=partitioner, layout=layout,
                        rng=_rngs(seed)[1])
  # After the trainer, as t5x.train does: operative_config.gin lists its bindings too.
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
      res = zeroshot.zeroshot_evaluate(
          model, params, task_name=cfg.mixture_or_task_name, split=cfg.split,
          feature_lengths=lengths, batch_size=cfg.batch_size,
          max_examples=(eval_steps * cfg.batch_size) if eval_steps else None,
          mesh=partitioner.mesh, xla_options=partitioner.xla_options)
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

  `flip_t5x.train` (and `model_info`) call it before parsing gin files; a test or notebook gets
  `train` attached to its `__main__` module, exactly what t5x's binary exposes.
  Returns the gin-configured `train` (call it after parsing the gin files).
  """
  main_module = sys.modules["__main__"]
  if getattr(main_module, "train", None) is not train:
    main_module.train = train
  return lambda: gin.get_configurable(train)()
