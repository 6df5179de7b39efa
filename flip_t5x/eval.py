r"""Evaluates a FLIP checkpoint: zero-shot classification or image<->text retrieval.

Same command line as `t5x.eval`:

  python -m flip_t5x.eval \
    --gin_file=gin_configs/eval_zeroshot_imagenet.gin \
    --gin.CHECKPOINT_PATH=\"/models/flip_l16/checkpoint_100000\" \
    --gin.EVAL_OUTPUT_DIR=\"/tmp/eval\"

Zero-shot (`flip_eval.eval_options.mode = 'zeroshot'`, the default; gin files
`from flip_t5x import eval as flip_eval`): the class prompts (classes x templates) are embedded
once with the text tower, then images batch by batch with the unmasked image tower; top-1/top-5
go to `EVAL_OUTPUT_DIR/zeroshot_metrics.json`. Retrieval (`eval_options.mode = 'retrieval'`, see `gin_configs/runs/eval_retrieval.gin`) embeds an image-text split and writes
image->text / text->image recall@1/5/10 to `EVAL_OUTPUT_DIR/retrieval_metrics.json`. Either way
the same JSON is the last line printed.

`zeroshot_evaluate` and `retrieval_evaluate` are gin-free and run in-process (the trainer's
periodic zero-shot eval calls the former). Batches are sharded over the mesh's data axis when a
mesh is given; on one device they run as they are. Single-process only (one host).
"""
from __future__ import annotations

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

import difflib
import functools
import json
import os
import sys
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

from absl import flags
from absl import logging
import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from flip_t5x import evaluation
from flip_t5x import checkpoints
from flip_t5x import models
from flip_t5x.data import zeroshot as zeroshot_lib
from flip_t5x.runtime import gin_utils
from flip_t5x.runtime import xla_options
# Registers the zero-shot tasks and their gin configurables at import, before gin is locked.
from tasks import zeroshot_seqio

PyTree = Any
MODES = ("zeroshot", "retrieval")
METRICS_FILES = {"zeroshot": "zeroshot_metrics.json", "retrieval": "retrieval_metrics.json"}


class EvalError(ValueError):
  """A configuration or input problem, reported without a traceback by the binary."""


# ------------------------------------------------------------------------------------ helpers
def get_task(name: str) -> Union[seqio.Task, seqio.Mixture]:
  """The registered task or mixture `name`, or an error naming close matches."""
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    known = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean one of {close}?" if close else ""
    raise EvalError(
        f"No seqio task or mixture named {name!r} is registered.{hint} Import the module that "
        "registers it (gin: `import tasks` or DatasetConfig.module).") from None


def task_class_names(task_name: str) -> list:
  """Label-ordered class names of a zero-shot task (its source's, or `tasks`' lookup)."""
  try:
    return zeroshot_seqio.class_names(task_name)
  except ValueError as e:
    raise EvalError(f"Cannot tell the class names of task {task_name!r} ({e}); pass them with "
                    "`flip_eval.eval_options.class_names` (a list, or a file with one name per line).") from e


def _read_class_names(class_names: Union[str, Sequence[str]]) -> list:
  if isinstance(class_names, str):
    if not tf.io.gfile.exists(class_names):
      raise EvalError(f"class-names file {class_names!r} does not exist")
    return zeroshot_lib.read_lines(class_names)
  return list(class_names)


def _data_sharding(mesh: Optional[jax.sharding.Mesh], data_axis: Any,
                   batch_size: int) -> Optional[jax.sharding.Sharding]:
  """Shards the batch dimension over `data_axis` of `mesh` (None: leave placement to jit)."""
  if mesh is None:
    return None
  axes = data_axis if isinstance(data_axis, (tuple, list)) else (data_axis,)
  n = int(np.prod([mesh.shape[a] for a in axes]))
  if batch_size % n:
    raise EvalError(f"eval batch size {batch_size} is not divisible by the {n} shards of mesh "
                    f"axis {data_axis!r}")
  spec = jax.sharding.PartitionSpec(tuple(axes) if len(axes) > 1 else axes[0])
  return jax.sharding.NamedSharding(mesh, spec)


