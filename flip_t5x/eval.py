r"""Evaluates a FLIP checkpoint: zero-shot classification or image<->text retrieval.

Same command line as `t5x.eval`:

  python -m flip_t5x.eval --gin_file=gin_configs/models/flip_vit_l16.gin \
    --gin_file=gin_configs/runs/eval_zeroshot_imagenet.gin \
    --gin.CHECKPOINT_PATH=\"/models/flip_l16/checkpoint_100000\" \
    --gin.EVAL_OUTPUT_DIR=\"/tmp/eval\"
  python -m flip_t5x.eval --pretrained=flip_vit_l16_laion2b \
    --gin_file=gin_configs/runs/eval_zeroshot_imagenet.gin --gin.EVAL_OUTPUT_DIR=\"/tmp/eval\"

Zero-shot (`flip_eval.eval_options.mode = 'zeroshot'`, the default; gin files
`from flip_t5x import eval as flip_eval`): `flip_t5x.evaluation.zeroshot`, top-1/top-5 to
`EVAL_OUTPUT_DIR/zeroshot_metrics.json`. Retrieval (`eval_options.mode = 'retrieval'`, see
`gin_configs/runs/eval_retrieval.gin`): `flip_t5x.evaluation.retrieval`, image->text /
text->image recall@1/5/10 to `EVAL_OUTPUT_DIR/retrieval_metrics.json`. Either way a table ends
stderr and the same JSON is the last line printed. Single-process only (one host).
"""
from __future__ import annotations

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

import functools
import importlib
import json
import os
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from absl import flags
from absl import logging
import gin
import tensorflow as tf

from flip_t5x import checkpoints
from flip_t5x import models
from flip_t5x import pretrained
from flip_t5x.data import prompts
from flip_t5x.evaluation import EvalError
from flip_t5x.evaluation import datasets
from flip_t5x.evaluation import retrieval
from flip_t5x.evaluation import zeroshot
from flip_t5x.pretrained import cli as pretrained_cli
from flip_t5x.runtime import gin_utils
# Registers the zero-shot tasks and their gin configurable at import, before gin is locked.
import tasks
from tasks import zeroshot_seqio  # pylint: disable=unused-import

MODES = ("zeroshot", "retrieval")
METRICS_FILES = {"zeroshot": "zeroshot_metrics.json", "retrieval": "retrieval_metrics.json"}


def _read_class_names(class_names: Union[str, Sequence[str]]) -> list:
  if isinstance(class_names, str):
    if not tf.io.gfile.exists(class_names):
      raise EvalError(f"class-names file {class_names!r} does not exist")
    return prompts.read_lines(class_names)
  return list(class_names)


