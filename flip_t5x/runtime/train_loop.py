"""The training loop of `flip_t5x.train`, with t5x.train's `train(...)` signature and gin names.

The gin files say `import __main__ as train_script` and bind `train_script.train.*`:
`register_train_for_gin` makes this `train` that name, so the same files drive upstream
`t5x.train` (whose `__main__.train` is t5x's). A rerun with the same MODEL_DIR resumes from the
latest checkpoint, data position included; INITIAL_CHECKPOINT_PATH (unmasked tuning) restores
parameters only, with a fresh optimizer.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Optional, Tuple

from absl import logging
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


# ------------------------------------------------------------------------------------ set-up
def _open_model_dir(model_dir: str) -> Any:
  """MODEL_DIR, made by process 0 before any process writes into it, and its metric writer."""
  if jax.process_index() == 0:
    os.makedirs(model_dir, exist_ok=True)
  multihost_utils.sync_global_devices("flip_t5x.train: model_dir")
  return monitoring.create_writer(model_dir)


@dataclasses.dataclass(frozen=True)
class _Start:
  """Where a run starts: its state and seeds, and the MODEL_DIR checkpoint it resumes (or None)."""

  state: train_state_lib.TrainState
  step: int
  latest: Optional[int]
  seed: int
  data_seed: int


def _restore_or_start(ckpt: checkpoints.TrainCheckpointer, layout: train_state_lib.StateLayout,
                      model: Any, model_dir: str, restore_cfg: Any, random_seed: Optional[int],
                      dataset_seed: Optional[int]) -> _Start:
  """MODEL_DIR's latest checkpoint if there is one, else parameters from INITIAL_CHECKPOINT_PATH
  (fresh optimizer, step 0) or a fresh init."""
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
  data_seed = dataset_seed if dataset_seed is not None else seed
  if "data_seed" in meta:
    data_seed = int(meta["data_seed"])
  return _Start(state, int(state.step), latest, seed, data_seed)


def _device_batches(skip: int, *, get_dataset_fn: Callable[..., Any], cfg: Any, model: Any,
                    partitioner: Any, data_seed: int, prefetch: int,
                    hold_at: Optional[Callable[[int], bool]], start_step: int
                    ) -> utils.DeviceIterator:
  """The training batches on device from step `start_step` on, `skip` batches into the stream."""
  batch_size = int(cfg.batch_size)
  layout = partitioner.get_data_layout(batch_size)
  # Per-process rows: batch / shards (t5x's DataLayout.batch_size is the global batch).
  ds = get_dataset_fn(cfg, layout.shard_id, layout.num_shards, model.FEATURE_CONVERTER_CLS,
                      batch_size // layout.num_shards, skip_batches=skip, seed=data_seed)
  return utils.DeviceIterator(ds, partitioner.data_sharding, batch_size, prefetch=prefetch,
                              hold_at=hold_at, start_step=start_step)


def _input_stream(ckpt: checkpoints.TrainCheckpointer, start: _Start,
                  batches_from: Callable[[int], utils.DeviceIterator]) -> utils.DeviceIterator:
  """The data position: the checkpoint's tf.data iterator state when it has one (save_dataset)
  and it fits this pipeline; otherwise skip `step` batches of the seeded stream (exact for a
  flip_t5x run, but re-reads the consumed data)."""
  latest = start.latest
  if latest is not None and ckpt.has_input_position(latest):
    batches = batches_from(0)
    try:
      ckpt.restore_input_position(latest, batches.synced_iterator())
      logging.info("input stream repositioned from checkpoint_%d", latest)
      return batches
    except checkpoints.InputPositionError as e:
      logging.warning("%s; skipping %d batches to resume the data stream instead", e, start.step)
  elif latest is not None:
    logging.warning("checkpoint_%d has no input position: skipping %d batches to resume the "
                    "data stream (set SaveCheckpointConfig.save_dataset = True to avoid this)",
                    latest, start.step)
  return batches_from(start.step)


# ------------------------------------------------------------------------ during the steps
class _Saves:
  """Checkpoints at SaveCheckpointConfig's steps (every `period`, `checkpoint_steps`, the last),
  with the run's seeds and, with `save_dataset`, the input position."""

  def __init__(self, ckpt: checkpoints.TrainCheckpointer, save_cfg: Any, total_steps: int,
               start: _Start, batch_size: int):
    self.ckpt = ckpt
    self.period = save_cfg.period if save_cfg is not None and save_cfg.period else None
    self.steps = set(getattr(save_cfg, "checkpoint_steps", None) or ())
    self.total_steps = total_steps
    self.with_input = bool(getattr(save_cfg, "save_dataset", False))
    self.meta = {"seed": start.seed, "data_seed": int(start.data_seed), "batch_size": batch_size,
                 "data_position": ("dataset item" if self.with_input
                                   else "batches consumed = step")}
    self.last = start.latest  # the newest checkpoint in MODEL_DIR

  def due(self, step: int) -> bool:
    return bool((self.period and step % self.period == 0) or step in self.steps
                or step == self.total_steps)

  def save(self, step: int, state: train_state_lib.TrainState,
           batches: utils.DeviceIterator) -> None:
    self.ckpt.save(state, dict(self.meta, step=step),
                   input_iterator=batches.synced_iterator() if self.with_input else None)
    self.last = step