@functools.lru_cache(maxsize=8)
def _encoders(model: models.FlipModel) -> Tuple[Callable, Callable]:
  """Jitted, unmasked image and text towers (cached, so periodic evals compile once)."""
  options = xla_options.compiler_options()
  encode_images = jax.jit(lambda params, images: model.encode_images(params, images),
                          compiler_options=options)
  encode_texts = jax.jit(lambda params, texts: model.encode_texts(params, texts),
                         compiler_options=options)
  return encode_images, encode_texts


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  if x.shape[0] == rows:
    return x
  pad = np.zeros((rows - x.shape[0],) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad])


def _run_batched(fn: Callable, params: PyTree, x: np.ndarray, batch_size: int,
                 sharding: Optional[jax.sharding.Sharding]) -> np.ndarray:
  """fn(params, x) over fixed-size batches (the last one zero-padded, so one compilation)."""
  out = []
  for start in range(0, x.shape[0], batch_size):
    chunk = x[start:start + batch_size]
    batch = _pad_rows(chunk, batch_size)
    if sharding is not None:
      batch = jax.device_put(batch, sharding)
    out.append(np.asarray(fn(params, batch))[:chunk.shape[0]])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _pad_text(ids: tf.Tensor, length: int) -> tf.Tensor:
  """Truncates or 0-pads token ids to exactly `length`, as the feature converter does."""
  ids = tf.cast(ids[:length], tf.int32)
  return tf.ensure_shape(tf.pad(ids, [[0, length - tf.shape(ids)[0]]]), [length])


def _numpy_batches(ds: tf.data.Dataset, keys: Sequence[str], batch_size: int,
                   max_examples: Optional[int]) -> Iterator[Tuple[Dict[str, np.ndarray], int]]:
  """(batch zero-padded to batch_size, number of real rows), in dataset order."""
  ds = ds.map(lambda ex: {k: ex[k] for k in keys}, num_parallel_calls=tf.data.AUTOTUNE)
  if max_examples is not None:
    ds = ds.take(int(max_examples))
  ds = ds.batch(batch_size).prefetch(2)
  for batch in ds.as_numpy_iterator():
    n = next(iter(batch.values())).shape[0]
    yield {k: _pad_rows(v, batch_size) for k, v in batch.items()}, n


def _task_dataset(task_name: str, split: str, feature_lengths: Mapping[str, int],
                  required: Sequence[str]) -> tf.data.Dataset:
  task = get_task(task_name)
  if split not in task.splits:
    raise EvalError(f"Task {task_name!r} has no split {split!r} (it has {list(task.splits)})")
  if jax.process_count() > 1:
    raise EvalError("flip_t5x.eval runs on one process; multi-host eval is not supported")
  ds = task.get_dataset(sequence_length=dict(feature_lengths), split=split, shuffle=False,
                        num_epochs=1, use_cached=False)
  missing = [k for k in required if k not in ds.element_spec]
  if missing:
    raise EvalError(f"Task {task_name!r} examples lack {missing} (they have "
                    f"{sorted(ds.element_spec)})")
  return ds


class _Progress:
  """Logs images/s every `every_s` seconds."""

  def __init__(self, what: str, every_s: float):
    self.what, self.every_s = what, every_s
    self.start = self.last = time.time()
    self.count = 0

  def update(self, n: int) -> None:
    self.count += n
    now = time.time()
    if now - self.last >= self.every_s:
      self.last = now
      logging.info("%s: %d images, %.1f images/s", self.what, self.count, self.rate)

  @property
  def seconds(self) -> float:
    return time.time() - self.start

  @property
  def rate(self) -> float:
    return self.count / max(self.seconds, 1e-9)


def eval_options(mode: str = "zeroshot", max_examples: Optional[int] = None,
                 class_names: Union[None, str, Sequence[str]] = None,
                 template_set: Optional[str] = None,
                 text_batch_size: Optional[int] = None) -> Dict[str, Any]:
  """FLIP-only options of `evaluate`, kept off it so upstream t5x.eval's `evaluate` (which has
  none of them) parses the same gin files. gin: `from flip_t5x import eval as flip_eval` then
  `flip_eval.eval_options.mode = 'retrieval'` (runs/eval.gin binds EVAL_MODE /
  EVAL_MAX_EXAMPLES here). Arguments given to `evaluate` directly take precedence.
  """
  return dict(mode=mode, max_examples=max_examples, class_names=class_names,
              template_set=template_set, text_batch_size=text_batch_size)


