"""Eval splits of seqio tasks, read in order, one pass, as numpy batches."""
from __future__ import annotations

import difflib
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Union

import jax
import numpy as np
import seqio
import tensorflow as tf

from flip_t5x.data import preprocessors
from flip_t5x.data import prompts
from flip_t5x.evaluation import EvalError


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


def task_class_names(task_name: str) -> List[str]:
  """Label-ordered class names of a zero-shot task, as its data source tells them."""
  source = getattr(get_task(task_name), "source", None)
  class_names = getattr(source, "class_names", None)
  if not callable(class_names):
    raise EvalError(f"Cannot tell the class names of task {task_name!r} (its source has no "
                    "class_names()); pass them with `flip_eval.eval_options.class_names` (a list, "
                    "or a file with one name per line).")
  try:
    return list(class_names())
  except ValueError as e:
    raise EvalError(f"Cannot tell the class names of task {task_name!r} ({e})") from e


def task_templates(task_name: str) -> List[str]:
  """The zero-shot prompt templates a task's source names (`templates()`), else FLIP's set."""
  templates = getattr(getattr(get_task(task_name), "source", None), "templates", None)
  return list(templates()) if callable(templates) else prompts.templates()


def task_dataset(task_name: str, split: str, feature_lengths: Mapping[str, int],
                 required: Sequence[str]) -> tf.data.Dataset:
  """One unshuffled pass over `split`, checked to have the `required` features."""
  task = get_task(task_name)
  if split not in task.splits:
    raise EvalError(f"Task {task_name!r} has no split {split!r} (it has {list(task.splits)})")
  if jax.process_count() > 1:
    raise EvalError("evaluation runs on one process; multi-host eval is not supported")
  ds = task.get_dataset(sequence_length=dict(feature_lengths), split=split, shuffle=False,
                        num_epochs=1, use_cached=False)
  missing = [k for k in required if k not in ds.element_spec]
  if missing:
    raise EvalError(f"Task {task_name!r} examples lack {missing} (they have "
                    f"{sorted(ds.element_spec)})")
  return ds


def pad_text(ids: tf.Tensor, length: int) -> tf.Tensor:
  """Truncates or 0-pads token ids to exactly `length`, as the feature converter does."""
  ids = tf.cast(ids[:length], tf.int32)
  return tf.ensure_shape(tf.pad(ids, [[0, length - tf.shape(ids)[0]]]), [length])


def numpy_batches(ds: tf.data.Dataset, keys: Sequence[str], batch_size: int,
                  max_examples: Optional[int]) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of `keys` in dataset order (the last one may be short), the first `max_examples`."""
  ds = ds.map(lambda ex: {k: ex[k] for k in keys}, num_parallel_calls=tf.data.AUTOTUNE)
  if max_examples is not None:
    ds = ds.take(int(max_examples))
  return ds.batch(batch_size).prefetch(2).as_numpy_iterator()


def skipped_counts() -> Dict[str, int]:
  """Records the eval preprocessor has skipped so far in this process, by reason (cumulative)."""
  return preprocessors.skipped_counts("eval")


def skipped_since(before: Mapping[str, int]) -> Dict[str, int]:
  """{reason: records skipped} since `before` (a `skipped_counts()`), reasons with none left out.

  Unreadable, empty or undecodable images are left out of the scores, not fatal: the report says
  how many, so a score over fewer images than the split holds is never silent.
  """
  now = skipped_counts()
  return {reason: n - before.get(reason, 0) for reason, n in now.items()
          if n - before.get(reason, 0) > 0}