class _LossCheck:
  """Stops the run on a non-finite loss before anything of that step is saved or reported.

  A step's loss is read (a device sync) once the next step is dispatched, or when its step
  reports or saves: the host never waits on the step it has just launched.
  """

  def __init__(self, saves: _Saves):
    self.saves = saves
    self.pending = None  # (step, scalars) whose loss has not been checked yet

  def step_done(self, step: int, scalars: Mapping[str, jax.Array]) -> None:
    if self.pending is not None:
      self.check()
    self.pending = (step, scalars)

  def check(self) -> None:
    step, scalars = self.pending
    loss = float(jax.device_get(scalars["loss"]))
    if not math.isfinite(loss):
      self.saves.ckpt.close()  # finish any earlier (good) save; nothing of this step is written
      last = self.saves.last
      raise trainer_lib.NonFiniteLossError(
          f"loss is {loss} at step {step}: training stopped; the latest checkpoint "
          f"({'checkpoint_%d' % last if last is not None else 'none'}) is untouched. "
          "Lower the learning rate or set optimizers.adamw.grad_clip_norm.")


class _Evals:
  """Evaluation of the current parameters, written at the step: the unmasked loss on `eval_steps`
  batches of train_eval_dataset_cfg, zero-shot accuracy on infer_eval_dataset_cfg."""

  def __init__(self, trainer: Any, model: Any, partitioner: Any,
               get_dataset_fn: Callable[..., Any], writer: Any, train_eval_cfg: Any,
               infer_eval_cfg: Any, train_lengths: Mapping[str, int], eval_steps: int):
    self.trainer, self.model, self.partitioner = trainer, model, partitioner
    self.get_dataset_fn, self.writer = get_dataset_fn, writer
    self.train_eval_cfg, self.infer_eval_cfg = train_eval_cfg, infer_eval_cfg
    self.train_lengths, self.eval_steps = train_lengths, eval_steps

  def __call__(self, step: int, params: PyTree) -> None:
    if self.train_eval_cfg is not None and self.eval_steps:
      self._train_eval(step, params)
    if self.infer_eval_cfg is not None:
      self._zeroshot(step, params)

  def _train_eval(self, step: int, params: PyTree) -> None:
    cfg = self.train_eval_cfg
    layout = self.partitioner.get_data_layout(cfg.batch_size)
    ds = self.get_dataset_fn(cfg, layout.shard_id, layout.num_shards,
                             self.model.FEATURE_CONVERTER_CLS, cfg.batch_size // layout.num_shards)
    acc = monitoring.MetricsAccumulator()
    for batch in utils.DeviceIterator(ds.take(self.eval_steps), self.partitioner.data_sharding,
                                      cfg.batch_size):
      acc.add(self.trainer.eval_step(params, batch))
    name = cfg.mixture_or_task_name if isinstance(cfg.mixture_or_task_name, str) else "eval"
    self.writer.write_scalars(step, {f"train_eval/{name}/{k}": v
                                     for k, v in acc.result().items()})

  def _zeroshot(self, step: int, params: PyTree) -> None:
    cfg = self.infer_eval_cfg
    res = zeroshot.zeroshot_evaluate(
        self.model, params, task_name=cfg.mixture_or_task_name, split=cfg.split,
        feature_lengths=cfg.task_feature_lengths or self.train_lengths,
        batch_size=cfg.batch_size,
        max_examples=(self.eval_steps * cfg.batch_size) if self.eval_steps else None,
        mesh=self.partitioner.mesh, xla_options=self.partitioner.xla_options)
    name = cfg.mixture_or_task_name
    self.writer.write_scalars(step, {f"zeroshot/{name}/top1": res["top1"],
                                     f"zeroshot/{name}/top5": res.get("top5", float("nan"))})


def _run_steps(start: _Start, total_steps: int, trainer: Any, batches: utils.DeviceIterator,
               loss_check: _LossCheck, reports: monitoring.Reports, saves: _Saves, evals: _Evals,
               eval_period: int) -> Tuple[int, train_state_lib.TrainState]:
  """The steps from `start` to `total_steps`, each followed by its report, checkpoint and eval
  when due, then the final eval; the writer is flushed and the last save waited for also when a
  step fails."""
  step, state = start.step, start.state
  t_start = time.time()
  try:
    for step in range(start.step, total_steps):
      batch = next(batches)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, scalars = trainer.train_step(state, batch)
      done = step + 1
      if step == start.step:
        jax.block_until_ready(scalars)  # keep compilation out of the throughput figures
        reports.start(done)
      loss_check.step_done(done, scalars)
      reports.step_done(done, scalars)
      if saves.due(done):
        loss_check.check()
        saves.save(done, state, batches)
      if eval_period and done % eval_period == 0 and done != total_steps:
        evals(done, state.params)
    step = total_steps
    if eval_period:
      evals(step, state.params)
  finally:
    reports.close()
    reports.writer.flush()
    saves.ckpt.close()  # waits for the last asynchronous save
  reports.writer.close()
  logging.info("finished at step %d in %.1fs", step, time.time() - t_start)
  return step, state


# ------------------------------------------------------------------------------------- train
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
          verify_matching_vocabs_fn: Any = None, gc_period: int = 0,
          monitoring_cfg: Optional[monitoring.MonitoringConfig] = None
          ) -> Tuple[int, train_state_lib.TrainState]:
  """Trains `model` to `total_steps`, resuming from MODEL_DIR's latest checkpoint.

  Parameter names are t5x.train's; those about t5x machinery FLIP does not use
  (`inference_evaluator_cls`, `train_state_initializer_cls`, `actions`, `use_orbax`, ...) are
  accepted so t5x gin files bind cleanly. `monitoring_cfg` is FLIP's own (profiling, peak FLOPs,
  prefetch; default `MonitoringConfig()`): flip_t5x.train binds it (`FLIP_ONLY_BINDINGS`).
  Returns (final step, final train state).
  """
  del inference_evaluator_cls, concurrent_metrics, train_eval_get_dataset_fn
  del train_state_initializer_cls, use_orbax, verify_matching_vocabs_fn, gc_period
  train_checks.refuse_t5x_only(actions, use_hardware_rng)
  train_checks.validate(model, train_dataset_cfg, checkpoint_cfg, partitioner, model_dir,
                        total_steps, eval_period, eval_steps, stats_period, random_seed,
                        infer_eval_dataset_cfg)
  logging.info("configuration checked; setting up the model and its train state")
  model_dir = os.fspath(model_dir)
  save_cfg = checkpoint_cfg.save if checkpoint_cfg is not None else None
  restore_cfg = checkpoint_cfg.restore if checkpoint_cfg is not None else None
  monitor = monitoring_cfg or monitoring.MonitoringConfig()
  batch_size = int(train_dataset_cfg.batch_size)
  writer = _open_model_dir(model_dir)

  # The train state: restored, imported or initialised, and its trainer.
  layout = train_state_lib.StateLayout(model, trainer_lib.unwrap_optimizer(model), partitioner,
                                       model.input_shapes(batch_size))
  data_layout = partitioner.get_data_layout(batch_size)
  ckpt = checkpoints.TrainCheckpointer(
      model_dir, layout, keep=save_cfg.keep if save_cfg is not None else None,
      enable_async=getattr(save_cfg, "use_async", True), shard_id=data_layout.shard_id,
      num_shards=data_layout.num_shards)
  start = _restore_or_start(ckpt, layout, model, model_dir, restore_cfg, random_seed,
                            train_dataset_cfg.seed)
  if relative_steps:
    total_steps = start.step + int(relative_steps)
  trainer = trainer_cls(model=model, partitioner=partitioner, layout=layout,
                        rng=_rngs(start.seed)[1])
  # After the trainer, as t5x.train does: operative_config.gin lists its bindings too.
  summarize_config_fn(model_dir, writer, start.step)
  if start.step >= total_steps:
    logging.info("already at step %d >= TRAIN_STEPS=%d: nothing to do", start.step, total_steps)
    ckpt.close()
    writer.close()
    return start.step, start.state

  # The input stream, and what happens between the steps.
  saves = _Saves(ckpt, save_cfg, total_steps, start, batch_size)
  batches = _input_stream(ckpt, start, functools.partial(
      _device_batches, get_dataset_fn=get_dataset_fn, cfg=train_dataset_cfg, model=model,
      partitioner=partitioner, data_seed=start.data_seed, prefetch=monitor.prefetch_batches,
      hold_at=saves.due if saves.with_input else None, start_step=start.step))
  stats_period = stats_period or eval_period or 100
  loss_check = _LossCheck(saves)
  reports = monitoring.Reports(
      writer, monitoring.device_throughput(model, monitor, batch_size, total_steps,
                                         partitioner.xla_options),
      monitoring.clu_hooks(writer, monitor, model_dir, start.step, total_steps, stats_period),
      stats_period, start.step, total_steps, check_loss=loss_check.check,
      input_counts=_skipped_counts)
  evals = _Evals(trainer, model, partitioner, get_dataset_fn, writer, train_eval_dataset_cfg,
                 infer_eval_dataset_cfg, train_dataset_cfg.task_feature_lengths, eval_steps)
  if run_eval_before_training:
    evals(start.step, start.state.params)

  reports.start(start.step)
  logging.info("training steps %d..%d, global batch %d, %d device(s) as %s", start.step,
               total_steps, batch_size, jax.device_count(), dict(partitioner.mesh.shape))
  return _run_steps(start, total_steps, trainer, batches, loss_check, reports, saves, evals,
                    eval_period)


# `train`'s FLIP-only parameters, bound by flip_t5x.train after the gin files: under upstream
# t5x.train, `train_script.train` is t5x's `train`, which has none of them, so the run files cannot.
FLIP_ONLY_BINDINGS = """
from __gin__ import dynamic_registration
import __main__ as train_script
from flip_t5x.runtime import monitoring
train_script.train.monitoring_cfg = @monitoring.MonitoringConfig()
"""


def register_train_for_gin() -> Callable[..., Any]:
  """Makes `train` reachable as `__main__.train`, what gin files call `train_script.train`.

  `flip_t5x.train` (and `model_info`) call it before parsing gin files; a test or notebook gets
  `train` attached to its `__main__` module, exactly what t5x's binary exposes.
  Returns the gin-configured `train` (call it after parsing the gin files, then
  `FLIP_ONLY_BINDINGS`, as flip_t5x.train does).
  """
  main_module = sys.modules["__main__"]
  if getattr(main_module, "train", None) is not train:
    main_module.train = train
  return lambda: gin.get_configurable(train)()