def eval_options(mode: str = "zeroshot", max_examples: Optional[int] = None,
                 class_names: Union[None, str, Sequence[str]] = None,
                 template_set: Optional[str] = None,
                 text_batch_size: Optional[int] = None) -> Dict[str, Any]:
  """FLIP-only options of `evaluate`, kept off it so upstream t5x.eval's `evaluate` (which has
  none of them) parses the same gin files. gin: `from flip_t5x import eval as flip_eval` then
  `flip_eval.eval_options.mode = 'retrieval'` (runs/eval.gin binds EVAL_MODE /
  EVAL_MAX_EXAMPLES here); the binary calls it as configured and passes the result to
  `evaluate(options=...)`.
  """
  return dict(mode=mode, max_examples=max_examples, class_names=class_names,
              template_set=template_set, text_batch_size=text_batch_size)


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
             text_batch_size: Optional[int] = None, options: Optional[Mapping[str, Any]] = None,
             inference_evaluator_cls: Any = None, training_evaluator_cls: Any = None,
             summarize_config_fn: Any = None, train_state_initializer_cls: Any = None,
             train_eval_get_dataset_fn: Any = None, fallback_init_rng: Optional[int] = None,
             use_orbax: bool = True) -> Dict[str, Any]:
  """Loads one checkpoint, evaluates it on `dataset_cfg`'s task and writes the metrics JSON.

  Args:
    model: FlipModel (gin: %MODEL).
    dataset_cfg: a t5x-style DatasetConfig (mixture_or_task_name, task_feature_lengths, split,
      batch_size, module).
    output_dir: where `zeroshot_metrics.json` / `retrieval_metrics.json` go.
    restore_checkpoint_cfg: t5x-style RestoreCheckpointConfig (path; mode 'specific'/'latest').
    checkpoint_path: alternative to `restore_checkpoint_cfg`: a checkpoint directory.
    partitioner: optional; its mesh shards the eval batches over the data axis.
    The next five, where None, come from `options`, else `eval_options`' defaults:
    mode: 'zeroshot' or 'retrieval'.
    class_names: zero-shot class names (list or file); default: the task source's.
    template_set: zero-shot template set ("7", "80", a file); default: the gin-selected one.
    max_examples: evaluate only the first N examples.
    text_batch_size: prompts per text-tower step (default: dataset_cfg.batch_size).
    options: `eval_options()`'s result (the binary's: as gin configured it).
    inference_evaluator_cls, training_evaluator_cls, summarize_config_fn,
    train_state_initializer_cls, train_eval_get_dataset_fn, fallback_init_rng, use_orbax:
      t5x.eval's other parameters (t5x/eval.py `evaluate`), accepted so that gin files written
      for t5x.eval bind cleanly, and not used: the metrics come from flip_t5x.evaluation, the
      parameters from `checkpoints.load_params`. Any other name (a misspelt
      `evaluate.chekpoint_path`) is a gin error at parse time: the binary exits 2 naming it.

  Returns:
    the metrics written.
  """
  del inference_evaluator_cls, training_evaluator_cls, summarize_config_fn  # t5x.eval's only
  del train_state_initializer_cls, train_eval_get_dataset_fn, fallback_init_rng, use_orbax
  options = eval_options(**(options or {}))
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
  datasets.get_task(task_name)  # fail on an unknown task before loading a large checkpoint
  lengths = dict(dataset_cfg.task_feature_lengths or {})
  shapes = model.input_shapes()
  lengths.setdefault("image", shapes["images"][1])
  lengths.setdefault("targets", shapes["texts"][1])
  try:
    model.check_feature_lengths(lengths)
  except ValueError as e:
    raise EvalError(str(e)) from None
  path = resolve_checkpoint(restore_checkpoint_cfg, checkpoint_path)
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
                data_axis=data_axis, xla_options=getattr(partitioner, "xla_options", None))
  if mode == "zeroshot":
    name = tasks.config().zeroshot_templates if template_set is None else str(template_set)
    templates = prompts.templates(name)
    metrics = zeroshot.zeroshot_evaluate(
        model, params, class_names=None if class_names is None else _read_class_names(
            class_names), templates=templates, text_batch_size=text_batch_size, **common)
    metrics["templates"] = name
  else:
    metrics = retrieval.retrieval_evaluate(model, params, **common)
  metrics.update(checkpoint_step=step, checkpoint_path=path, mode=mode)
  out = write_metrics(output_dir, METRICS_FILES[mode], metrics)
  logging.info("Wrote %s", out)
  return metrics


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise EvalError(f"unexpected command-line arguments: {argv[1:]}")
  # Like t5x.eval: the gin-configurable `evaluate` is registered under this module's name
  # (`__main__.evaluate` when run as a binary; gin files `import __main__ as eval_script`).
  # `eval_options` under the importable module's (gin files `from flip_t5x import eval as
  # flip_eval`), also when this file runs as `python -m flip_t5x.eval`.
  evaluate_using_gin = gin.configurable(evaluate)
  options_fn = importlib.import_module("flip_t5x.eval").eval_options
  options_using_gin = gin.configurable(options_fn)
  gin_files, gin_bindings = list(flags.FLAGS.gin_file or []), list(flags.FLAGS.gin_bindings)
  found = pretrained_cli.resolve_from_flags()
  if found:  # its model file after the eval files (the sizes it sets win), and its checkpoint
    gin_files.append(found.gin_file)
    gin_bindings.insert(0, f"CHECKPOINT_PATH = {found.checkpoint!r}")
  gin_utils.parse_gin_flags(flags.FLAGS.gin_search_paths, gin_files, gin_bindings)
  options = gin_utils.call_configured(options_fn, options_using_gin)
  metrics = gin_utils.call_configured(  # MASK_RATIO=1.5: a configuration error, exit 2
      evaluate, functools.partial(evaluate_using_gin, options=options))
  print(summary_table(metrics), file=sys.stderr, flush=True)
  print(json.dumps(metrics, sort_keys=True), flush=True)


def summary_table(metrics: Mapping[str, Any]) -> str:
  """What a person reads at the end of an eval (stderr); the JSON line stays for scripts."""
  lines = [f"{metrics.get('mode', 'zeroshot')} {metrics.get('task')} ({metrics.get('split')}), "
           f"checkpoint step {metrics.get('checkpoint_step')}, "
           f"{metrics.get('num_examples')} images"]
  skipped = metrics.get("skipped") or {}
  if skipped:
    lines.append(f"  skipped {sum(skipped.values())} unreadable images (not scored): "
                 + ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items())))
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


if __name__ == "__main__":
  gin_utils.define_gin_flags()
  pretrained_cli.define_flags()  # --pretrained=NAME sets CHECKPOINT_PATH and the model gin file
  gin_utils.run(main, bad_input=(EvalError, *pretrained.RESOLVE_ERRORS))