def _gin_eval_options() -> Dict[str, Any]:
  """`eval_options()` as gin configured it (defaults when no gin file mentions it).

  Looked up in the importable module, not `__main__`: gin files bind
  `flip_t5x.eval.eval_options` (dynamic registration), also when this file runs as
  `python -m flip_t5x.eval`.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  fn = importlib.import_module("flip_t5x.eval").eval_options
  try:
    configured = gin.get_configurable(fn)
  except (ValueError, KeyError):
    configured = fn
  return configured()


# --------------------------------------------------------------------------- in-process evals
def class_embeddings(model: models.FlipModel, params: PyTree, class_names: Sequence[str],
                     templates: Sequence[str], vocabulary: seqio.Vocabulary, text_length: int,
                     batch_size: int = 256, mesh: Optional[jax.sharding.Mesh] = None,
                     data_axis: Any = "data") -> np.ndarray:
  """[num_classes, embed_dim] zero-shot classifier: every prompt embedded once, in batches."""
  if not class_names:
    raise EvalError("zero-shot eval needs at least one class name")
  if not templates:
    raise EvalError("zero-shot eval needs at least one prompt template")
  ids = zeroshot_lib.prompt_token_ids(class_names, templates, vocabulary, text_length)
  ids = ids.reshape(-1, text_length)
  _, encode_texts = _encoders(model)
  sharding = _data_sharding(mesh, data_axis, batch_size)
  prompt_emb = _run_batched(encode_texts, params, ids, batch_size, sharding)
  return evaluation.class_embeddings_from_prompts(prompt_emb, len(class_names))


def zeroshot_evaluate(model: models.FlipModel, params: PyTree, *, task_name: str, split: str,
                      feature_lengths: Mapping[str, int], batch_size: int,
                      class_names: Optional[Sequence[str]] = None,
                      templates: Optional[Sequence[str]] = None,
                      vocabulary: Optional[seqio.Vocabulary] = None,
                      max_examples: Optional[int] = None,
                      mesh: Optional[jax.sharding.Mesh] = None, data_axis: Any = "data",
                      text_batch_size: Optional[int] = None,
                      log_every_s: float = 30.0) -> Dict[str, Any]:
  """Zero-shot top-1/top-5 (%) of `params` on a labelled seqio task; no gin involved.

  Args:
    model: the FlipModel (its towers are jitted once per model and reused across calls).
    params: model parameters (host arrays or already placed on `mesh`).
    task_name: seqio task/mixture whose examples have `image` and `label`.
    split: e.g. "validation".
    feature_lengths: task feature lengths, {"image": S, "targets": L}; L is the prompt length.
    batch_size: images per step (a multiple of the data-axis size when `mesh` is given).
    class_names: label-ordered names; default: the task source's `class_names()`.
    templates: prompt templates ('{}' = class name); default: the gin-selected set
      (`flip_t5x.data.zeroshot.templates()`, FLIP's 7 unless configured).
    vocabulary: tokenizer of the prompts; default: the task's `targets` vocabulary.
    max_examples: evaluate only the first N images (periodic evals during training).
    mesh, data_axis: shard every batch over this mesh axis (None: one device / jit's choice).
    text_batch_size: prompts per text-tower step (default `batch_size`).
    log_every_s: seconds between progress lines.

  Returns:
    {"task", "split", "top1", "top5", "num_examples", "num_classes", "num_templates",
     "images_per_second", "seconds", "worst_classes"}; `worst_classes` lists the five classes
    of lowest top-1 as {"class", "top1", "num_examples"}, lowest first.
  """
  t0 = time.time()
  task = get_task(task_name)
  class_names = task_class_names(task_name) if class_names is None else list(class_names)
  templates = zeroshot_lib.templates() if templates is None else list(templates)
  if vocabulary is None:
    if "targets" not in task.output_features:
      raise EvalError(f"Task {task_name!r} has no `targets` feature to take the vocabulary "
                      "from; pass `vocabulary`")
    vocabulary = task.output_features["targets"].vocabulary
  ds = _task_dataset(task_name, split, feature_lengths, ("image", "label"))
  class_emb = class_embeddings(model, params, class_names, templates, vocabulary,
                               int(feature_lengths["targets"]), text_batch_size or batch_size,
                               mesh, data_axis)
  logging.info("Embedded %d prompts (%d classes x %d templates) in %.1fs",
               len(class_names) * len(templates), len(class_names), len(templates),
               time.time() - t0)
  encode_images, _ = _encoders(model)
  sharding = _data_sharding(mesh, data_axis, batch_size)
  acc = evaluation.ZeroShotAccumulator(class_emb, ks=(1, 5))
  progress = _Progress(f"zero-shot {task_name}", log_every_s)
  for batch, n in _numpy_batches(ds, ("image", "label"), batch_size, max_examples):
    images = batch["image"]
    if sharding is not None:
      images = jax.device_put(images, sharding)
    emb = np.asarray(encode_images(params, images))[:n]
    labels = batch["label"][:n]
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
      raise EvalError(f"label {int(labels.max())} outside the {len(class_names)} class names")
    acc.update(emb, labels)
    progress.update(n)
  if not acc.num_examples:
    raise EvalError(f"Task {task_name!r} split {split!r} yielded no examples")
  result = {"task": task_name, "split": split}
  result.update(acc.result())
  result.update(num_templates=len(templates), images_per_second=progress.rate,
                seconds=time.time() - t0)
  result["worst_classes"] = [{"class": class_names[i], "top1": top1, "num_examples": n}
                             for i, top1, n in acc.worst_classes(5)]
  logging.info("zero-shot %s: top1 %.2f top5 %.2f over %d images (%.1f images/s)", task_name,
               result["top1"], result.get("top5", float("nan")), result["num_examples"],
               progress.rate)
  return result


def retrieval_evaluate(model: models.FlipModel, params: PyTree, *, task_name: str, split: str,
                       feature_lengths: Mapping[str, int], batch_size: int,
                       max_examples: Optional[int] = None,
                       mesh: Optional[jax.sharding.Mesh] = None, data_axis: Any = "data",
                       ks: Sequence[int] = (1, 5, 10), log_every_s: float = 30.0
                       ) -> Dict[str, Any]:
  """Image->text and text->image recall@k (%) on an image-text split (`image` + `targets`).

  Each example's caption is its image's only match (img2dataset shards: one caption per image).
  All embeddings are kept on the host: meant for eval splits of up to tens of thousands of pairs.
  """
  t0 = time.time()
  ds = _task_dataset(task_name, split, feature_lengths, ("image", "targets"))
  length = int(feature_lengths["targets"])
  ds = ds.map(lambda ex: dict(ex, targets=_pad_text(ex["targets"], length)))
  encode_images, encode_texts = _encoders(model)
  sharding = _data_sharding(mesh, data_axis, batch_size)
  image_emb, text_emb = [], []
  progress = _Progress(f"retrieval {task_name}", log_every_s)
  for batch, n in _numpy_batches(ds, ("image", "targets"), batch_size, max_examples):
    images, texts = batch["image"], batch["targets"].astype(np.int32)
    if sharding is not None:
      images, texts = jax.device_put(images, sharding), jax.device_put(texts, sharding)
    image_emb.append(np.asarray(encode_images(params, images))[:n])
    text_emb.append(np.asarray(encode_texts(params, texts))[:n])
    progress.update(n)
  if not image_emb:
    raise EvalError(f"Task {task_name!r} split {split!r} yielded no examples")
  result = {"task": task_name, "split": split}
  result.update(evaluation.retrieval_recall(np.concatenate(image_emb), np.concatenate(text_emb),
                                            ks))
  result.update(num_examples=progress.count, images_per_second=progress.rate,
                seconds=time.time() - t0)
  logging.info("retrieval %s: %s", task_name, result)
  return result


# ------------------------------------------------------------------------------ the binary
def resolve_checkpoint(restore_checkpoint_cfg: Any = None,
                       checkpoint_path: Optional[str] = None) -> str:
  """The checkpoint directory to load: `checkpoint_path`, else the restore config's path.

  A model directory (t5x's mode 'latest') resolves to its newest complete checkpoint; any format
  `checkpoints.locate` reads (t5x orbax, t5x msgpack, earlier flip_t5x).
  """
  if checkpoint_path is None and restore_checkpoint_cfg is not None:
    checkpoint_path = restore_checkpoint_cfg.path
    mode = getattr(restore_checkpoint_cfg, "mode", "specific")
    if mode not in ("specific", "latest"):
      raise EvalError(f"RestoreCheckpointConfig.mode must be 'specific' or 'latest' for "
                      f"flip_t5x.eval, got {mode!r}")
  if isinstance(checkpoint_path, (list, tuple)):
    if len(checkpoint_path) != 1:
      raise EvalError(f"evaluate takes one checkpoint path, got {list(checkpoint_path)}")
    checkpoint_path = checkpoint_path[0]
  if not checkpoint_path:
    raise EvalError('No checkpoint given: set CHECKPOINT_PATH (--gin.CHECKPOINT_PATH=\\"/path\\")')
  try:
    return os.fspath(checkpoints.locate(checkpoint_path).path)
  except checkpoints.NoCheckpointError as e:
    raise EvalError(f"Checkpoint not found: {e}") from None


def write_metrics(output_dir: str, name: str, metrics: Mapping[str, Any]) -> str:
  tf.io.gfile.makedirs(output_dir)
  path = os.path.join(output_dir, name)
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
  return path


def evaluate(*, model: models.FlipModel, dataset_cfg: Any, output_dir: str,
             restore_checkpoint_cfg: Any = None, checkpoint_path: Optional[str] = None,
             partitioner: Any = None, mode: Optional[str] = None,
             class_names: Union[None, str, Sequence[str]] = None,
             template_set: Optional[str] = None, max_examples: Optional[int] = None,
             text_batch_size: Optional[int] = None, **unused_t5x_kwargs: Any
             ) -> Dict[str, Any]:
  """Loads one checkpoint, evaluates it on `dataset_cfg`'s task and writes the metrics JSON.

  Args:
    model: FlipModel (gin: %MODEL).
    dataset_cfg: a t5x-style DatasetConfig (mixture_or_task_name, task_feature_lengths, split,
      batch_size, module).
    output_dir: where `zeroshot_metrics.json` / `retrieval_metrics.json` go.
    restore_checkpoint_cfg: t5x-style RestoreCheckpointConfig (path; mode 'specific'/'latest').
    checkpoint_path: alternative to `restore_checkpoint_cfg`: a checkpoint directory.
    partitioner: optional; its mesh shards the eval batches over the data axis.
    The next five default to `eval_options()` (gin: `flip_eval.eval_options.*`):
    mode: 'zeroshot' or 'retrieval'.
    class_names: zero-shot class names (list or file); default: the task source's.
    template_set: zero-shot template set ("7", "80", a file); default: the gin-selected one.
    max_examples: evaluate only the first N examples.
    text_batch_size: prompts per text-tower step (default: dataset_cfg.batch_size).
    **unused_t5x_kwargs: t5x.eval's other arguments (`inference_evaluator_cls`, ...), ignored, so
      gin files written for t5x.eval bind cleanly.

  Returns:
    the metrics written.
  """
  del unused_t5x_kwargs
  options = _gin_eval_options()
  mode = options["mode"] if mode is None else mode
  class_names = options["class_names"] if class_names is None else class_names
  template_set = options["template_set"] if template_set is None else template_set
  max_examples = options["max_examples"] if max_examples is None else max_examples
  text_batch_size = options["text_batch_size"] if text_batch_size is None else text_batch_size
  if mode not in MODES:
    raise EvalError(f"eval mode (EVAL_MODE, flip_eval.eval_options.mode) must be one of {MODES}, "
                    f"got {mode!r}")
  if getattr(dataset_cfg, "module", None):
    __import__(dataset_cfg.module)
  task_name = dataset_cfg.mixture_or_task_name
  get_task(task_name)  # fail on an unknown task before loading a large checkpoint
  path = resolve_checkpoint(restore_checkpoint_cfg, checkpoint_path)
  lengths = dict(dataset_cfg.task_feature_lengths or {})
  module = model.module
  lengths.setdefault("image", module.image.image_size)
  lengths.setdefault("targets", module.text.max_length)
  logging.info("Loading %s", path)
  try:
    params = checkpoints.load_params(path, model, partitioner=partitioner)
  except (checkpoints.CheckpointShapeError, checkpoints.NoCheckpointError) as e:
    raise EvalError(str(e)) from None
  step = checkpoints.checkpoint_step(path)
  mesh = getattr(partitioner, "mesh", None)
  data_axis = getattr(partitioner, "data_axis", "data")
  common = dict(task_name=task_name, split=dataset_cfg.split, feature_lengths=lengths,
                batch_size=int(dataset_cfg.batch_size), max_examples=max_examples, mesh=mesh,
                data_axis=data_axis)
  if mode == "zeroshot":
    name = zeroshot_lib.template_set() if template_set is None else str(template_set)
    templates = zeroshot_lib.templates(name)
    metrics = zeroshot_evaluate(
        model, params, class_names=None if class_names is None else _read_class_names(
            class_names), templates=templates, text_batch_size=text_batch_size, **common)
    metrics["templates"] = name
  else:
    metrics = retrieval_evaluate(model, params, **common)
  metrics.update(checkpoint_step=step, checkpoint_path=path, mode=mode)
  out = write_metrics(output_dir, METRICS_FILES[mode], metrics)
  logging.info("Wrote %s", out)
  return metrics


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise EvalError(f"unexpected command-line arguments: {argv[1:]}")
  # Like t5x.eval: the gin-configurable `evaluate` is registered under this module's name
  # (`__main__.evaluate` when run as a binary; gin files `import __main__ as eval_script`).
  evaluate_using_gin = gin.configurable(evaluate)
  try:
    gin_utils.parse_gin_flags(flags.FLAGS.gin_search_paths, flags.FLAGS.gin_file,
                              flags.FLAGS.gin_bindings)
  except gin_utils.GinConfigError:
    raise
  except ValueError as e:  # gin.finalize(): e.g. a %gin.REQUIRED macro left unset
    raise gin_utils.GinConfigError(str(e)) from None
  metrics = gin_utils.call_configured(evaluate, evaluate_using_gin)  # MASK_RATIO=1.5: exit 2
  print(summary_table(metrics), file=sys.stderr, flush=True)
  print(json.dumps(metrics, sort_keys=True), flush=True)


def summary_table(metrics: Mapping[str, Any]) -> str:
  """What a person reads at the end of an eval (stderr); the JSON line stays for scripts."""
  lines = [f"{metrics.get('mode', 'zeroshot')} {metrics.get('task')} ({metrics.get('split')}), "
           f"checkpoint step {metrics.get('checkpoint_step')}, "
           f"{metrics.get('num_examples')} images"]
  if metrics.get("mode") == "retrieval":
    for direction in ("image_to_text", "text_to_image"):
      recalls = "  ".join(f"R@{k} {metrics[f'{direction}/recall@{k}']:6.2f}"
                          for k in (1, 5, 10) if f"{direction}/recall@{k}" in metrics)
      lines.append(f"  {direction:<14} {recalls}")
    return "\n".join(lines)
  top5 = metrics.get("top5", float("nan"))
  lines.append(f"  top-1 {metrics['top1']:6.2f} %   top-5 {top5:6.2f} %   "
               f"classes {metrics.get('num_classes')}")
  worst = metrics.get("worst_classes") or []
  if worst:
    width = max(len(str(w["class"])) for w in worst)
    lines.append("  worst classes (top-1 %, images):")
    lines += [f"    {str(w['class']):<{width}}  {w['top1']:6.2f}  ({w['num_examples']})"
              for w in worst]
  return "\n".join(lines)


def _main_reporting_errors(argv: Sequence[str]) -> None:
  """Configuration and input errors end the binary with one clear line, not a traceback."""
  try:
    main(argv)
  except (EvalError, gin_utils.GinConfigError) as e:
    message = str(e).split("\n  In call to configurable")[0]  # gin's suffix, not the story
    print(f"flip_t5x.eval: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  gin_utils.define_gin_flags()
  gin_utils.run(_main_reporting_errors)
